//! The sandbox's end of the egress proxy (`network: {mode: egress}`): a
//! TCP listener on `127.0.0.1:<port>` inside the sandbox's network
//! namespace, each connection relayed byte for byte to the daemon's proxy
//! socket bound into the sandbox. The agent decides nothing: the daemon
//! does, per connection, and a sandbox that talks to the socket directly
//! meets the same decisions.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;

/// Connections relayed at once; more wait in the listen backlog.
const MAX_RELAYS: usize = 512;
/// Relay buffer per direction.
const BUF: usize = 64 << 10;

/// The relay's listener on `127.0.0.1:port`.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await
}

/// Relays every connection of `listener` to the proxy at `socket`, until
/// the listener fails.
pub async fn serve(listener: TcpListener, socket: PathBuf) {
    let slots = Arc::new(Semaphore::new(MAX_RELAYS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((conn, _)) => {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    relay(conn, &socket).await;
                });
            }
            Err(e) if crate::is_transient(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(e) => {
                eprintln!("sandboxer-agent: egress relay: accept: {e}");
                return;
            }
        }
    }
}

async fn relay(conn: TcpStream, socket: &std::path::Path) {
    let _ = conn.set_nodelay(true);
    let proxy = match UnixStream::connect(socket).await {
        Ok(p) => p,
        Err(e) => {
            // The daemon is restarting (it serves the socket again when up).
            let mut conn = conn;
            let body = format!("sand-boxer egress proxy unreachable: {e}\n");
            let _ = conn
                .write_all(
                    format!(
                        "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .await;
            return;
        }
    };
    let (mut cr, mut cw) = conn.into_split();
    let (mut pr, mut pw) = proxy.into_split();
    let up = async {
        copy(&mut cr, &mut pw).await;
        let _ = pw.shutdown().await;
    };
    let down = async {
        copy(&mut pr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Copies until end of input or an error (either side); answers the bytes
/// copied. (The daemon's proxy relays with it too.)
pub async fn copy<R, W>(r: &mut R, w: &mut W) -> u64
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            return total;
        }
        total += n as u64;
    }
}
