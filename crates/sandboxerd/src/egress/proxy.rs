//! One sandbox's proxy: reads each connection's request head, decides,
//! connects and relays. Everything a sandbox sends here is hostile: the
//! head is bounded in size and time, the connections in number, and no
//! byte reaches a destination before it is decided.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sandboxer_api::{normalize_name, NetworkDecision, NetworkVerdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use super::policy::NameVerdict;
use super::tls::{self, Hello};
use super::{Egress, Served};
use sandboxer_agent::splice;

/// The largest request head read (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// How long resolving a name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the rest of a TLS ClientHello may take once it started.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a tunnel's client may stay silent before its first byte.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest host and reason kept in a log entry.
const MAX_LOGGED: usize = 300;

pub(super) async fn accept_loop(hub: Arc<Egress>, served: Arc<Served>, listener: UnixListener) {
    loop {
        let conn = tokio::select! {
            _ = served.stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match conn {
            Ok((conn, _)) => {
                let hub = hub.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    let stop = served.stop.clone();
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = handle(&hub, &served, conn) => {}
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(sandbox_id = %served.sandbox_id, error = %e, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What the client asked for.
#[derive(Debug)]
struct Ask {
    method: String,
    host: String,
    port: u16,
    /// For a plain HTTP request: the head to send on, in origin form.
    forward: Option<Vec<u8>>,
}

async fn handle(hub: &Egress, served: &Served, mut client: UnixStream) {
    let Ok(_all) = hub.connections.clone().try_acquire_owned() else {
        let reason = format!(
            "the proxy holds its most connections over every sandbox ({}, `[egress] max_connections_total`)",
            hub.settings.max_connections_total
        );
        return busy(hub, served, client, &reason).await;
    };
    let Ok(_slot) = served.slots.clone().try_acquire_owned() else {
        let reason = format!(
            "more than {} connections open at once (`[egress] max_connections`)",
            hub.settings.max_connections
        );
        return busy(hub, served, client, &reason).await;
    };
    hub.totals.open.fetch_add(1, Ordering::Relaxed);
    let _open = OpenGuard(hub);
    let (head, rest) =
        match tokio::time::timeout(hub.settings.head_timeout, read_head(&mut client)).await {
            Ok(Ok(Some(h))) => h,
            Ok(Ok(None)) => {
                let _ = respond(
                    &mut client,
                    431,
                    "Request Header Fields Too Large",
                    "the request head is over 16 KiB",
                )
                .await;
                return;
            }
            // Closed, broken or too slow: nothing was asked.
            Ok(Err(_)) | Err(_) => return,
        };
    let ask = match parse(&head) {
        Ok(a) => a,
        Err(why) => {
            let _ = respond(&mut client, 400, "Bad Request", &why).await;
            return;
        }
    };
    let upstream = match connect(hub, served, &ask).await {
        Ok(u) => u,
        Err((status, text, why)) => {
            let _ = respond(&mut client, status, text, &why).await;
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    match ask.forward {
        None => {
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            tunnel(hub, served, &ask, client, upstream, rest).await;
        }
        Some(head) => {
            let mut first = head;
            first.extend_from_slice(&rest);
            relay(hub, client, upstream, first).await;
        }
    }
}

/// Refuses a connection over a cap: logged, answered 503.
async fn busy(hub: &Egress, served: &Served, mut client: UnixStream, reason: &str) {
    hub.record(
        served,
        decision(NetworkVerdict::Denied, "-", "-", 0, None, reason),
    );
    let _ = respond(&mut client, 503, "Service Unavailable", reason).await;
}

struct OpenGuard<'a>(&'a Egress);

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.totals.open.fetch_sub(1, Ordering::Relaxed);
    }
}

fn decision(
    verdict: NetworkVerdict,
    method: &str,
    host: &str,
    port: u16,
    address: Option<SocketAddr>,
    reason: &str,
) -> NetworkDecision {
    NetworkDecision {
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        decision: verdict,
        method: method.to_owned(),
        host: truncated(host),
        port,
        address: address.map(|a| a.to_string()),
        reason: truncated(reason),
    }
}

/// `s`, cut to [`MAX_LOGGED`] bytes (at a character boundary).
fn truncated(s: &str) -> String {
    if s.len() <= MAX_LOGGED {
        return s.to_owned();
    }
    let mut end = MAX_LOGGED;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads up to the end of the request head: `(head, bytes after it)`;
/// `None` when it is over [`MAX_HEAD`].
async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i + 4;
            if end > MAX_HEAD {
                return Ok(None);
            }
            let rest = buf.split_off(end);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// The request of `head`: a `CONNECT host:port`, or a request for an
/// absolute `http://` URL (re-written in origin form to send on).
fn parse(head: &[u8]) -> Result<Ask, String> {
    let mut headers = [httparse::EMPTY_HEADER; 96];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".into()),
        Err(e) => return Err(format!("malformed request head: {e}")),
    }
    let method = req.method.unwrap_or_default().to_owned();
    let target = req.path.unwrap_or_default();
    if method == "CONNECT" {
        let (host, port) = split_host_port(target, None)
            .ok_or_else(|| format!("CONNECT needs `host:port`, not `{target}`"))?;
        return Ok(Ask {
            method,
            host,
            port,
            forward: None,
        });
    }
    let Some(rest) = strip_prefix_ci(target, "http://") else {
        return Err(if strip_prefix_ci(target, "https://").is_some() {
            "HTTPS goes through the proxy with CONNECT (set HTTPS_PROXY)".into()
        } else {
            format!("`{target}` is not an absolute http:// URL: only those and CONNECT go through the proxy")
        });
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not passed on".into());
    }
    let (host, port) = split_host_port(authority, Some(80))
        .ok_or_else(|| format!("`{authority}` is not a host with an optional port"))?;
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    let mut out = Vec::with_capacity(head.len());
    out.extend_from_slice(
        format!("{method} {path} HTTP/1.{}\r\n", req.version.unwrap_or(1)).as_bytes(),
    );
    // The server sees the host that was decided on (never another `Host`,
    // which would reach another site behind the same address), and one
    // request only: with `Connection: close` it ends the connection after
    // its answer, so a client never sends a request for another host down
    // a connection decided for this one.
    out.extend_from_slice(format!("Host: {authority}\r\n").as_bytes());
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if name.starts_with("proxy-")
            || matches!(name.as_str(), "host" | "connection" | "keep-alive")
        {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    Ok(Ask {
        method,
        host,
        port,
        forward: Some(out),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .and_then(|_| s.get(prefix.len()..))
}

/// `host:port`, `[v6]:port` (or without the port when `default` is given).
fn split_host_port(s: &str, default: Option<u16>) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            Some(_) => return None,
            None => (s, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
        None => default?,
    };
    if host.is_empty() {
        return None;
    }
    Some((host.to_owned(), port))
}

type Refused = (u16, &'static str, String);

/// Decides `ask` and connects: the decision is recorded either way.
async fn connect(hub: &Egress, served: &Served, ask: &Ask) -> Result<TcpStream, Refused> {
    let note = |verdict, host: &str, address: Option<SocketAddr>, why: &str| {
        hub.record(
            served,
            decision(verdict, &ask.method, host, ask.port, address, why),
        );
    };
    let deny = |host: &str, address: Option<SocketAddr>, why: String| {
        note(NetworkVerdict::Denied, host, address, &why);
        (403, "Forbidden", why)
    };
    let protected = hub.protected();
    let policy = &served.policy;
    // The addresses to try, each with why it is allowed.
    let mut candidates: Vec<(IpAddr, String)> = Vec::new();
    let host = if let Ok(ip) = ask.host.parse::<IpAddr>() {
        let why = policy
            .check_address(ip, ask.port, false, false, &protected)
            .map_err(|why| deny(&ask.host, Some(SocketAddr::new(ip, ask.port)), why))?;
        candidates.push((ip, why));
        ask.host.clone()
    } else {
        let Some(name) = normalize_name(&ask.host) else {
            return Err(deny(
                &ask.host,
                None,
                format!("`{}` is not a host name", ask.host),
            ));
        };
        let verdict = policy
            .check_name(&name, ask.port)
            .map_err(|why| deny(&name, None, why))?;
        let (addrs, trusted) = match hub.settings.resolve.get(&name) {
            Some(a) => (a.clone(), true),
            // Only a name a name rule allows is looked up: any other lookup
            // would carry data out through DNS.
            None if verdict == NameVerdict::IfAddressesAllowed => {
                return Err(deny(
                    &name,
                    None,
                    format!(
                        "`{name}` is not in the allow list (a range admits addresses, and names the operator's `[egress] resolve` table maps into it)"
                    ),
                ));
            }
            None => match resolve(hub, &name, ask.port).await {
                Ok(a) => (a, false),
                Err(e) => {
                    let why = format!("resolving `{name}` failed: {e}");
                    note(NetworkVerdict::Denied, &name, None, &why);
                    return Err((502, "Bad Gateway", why));
                }
            },
        };
        let by_name = matches!(verdict, NameVerdict::ByName(_));
        let mut first_refusal = None;
        for ip in addrs {
            match policy.check_address(ip, ask.port, by_name, trusted, &protected) {
                Ok(why) => candidates.push((
                    ip,
                    match &verdict {
                        NameVerdict::ByName(rule) => format!("allowed by `{rule}`; {why}"),
                        NameVerdict::IfAddressesAllowed => why,
                    },
                )),
                Err(why) => {
                    first_refusal.get_or_insert((ip, why));
                }
            }
        }
        if candidates.is_empty() {
            let (ip, why) = first_refusal.unwrap_or((
                IpAddr::from([0, 0, 0, 0]),
                format!("`{name}` resolved to no address"),
            ));
            return Err(deny(&name, Some(SocketAddr::new(ip, ask.port)), why));
        }
        name
    };
    let mut last_err = String::new();
    for (ip, why) in &candidates {
        let addr = SocketAddr::new(*ip, ask.port);
        match tokio::time::timeout(hub.settings.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) if lands_on_own_port(&s, &protected) => {
                drop(s);
                return Err(deny(
                    &host,
                    Some(addr),
                    format!("{addr} is this host, at one of sand-boxer's own ports"),
                ));
            }
            Ok(Ok(s)) => {
                note(NetworkVerdict::Allowed, &host, Some(addr), why);
                return Ok(s);
            }
            Ok(Err(e)) => last_err = format!("connecting to {addr}: {e}"),
            Err(_) => {
                last_err = format!(
                    "connecting to {addr}: no answer within {:?}",
                    hub.settings.connect_timeout
                )
            }
        }
    }
    let (ip, why) = &candidates[0];
    let addr = SocketAddr::new(*ip, ask.port);
    let why = format!("{why}; but {last_err}");
    note(NetworkVerdict::Allowed, &host, Some(addr), &why);
    Err((502, "Bad Gateway", last_err))
}

/// Whether `s` reached this very host (its two ends share an address, or
/// it is loopback) at a port one of the daemon's listeners uses: what an
/// address the host gained after start would otherwise let through.
fn lands_on_own_port(s: &TcpStream, protected: &super::Protected) -> bool {
    let (Ok(local), Ok(peer)) = (s.local_addr(), s.peer_addr()) else {
        return true;
    };
    (peer.ip() == local.ip() || peer.ip().is_loopback())
        && protected.listen.iter().any(|l| l.port() == peer.port())
}

async fn resolve(hub: &Egress, name: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
    // Each lookup holds a blocking thread until the system resolver gives
    // up, whatever our timeout: a bounded number at once.
    let Ok(_turn) = hub.lookups.try_acquire() else {
        return Err(std::io::Error::other(
            "too many name lookups in flight; try again",
        ));
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| std::io::Error::other(format!("no answer within {RESOLVE_TIMEOUT:?}")))??;
    let mut ips: Vec<IpAddr> = found.map(|a| a.ip()).collect();
    ips.dedup();
    Ok(ips)
}

/// Answers `status` with `why` as the body, and closes.
async fn respond(
    client: &mut UnixStream,
    status: u16,
    text: &str,
    why: &str,
) -> std::io::Result<()> {
    let body = format!("sand-boxer egress proxy: {why}\n");
    let msg = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\nX-Sandboxer-Egress: {}\r\n\r\n{body}",
        body.len(),
        if status == 403 { "denied" } else { "error" },
    );
    client.write_all(msg.as_bytes()).await?;
    client.shutdown().await
}

/// A CONNECT tunnel: bytes from the destination flow at once (for
/// protocols where the server speaks first); the client's first bytes are
/// read before any is sent on, and when they are a TLS ClientHello naming
/// a server other than the one CONNECT asked for, that name must be
/// allowed too, else the tunnel is closed. Then both ways are spliced.
async fn tunnel(
    hub: &Egress,
    served: &Served,
    ask: &Ask,
    client: UnixStream,
    upstream: TcpStream,
    mut first: Vec<u8>,
) {
    let down = splice::copy(&upstream, &client);
    let up = async {
        let mut chunk = vec![0u8; 4096];
        let mut deadline = None;
        loop {
            let need = match tls::client_hello(&first) {
                Hello::Incomplete(n) if first.len() < tls::MAX_RECORD => n,
                Hello::Malformed => {
                    let why = "the tunnel opened with a TLS handshake that is not a well-formed ClientHello in one record".to_owned();
                    hub.record(
                        served,
                        decision(
                            NetworkVerdict::Denied,
                            "TLS",
                            &ask.host,
                            ask.port,
                            None,
                            &why,
                        ),
                    );
                    return Err(());
                }
                Hello::Sni(name) if Some(&name) != normalize_name(&ask.host).as_ref() => {
                    // Another name must be one a name rule allows.
                    let allowed = match served.policy.check_name(&name, ask.port) {
                        Ok(NameVerdict::ByName(_)) => Ok(()),
                        Ok(NameVerdict::IfAddressesAllowed) => {
                            Err(format!("`{name}` is not in the allow list"))
                        }
                        Err(why) => Err(why),
                    };
                    if let Err(why) = allowed {
                        let why = format!(
                            "the TLS server name `{name}` differs from the CONNECT host `{}`: {why}",
                            ask.host
                        );
                        hub.record(
                            served,
                            decision(NetworkVerdict::Denied, "TLS", &name, ask.port, None, &why),
                        );
                        return Err(());
                    }
                    break;
                }
                _ if first.is_empty() => 1,
                _ => break,
            };
            let read = splice::read(&client, &mut chunk[..need.clamp(1, 4096)]);
            // The client may first wait for the server to speak (SSH,
            // SMTP), but not for ever; a ClientHello, once begun, comes
            // whole within HELLO_TIMEOUT.
            let limit = if first.is_empty() {
                FIRST_BYTES_TIMEOUT
            } else {
                HELLO_TIMEOUT
            };
            let d = *deadline.get_or_insert(tokio::time::Instant::now() + limit);
            let n = match tokio::time::timeout_at(d, read).await {
                Ok(r) => r,
                Err(_) => return Err(()),
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => first.extend_from_slice(&chunk[..n]),
            }
        }
        if splice::write_all(&upstream, &first).await.is_err() {
            return Ok(0);
        }
        Ok(splice::copy(&client, &upstream).await + first.len() as u64)
    };
    tokio::pin!(up, down);
    let (out, inn) = tokio::select! {
        r = &mut up => match r {
            Ok(out) => (out, down.await),
            // Refused: everything is dropped, both ways.
            Err(()) => return,
        },
        inn = &mut down => match up.await {
            Ok(out) => (out, inn),
            Err(()) => (0, inn),
        },
    };
    hub.totals.bytes_out.fetch_add(out, Ordering::Relaxed);
    hub.totals.bytes_in.fetch_add(inn, Ordering::Relaxed);
}

/// A plain HTTP request: `first` (the re-written head and what followed
/// it) is sent, then both ways are spliced until both sides end.
async fn relay(hub: &Egress, client: UnixStream, upstream: TcpStream, first: Vec<u8>) {
    if splice::write_all(&upstream, &first).await.is_err() {
        return;
    }
    let (out, inn) = splice::both(&client, &upstream).await;
    hub.totals
        .bytes_out
        .fetch_add(out + first.len() as u64, Ordering::Relaxed);
    hub.totals.bytes_in.fetch_add(inn, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_targets() {
        let a = parse(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n").unwrap();
        assert_eq!(
            (a.method.as_str(), a.host.as_str(), a.port),
            ("CONNECT", "pypi.org", 443)
        );
        assert!(a.forward.is_none());
        let a = parse(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("2001:db8::1", 8443));
        for bad in [
            &b"CONNECT pypi.org HTTP/1.1\r\n\r\n"[..],
            b"CONNECT pypi.org:0 HTTP/1.1\r\n\r\n",
            b"CONNECT :443 HTTP/1.1\r\n\r\n",
            b"CONNECT 2001:db8::1:443 HTTP/1.1\r\n\r\n",
            b"CONNECT [nothost]:443 HTTP/1.1\r\n\r\n",
            b"GARBAGE\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn plain_requests_are_rewritten_to_origin_form() {
        let a = parse(
            b"GET http://Allowed.test:8080/a/b?c=d HTTP/1.1\r\nHost: allowed.test:8080\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\nAccept: */*\r\n\r\n",
        )
        .unwrap();
        assert_eq!((a.host.as_str(), a.port), ("Allowed.test", 8080));
        assert_eq!(
            String::from_utf8(a.forward.unwrap()).unwrap(),
            "GET /a/b?c=d HTTP/1.1\r\nHost: Allowed.test:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let a = parse(b"POST http://x.test?q HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(a.port, 80);
        assert_eq!(
            String::from_utf8(a.forward.unwrap()).unwrap(),
            "POST /?q HTTP/1.0\r\nHost: x.test\r\nConnection: close\r\n\r\n"
        );
        assert!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap_err()
            .contains("absolute"));
        assert!(parse(b"GET https://x.test/ HTTP/1.1\r\n\r\n")
            .unwrap_err()
            .contains("CONNECT"));
        // The decided host is the one the server sees, for one request.
        let a = parse(
            b"GET http://a.test/ HTTP/1.1\r\nHost: internal-vhost\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(a.forward.unwrap()).unwrap(),
            "GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        );
        // Non-ASCII bytes in the target are refused, never a panic.
        for bad in ["GET /aaaaa€ HTTP/1.1\r\n\r\n", "GET h€ HTTP/1.1\r\n\r\n"] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse(b"GET http://u:p@x.test/ HTTP/1.1\r\n\r\n")
            .unwrap_err()
            .contains("credentials"));
    }

    #[tokio::test]
    async fn heads_are_bounded() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let big = vec![b'a'; MAX_HEAD + 10];
        a.write_all(b"GET http://x.test/ HTTP/1.1\r\nX: ")
            .await
            .unwrap();
        a.write_all(&big).await.unwrap();
        assert!(read_head(&mut b).await.unwrap().is_none());
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"CONNECT x.test:1 HTTP/1.1\r\n\r\nEXTRA")
            .await
            .unwrap();
        let (head, rest) = read_head(&mut b).await.unwrap().unwrap();
        assert!(head.ends_with(b"\r\n\r\n"));
        assert_eq!(rest, b"EXTRA");
        drop(a);
        assert!(read_head(&mut b).await.is_err());
    }
}
