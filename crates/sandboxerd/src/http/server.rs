//! The accept loop: HTTP/1 connections served by hyper with a header-read
//! timeout, an idle timeout and a cap on connections per client address,
//! and graceful shutdown (stop accepting, let requests in flight finish).
//!
//! `axum::serve` has none of these limits: a client could hold any number of
//! idle or half-sent-header connections open for as long as it liked.
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpLimits;

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting,
/// ask every connection to close once its request in flight is answered, and
/// return when all have closed. `stopping` is sent `true` when shutdown starts.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stopping: watch::Sender<bool>,
) -> std::io::Result<()> {
    let conns = TaskTracker::new();
    let stop = CancellationToken::new();
    let per_client = PerClient::new(limits.max_connections_per_client);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // EMFILE and the like: wait for descriptors to free up
                    // rather than spin (what `axum::serve` does too).
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_client.admit(peer.ip()) else {
            conns.spawn(refuse(stream, peer, limits.max_connections_per_client));
            continue;
        };
        // Every connection shares the one router (an `Arc` clone). Cloning a
        // `Router` is cheap; `with_state` per connection (what serving a
        // plain `Router` through `axum::serve` did) deep-copied every route
        // and its layers, about 1 MiB per connection that glibc kept resident.
        let app = app.clone();
        let stop = stop.clone();
        let limits = limits.clone();
        conns.spawn(async move {
            serve_connection(stream, app, &limits, stop).await;
            drop(slot);
        });
    }
    let _ = stopping.send(true);
    drop(listener);
    stop.cancel();
    conns.close();
    conns.wait().await;
    Ok(())
}

/// One connection: served until the client closes it, the header-read or
/// idle timeout fires, or shutdown asks it to finish.
async fn serve_connection(
    stream: TcpStream,
    app: Router,
    limits: &HttpLimits,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // Requests of this connection in flight: from the moment hyper hands one
    // to the router until its response body has been sent (or dropped), so a
    // long-poll or a streamed answer is never taken for idleness.
    let (in_flight, watch_rx) = watch::channel(0usize);
    let in_flight = Arc::new(in_flight);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let guard = InFlight::start(in_flight.clone());
        let app = app.clone();
        async move {
            let resp = app.oneshot(req.map(axum::body::Body::new)).await?;
            Ok::<_, std::convert::Infallible>(resp.map(|body| {
                axum::body::Body::new(body.map_frame(move |frame| {
                    let _held_until_the_body_is_done = &guard;
                    frame
                }))
            }))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let idle = idle(watch_rx, limits.idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = &mut idle, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// Resolves once no request has been in flight for `timeout`.
async fn idle(mut in_flight: watch::Receiver<usize>, timeout: Duration) {
    loop {
        if in_flight.wait_for(|n| *n == 0).await.is_err() {
            return std::future::pending().await;
        }
        match tokio::time::timeout(timeout, in_flight.changed()).await {
            Err(_) => return,
            Ok(Err(_)) => return std::future::pending().await,
            Ok(Ok(())) => continue,
        }
    }
}

/// One request in flight; counted down when dropped.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn start(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Open connections per client address, under `max` (0: no cap).
#[derive(Clone)]
struct PerClient {
    max: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// A counted connection; frees its place when dropped.
struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerClient {
    fn new(max: u32) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if self.max > 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Answer a connection over its client's cap with 429 and close it, without
/// reading its request.
async fn refuse(mut stream: TcpStream, peer: SocketAddr, max: u32) {
    tracing::warn!(client = %peer.ip(), max, "connection refused: too many open connections from this client");
    let problem = sandboxer_api::Problem {
        kind: "https://sand-boxer.dev/problems/too-many-connections".into(),
        title: "Too Many Requests".into(),
        status: 429,
        detail: format!(
            "this client already has {max} open connections (limits.max_connections_per_client); close some and retry"
        ),
        code: "too_many_connections".into(),
        field: None,
    };
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let head = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/problem+json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// Errors of one connection that say nothing about the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}
