//! The sandbox's end of the egress proxy (`network: {mode: egress}`): a
//! TCP listener on `127.0.0.1:<port>` inside the sandbox's network
//! namespace, each connection relayed byte for byte to the daemon's proxy
//! socket bound into the sandbox. The agent decides nothing: the daemon
//! does, per connection, and a sandbox that talks to the socket directly
//! meets the same decisions.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::Semaphore;

/// Connections relayed at once; more wait in the listen backlog.
const MAX_RELAYS: usize = 512;

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
    crate::splice::both(&conn, &proxy).await;
}
