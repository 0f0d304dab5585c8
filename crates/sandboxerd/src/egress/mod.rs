//! The egress proxy of `network: {mode: egress}` sandboxes.
//!
//! Such a sandbox has only loopback in its network namespace, as with
//! `none`: nothing it sends reaches any other address by itself. The daemon
//! serves one Unix socket per sandbox, bound read-only into it; the
//! sandbox's agent listens on `127.0.0.1:<proxy_port>` inside and relays
//! every connection to that socket, and `HTTP_PROXY`/`HTTPS_PROXY` point
//! there. Here each connection is one decision ([`policy`]): an HTTP
//! `CONNECT host:port` (HTTPS and any TCP protocol) or an absolute
//! `http://` request, allowed or refused by the sandbox's rules, the TLS
//! server name of a tunnel checked too ([`tls`]). Names are resolved here,
//! never inside the sandbox, so a sandbox has no DNS to exfiltrate through.
//! Every decision is counted and kept in a bounded per-sandbox log.

pub mod policy;
mod proxy;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sandboxer_api::{NetworkDecision, NetworkLog, NetworkVerdict};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::EgressSettings;
pub use policy::{Policy, Protected};

/// Logs of ended sandboxes kept (the oldest are forgotten first).
const ENDED_LOGS: usize = 64;
/// Name lookups in flight at once, over every sandbox.
const MAX_LOOKUPS: usize = 64;

/// The proxy of every egress sandbox of this daemon.
pub struct Egress {
    settings: EgressSettings,
    protected: RwLock<Protected>,
    served: Mutex<HashMap<String, Arc<Served>>>,
    ended: Mutex<VecDeque<(String, Arc<Log>)>>,
    totals: Totals,
    /// Connections open over every sandbox.
    connections: Arc<Semaphore>,
    /// Name lookups in flight.
    lookups: Semaphore,
}

/// Counters over every sandbox, for `/metrics`.
#[derive(Default)]
struct Totals {
    allowed: AtomicU64,
    denied: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    open: AtomicU64,
}

/// One sandbox's proxy.
struct Served {
    sandbox_id: String,
    policy: Policy,
    log: Arc<Log>,
    /// Connections open at once.
    slots: Arc<Semaphore>,
    stop: CancellationToken,
}

/// A sandbox's decisions: the newest `cap`, and counts.
struct Log {
    cap: usize,
    inner: Mutex<LogInner>,
}

#[derive(Default)]
struct LogInner {
    items: VecDeque<NetworkDecision>,
    dropped: u64,
    allowed: u64,
    denied: u64,
}

impl Log {
    fn new(cap: usize) -> Self {
        Log {
            cap,
            inner: Mutex::default(),
        }
    }

    fn push(&self, d: NetworkDecision) {
        let mut l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match d.decision {
            NetworkVerdict::Allowed => l.allowed += 1,
            NetworkVerdict::Denied => l.denied += 1,
        }
        if l.items.len() >= self.cap {
            l.items.pop_front();
            l.dropped += 1;
        }
        l.items.push_back(d);
    }

    fn snapshot(&self) -> NetworkLog {
        let l = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        NetworkLog {
            items: l.items.iter().cloned().collect(),
            dropped: l.dropped,
            allowed: l.allowed,
            denied: l.denied,
        }
    }
}

impl Default for Egress {
    fn default() -> Self {
        Egress::new(EgressSettings::default())
    }
}

impl Egress {
    pub fn new(settings: EgressSettings) -> Self {
        Egress {
            connections: Arc::new(Semaphore::new(settings.max_connections_total as usize)),
            lookups: Semaphore::new(MAX_LOOKUPS),
            settings,
            protected: RwLock::default(),
            served: Mutex::default(),
            ended: Mutex::default(),
            totals: Totals::default(),
        }
    }

    /// The port inside a sandbox where its agent relays to the proxy.
    pub fn proxy_port(&self) -> u16 {
        self.settings.proxy_port
    }

    /// Never lets a sandbox reach `addr` (one of the daemon's listeners).
    /// For an unspecified address (`0.0.0.0`), this host's addresses are
    /// read now.
    pub fn protect(&self, addr: SocketAddr) {
        let mut p = self.protected.write().unwrap_or_else(|e| e.into_inner());
        if addr.ip().is_unspecified() && p.local.is_empty() {
            p.local = local_addresses();
        }
        if !p.listen.contains(&addr) {
            p.listen.push(addr);
        }
    }

    fn protected(&self) -> Protected {
        self.protected
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serves sandbox `sandbox_id`'s proxy on a new socket at `socket`
    /// (what was there is replaced), connectable by `group` when given
    /// (mode 0660) or by the daemon's user only (0600). Serving a sandbox
    /// again (after a daemon restart, or a second call) replaces the old
    /// server and keeps its log. Must be called within the runtime.
    pub fn serve(
        self: &Arc<Self>,
        sandbox_id: &str,
        socket: &Path,
        policy: Policy,
        group: Option<u32>,
    ) -> std::io::Result<()> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(socket)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(socket, None, Some(gid))?;
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
        } else {
            std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
        }
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let log = match served.remove(sandbox_id) {
            Some(old) => {
                old.stop.cancel();
                old.log.clone()
            }
            None => Arc::new(Log::new(self.settings.log_entries as usize)),
        };
        let s = Arc::new(Served {
            sandbox_id: sandbox_id.to_owned(),
            policy,
            log,
            slots: Arc::new(Semaphore::new(self.settings.max_connections as usize)),
            stop: CancellationToken::new(),
        });
        served.insert(sandbox_id.to_owned(), s.clone());
        tokio::spawn(proxy::accept_loop(self.clone(), s, listener));
        Ok(())
    }

    /// Whether sandbox `sandbox_id`'s proxy is being served.
    pub fn is_served(&self, sandbox_id: &str) -> bool {
        self.served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(sandbox_id)
    }

    /// Stops sandbox `sandbox_id`'s proxy and every connection through it;
    /// its log stays readable (among the last [`ENDED_LOGS`] ended).
    pub fn stop(&self, sandbox_id: &str) {
        let Some(s) = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sandbox_id)
        else {
            return;
        };
        s.stop.cancel();
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        ended.retain(|(id, _)| id != sandbox_id);
        if ended.len() >= ENDED_LOGS {
            ended.pop_front();
        }
        ended.push_back((sandbox_id.to_owned(), s.log.clone()));
    }

    /// Sandbox `sandbox_id`'s decisions, while it is served or among the
    /// last ended; `None` when nothing is known of it.
    pub fn log(&self, sandbox_id: &str) -> Option<NetworkLog> {
        if let Some(s) = self
            .served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sandbox_id)
        {
            return Some(s.log.snapshot());
        }
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| id == sandbox_id)
            .map(|(_, log)| log.snapshot())
    }

    /// Appends the proxy's counters to a Prometheus text exposition.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let t = &self.totals;
        let _ = writeln!(
            out,
            "# HELP sandboxer_egress_decisions_total Egress proxy decisions, by verdict.\n\
             # TYPE sandboxer_egress_decisions_total counter\n\
             sandboxer_egress_decisions_total{{decision=\"allowed\"}} {}\n\
             sandboxer_egress_decisions_total{{decision=\"denied\"}} {}\n\
             # HELP sandboxer_egress_bytes_total Bytes relayed by the egress proxy (out: from sandboxes).\n\
             # TYPE sandboxer_egress_bytes_total counter\n\
             sandboxer_egress_bytes_total{{direction=\"out\"}} {}\n\
             sandboxer_egress_bytes_total{{direction=\"in\"}} {}\n\
             # HELP sandboxer_egress_connections Connections open through the egress proxy.\n\
             # TYPE sandboxer_egress_connections gauge\n\
             sandboxer_egress_connections {}",
            t.allowed.load(Ordering::Relaxed),
            t.denied.load(Ordering::Relaxed),
            t.bytes_out.load(Ordering::Relaxed),
            t.bytes_in.load(Ordering::Relaxed),
            t.open.load(Ordering::Relaxed),
        );
    }

    fn record(&self, served: &Served, d: NetworkDecision) {
        match d.decision {
            NetworkVerdict::Allowed => &self.totals.allowed,
            NetworkVerdict::Denied => &self.totals.denied,
        }
        .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            sandbox_id = %served.sandbox_id,
            decision = ?d.decision,
            host = %d.host,
            port = d.port,
            reason = %d.reason,
            "egress"
        );
        served.log.push(d);
    }
}

/// This host's own addresses.
fn local_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}
