//! Ports: what listens inside (from the sandbox's own `/proc/net`), and a
//! relay to one of them on the sandbox's loopback.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use sandboxer_api::{PortInfo, PortList};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::proto::AgentError;
use crate::{reply_err, reply_ok};

/// TCP state `LISTEN` in `/proc/net/tcp`.
const LISTEN: &str = "0A";

/// The listening TCP sockets of `/proc/net/tcp` and `tcp6` text.
pub fn parse(tcp: &str, tcp6: &str) -> Vec<PortInfo> {
    let mut out: Vec<PortInfo> = Vec::new();
    for (text, v6) in [(tcp, false), (tcp6, true)] {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (f.get(1), f.get(3)) else {
                continue;
            };
            if *state != LISTEN {
                continue;
            }
            let Some((addr, port)) = local.split_once(':') else {
                continue;
            };
            let Ok(port) = u16::from_str_radix(port, 16) else {
                continue;
            };
            let Some(address) = (if v6 { v6_addr(addr) } else { v4_addr(addr) }) else {
                continue;
            };
            let info = PortInfo { port, address };
            if !out.contains(&info) {
                out.push(info);
            }
        }
    }
    out.sort_by(|a, b| (a.port, &a.address).cmp(&(b.port, &b.address)));
    out
}

/// `/proc/net/tcp` writes the address as one host-order `u32` in hex.
fn v4_addr(hex: &str) -> Option<String> {
    let n = u32::from_str_radix(hex, 16).ok()?;
    Some(Ipv4Addr::from(n.to_le_bytes()).to_string())
}

/// Four host-order `u32`s in hex.
fn v6_addr(hex: &str) -> Option<String> {
    if hex.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for i in 0..4 {
        let word = u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    Some(Ipv6Addr::from(bytes).to_string())
}

pub(crate) fn list() -> PortList {
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let tcp6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    PortList {
        items: parse(&tcp, &tcp6),
    }
}

pub(crate) async fn connect(
    port: u16,
    r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
) -> std::io::Result<()> {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let mut tcp = None;
    for a in addrs {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(a)).await
        {
            tcp = Some(s);
            break;
        }
    }
    let Some(tcp) = tcp else {
        return reply_err(
            &mut w,
            AgentError::new(
                "port_closed",
                format!("nothing listens on port {port} inside the sandbox"),
            ),
        )
        .await;
    };
    let _ = tcp.set_nodelay(true);
    reply_ok(&mut w, &serde_json::Value::Null).await?;
    let (mut tr, mut tw) = tcp.into_split();
    // Bytes the daemon sent right after its request line are already in the buffer.
    let mut r = r;
    let up = async {
        let _ = tokio::io::copy(&mut r, &mut tw).await;
        let _ = tw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut tr, &mut w).await;
        let _ = w.shutdown().await;
    };
    tokio::join!(up, down);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_proc_net() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n   2: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        let tcp6 = "  sl  local_address remote_address st\n   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0\n";
        let ports = parse(tcp, tcp6);
        assert_eq!(
            ports,
            vec![
                PortInfo {
                    port: 22,
                    address: "0.0.0.0".into()
                },
                PortInfo {
                    port: 80,
                    address: "::".into()
                },
                PortInfo {
                    port: 8080,
                    address: "127.0.0.1".into()
                },
            ]
        );
    }
}
