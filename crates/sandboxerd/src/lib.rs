//! sandboxerd: the sand-boxer daemon as a library, so tests and benchmarks
//! can start the real thing on port 0.
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

pub mod blobs;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod confine;
pub mod datadir;
pub mod egress;
pub mod events;
pub mod extensions;
pub mod fault;
pub mod hosts;
pub mod http;
pub mod ledger;
pub mod lifecycle;
pub mod metrics;
pub mod periodic;
pub mod procfs;
pub mod routing;
pub mod secrets;
pub mod sshgw;
pub mod store;
pub mod templates;

use catalog::Catalog;
use config::Settings;
use extensions::Registry;
use metrics::Metrics;
use store::Db;

/// The one context every handler and background task shares.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub catalog: Arc<Catalog>,
    pub extensions: Arc<Registry>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// Ids of sandboxes whose row just changed, for long-polls.
    pub events: broadcast::Sender<Arc<str>>,
    pub locks: Arc<lifecycle::Locks>,
    /// Per-token request buckets.
    pub rate_limiter: Arc<http::auth::RateLimiter>,
    /// Snapshot captures in flight, cancelled by their sandbox's teardown
    /// and by shutdown.
    pub captures: Arc<lifecycle::snapshots::Captures>,
    /// Sandboxes whose teardown is running now.
    pub teardowns_in_flight: Arc<lifecycle::InFlight>,
    /// A budget step-down pass is running (one at a time).
    pub budget_pass: Arc<AtomicBool>,
    /// ext.docker's templates (images built from a Dockerfile).
    pub templates: Arc<templates::Templates>,
    /// The status page's browser sessions.
    pub ui_sessions: Arc<http::ui::session::Sessions>,
    /// Cancelled when the daemon starts to stop: streams that never end
    /// on their own (the status page's) end then.
    pub closing: tokio_util::sync::CancellationToken,
    /// Per host, how many sandboxes' leftovers the last stale sweep found
    /// (the status page).
    pub stale_seen: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    /// Execs running and activity written per sandbox (API v1.1 access).
    pub access_gates: Arc<lifecycle::access::Gates>,
    /// The SSH gateway, when `[ssh_gateway]` is set.
    pub ssh_gateway: Option<Arc<sshgw::Gateway>>,
    /// Warm pools of the profiles that declare one.
    pub pools: Arc<lifecycle::pool::Pools>,
    /// Lifecycle tasks in flight, awaited on shutdown.
    pub tasks: TaskTracker,
    pub ready: Arc<AtomicBool>,
}

impl AppState {
    /// Tell long-polls that sandbox `id` changed.
    pub fn notify(&self, id: &str) {
        let _ = self.events.send(Arc::from(id));
    }

    /// Run a lifecycle task in the background, tracked for shutdown.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, fut: F) {
        self.tasks.spawn(fut);
    }
}

/// The backends compiled into this daemon.
pub fn registry(settings: &Settings) -> Registry {
    let mut registry = Registry::default();
    registry.egress = Arc::new(egress::Egress::new(settings.egress.clone()));
    // The configured ports are protected from the start (what was bound
    // to port 0 is added when known, in `serve`).
    let gateway = settings.ssh_gateway.as_ref().map(|g| g.listen);
    for addr in std::iter::once(settings.listen).chain(gateway) {
        if addr.port() != 0 {
            registry.egress.protect(addr);
        }
    }
    let local = Arc::new(
        extensions::local::LocalExtension::with_access(
            &settings.data_dir,
            settings.local.clone(),
            &settings.access,
        )
        .with_egress(registry.egress.clone()),
    );
    registry.insert(local.clone());
    // Containers whose workspaces (and snapshots) are ext.local's.
    registry.insert(Arc::new(extensions::docker::DockerExtension::new(
        &settings.data_dir,
        local,
        &settings.access,
    )));
    registry.insert(Arc::new(extensions::compose::ComposeExtension::new(
        &settings.hosts,
    )));
    registry
}

/// Create the database file with mode 0600 if it is missing (SQLite gives
/// its `-wal` and `-shm` files the database's mode), and narrow the files
/// that exist to 0600.
fn private_db_files(db_path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(db_path)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db_path.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Open the database, load the catalog, and finish what a previous run left
/// in flight. Any failure names the path at fault and nothing is served.
pub async fn build_state(settings: Settings) -> anyhow::Result<AppState> {
    // The data dir is the daemon's alone (0700): the database holds every
    // project's rows, and workspaces may hold what sandboxes made setuid.
    extensions::fsutil::private_dir(&settings.data_dir).with_context(|| {
        format!(
            "data dir {}: cannot create it with mode 0700",
            settings.data_dir.display()
        )
    })?;
    let mut registry = registry(&settings);
    let catalog = Catalog::load(&settings.profiles_dir, &settings.extensions_dir, &registry)
        .context("loading the catalog")?;
    catalog.bind_backends(&mut registry).map_err(|e| {
        anyhow::anyhow!(
            "loading the catalog: {}: {e}",
            settings.extensions_dir.display()
        )
    })?;
    let db_path = settings.data_dir.join("sandboxer.db");
    private_db_files(&db_path)
        .with_context(|| format!("database {}: cannot make it mode 0600", db_path.display()))?;
    let db = Db::open(&db_path).await?;
    let (events, _) = broadcast::channel(4096);
    let pools = Arc::new(lifecycle::pool::Pools::new(&catalog, &settings.pools));
    let rate_limiter = Arc::new(http::auth::RateLimiter::new(&settings.limits));
    let ssh_gateway = match &settings.ssh_gateway {
        Some(gw) => Some(Arc::new(
            sshgw::Gateway::bind(gw, &settings.data_dir)
                .await
                .with_context(|| format!("SSH gateway on {}", gw.listen))?,
        )),
        None => None,
    };
    let settings_data_dir = settings.data_dir.clone();
    let state = AppState {
        db,
        catalog: Arc::new(catalog),
        extensions: Arc::new(registry),
        settings: Arc::new(settings),
        metrics: Arc::new(Metrics::default()),
        events,
        locks: Arc::new(lifecycle::Locks::default()),
        teardowns_in_flight: Arc::new(lifecycle::InFlight::default()),
        budget_pass: Arc::new(AtomicBool::new(false)),
        ui_sessions: Arc::default(),
        templates: Arc::new(templates::Templates::new(&settings_data_dir)),
        closing: tokio_util::sync::CancellationToken::new(),
        stale_seen: Arc::default(),
        access_gates: Arc::new(lifecycle::access::Gates::default()),
        ssh_gateway,
        captures: Arc::new(lifecycle::snapshots::Captures::default()),
        pools,
        rate_limiter,
        tasks: TaskTracker::new(),
        ready: Arc::new(AtomicBool::new(false)),
    };
    let recovered = lifecycle::recover::recover(&state).await?;
    if recovered > 0 {
        tracing::info!(
            recovered,
            "finished sandboxes left in flight by the previous run"
        );
    }
    state.ready.store(true, Ordering::SeqCst);
    Ok(state)
}

/// Serve the API on `listener` until `shutdown` resolves, then let in-flight
/// requests and lifecycle tasks finish within the configured grace.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = state.settings.shutdown_grace;
    // No sandbox reaches the daemon's own ports through its egress proxy.
    if let Ok(addr) = listener.local_addr() {
        state.extensions.egress.protect(addr);
    }
    if let Some(gw) = &state.ssh_gateway {
        state.extensions.egress.protect(gw.addr());
    }
    let app = http::app(state.clone());
    let background = start_background(&state);
    if let Some(gw) = state.ssh_gateway.clone() {
        state.spawn(gw.serve(state.clone(), background.clone()));
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let captures = state.captures.clone();
    let shutdown = async move {
        shutdown.await;
        // A capture walks a workspace on a blocking thread that nothing
        // else can stop (and a request may be waiting on it): cancelled,
        // it ends within one entry or read chunk, so requests drain, the
        // tasks end, and the runtime can drop within the grace.
        let cancelled = captures.cancel_all();
        if cancelled > 0 {
            tracing::info!(
                cancelled,
                "snapshot captures in flight cancelled for shutdown"
            );
        }
    };
    // Header-read and idle timeouts and a per-client connection cap
    // (`[limits]`); see `http::server`. Every connection shares the one
    // router.
    let server = http::server::serve(
        listener,
        app,
        state.settings.http.clone(),
        shutdown,
        stop_tx,
    );
    let server = tokio::spawn(server);
    {
        // Endless streams end as soon as the stop begins.
        let (mut rx, closing) = (stop_rx.clone(), state.closing.clone());
        tokio::spawn(async move {
            let _ = rx.wait_for(|s| *s).await;
            closing.cancel();
        });
    }
    let mut stop_rx2 = stop_rx.clone();
    // Once asked to stop, give the server `grace` to drain before cutting it off.
    let drained = async {
        let _ = stop_rx2.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => { res.context("server task")?.context("serving HTTP")?; }
        _ = drained => { tracing::warn!(?grace, "in-flight requests did not finish in time"); }
    }
    background.cancel();
    // Also when the server stopped on its own: no capture outlives serve.
    state.captures.cancel_all();
    // Unassigned warm-pool members belong to this run: torn down now (or
    // by the next start when the grace runs out).
    lifecycle::pool::shut_down(&state).await;
    state.tasks.close();
    if tokio::time::timeout(grace, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("lifecycle tasks still running at shutdown; the next start finishes them");
    }
    state.db.close().await;
    Ok(())
}

/// Start the background tasks (reaper, metering ticker, event dispatcher,
/// warm-pool refills); cancel the token to stop them.
pub fn start_background(state: &AppState) -> tokio_util::sync::CancellationToken {
    let stop = tokio_util::sync::CancellationToken::new();
    state.spawn(lifecycle::reaper::run(
        state.clone(),
        state.settings.reaper_interval,
        stop.clone(),
    ));
    state.spawn(lifecycle::watch::run(state.clone(), stop.clone()));
    state.spawn(lifecycle::metering::run(
        state.clone(),
        state.settings.metering_interval,
        stop.clone(),
        lifecycle::budget::spawn_pass,
    ));
    if !lifecycle::stale::swept_hosts(state).is_empty()
        && !state.settings.stale_sweep_interval.is_zero()
    {
        state.spawn(lifecycle::stale::run(
            state.clone(),
            state.settings.stale_sweep_interval,
            state.settings.stale_grace,
            stop.clone(),
        ));
    }
    if let Some(url) = state.settings.state_hub_url.clone() {
        state.spawn(events::run(state.clone(), url, stop.clone()));
    }
    // Expired snapshots (issue 4); the reaper may call
    // `lifecycle::snapshots::sweep_expired_snapshots` on its tick instead.
    state.spawn(lifecycle::snapshots::run_sweeper(
        state.clone(),
        lifecycle::snapshots::SWEEP_INTERVAL,
        stop.clone(),
    ));
    lifecycle::pool::start(state, &stop);
    stop
}
