//! [`Origin`]: a destination for egress tests and benchmarks, an HTTP
//! server on loopback that the daemon's `[egress] resolve` table publishes
//! under test names (nothing leaves the machine).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The bytes `GET /big` answers.
pub const BIG: usize = 10_000_000;
/// The pace of `GET /big-paced`, in bytes per second: a 1 Gbit/s link.
pub const PACED_RATE: u64 = 125_000_000;

/// A loopback HTTP/1.1 server: `GET /big` answers [`BIG`] bytes as fast as
/// loopback goes, `GET /big-paced` the same bytes at [`PACED_RATE`] (as a
/// download over a real link would come), any other request `hello
/// <path>`; one request per connection. It counts the
/// requests it answered and the connections that opened with a TLS
/// handshake (which it closes).
pub struct Origin {
    /// Its port on 127.0.0.1.
    pub port: u16,
    tls_seen: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Origin {
    /// Starts it on the current runtime.
    pub async fn start() -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the origin server");
        let port = listener.local_addr().expect("its address").port();
        let tls_seen = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (tls, req) = (tls_seen.clone(), requests.clone());
        tokio::spawn(async move {
            let big: Arc<[u8]> = vec![b'x'; BIG].into();
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(answer(conn, tls.clone(), req.clone(), big.clone()));
            }
        });
        Origin {
            port,
            tls_seen,
            requests,
        }
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Connections that opened with a TLS handshake record.
    pub fn tls_seen(&self) -> usize {
        self.tls_seen.load(Ordering::SeqCst)
    }
}

async fn answer(
    mut conn: tokio::net::TcpStream,
    tls: Arc<AtomicUsize>,
    req: Arc<AtomicUsize>,
    big: Arc<[u8]>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf[0] == 22 {
            tls.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > 64 << 10 {
            return;
        }
    }
    req.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buf).into_owned();
    let path = head.split(' ').nth(1).unwrap_or("?").to_owned();
    let hello;
    let paced = path == "/big-paced";
    let body: &[u8] = if path == "/big" || paced {
        &big
    } else {
        hello = format!("hello {path}");
        hello.as_bytes()
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes()).await;
    if paced {
        let start = tokio::time::Instant::now();
        let mut sent = 0u64;
        for chunk in body.chunks(128 << 10) {
            if conn.write_all(chunk).await.is_err() {
                return;
            }
            sent += chunk.len() as u64;
            let due = std::time::Duration::from_secs_f64(sent as f64 / PACED_RATE as f64);
            tokio::time::sleep_until(start + due).await;
        }
    } else {
        let _ = conn.write_all(body).await;
    }
    let _ = conn.shutdown().await;
}
