//! `sandboxerd`: the sand-boxer daemon.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sandboxerd::config::{Config, Overrides, EXAMPLE_CONFIG};

/// The sand-boxer daemon: provisions sandboxes by profile, enforces their TTLs, tears them down.
#[derive(Parser, Debug)]
#[command(name = "sandboxerd", version)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "SANDBOXER_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve on [default: 127.0.0.1:7443].
    #[arg(long)]
    listen: Option<String>,
    /// Where the database and workspaces live [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Folder of profile YAML files [default: ./profiles].
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// Folder of extension YAML files [default: ./extensions].
    #[arg(long)]
    extensions: Option<PathBuf>,
    /// `pretty` or `json` [default: pretty].
    #[arg(long)]
    log_format: Option<String>,
    /// Print the shipped example configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the OpenAPI document of the API and exit.
    Openapi,
    /// Run a command inside a running ext.local sandbox with the sandbox's
    /// own privileges (its user, no capabilities, its seccomp filter, its
    /// environment); exits with the command's status. Run as root or as the
    /// daemon's user. `reachability.enter` of a sandbox is this command line.
    Enter {
        /// Host pid of the sandbox's init (`reachability.pid`).
        #[arg(long)]
        pid: i32,
        /// Start time of that pid (clock ticks since boot), so a reused pid is refused.
        #[arg(long)]
        start: Option<u64>,
        /// The profile's `security.allow` switches the sandbox runs with
        /// (comma-separated), so the entered command gets the same filter.
        #[arg(long, value_delimiter = ',')]
        seccomp_allow: Vec<String>,
        /// The command and its arguments [default: /bin/sh].
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        argv: Vec<std::ffi::OsString>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_default_config {
        print!("{EXAMPLE_CONFIG}");
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Enter {
        pid,
        start,
        seccomp_allow,
        argv,
    }) = args.command
    {
        // Before any thread exists: a multi-threaded process cannot join a
        // user namespace.
        let enter = sandboxerd::confine::enter::EnterArgs {
            pid,
            start,
            seccomp_allow,
            argv,
        };
        return match sandboxerd::confine::enter::run(&enter) {
            Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
            Err(e) => {
                eprintln!("sandboxerd enter: {e}");
                ExitCode::from(125)
            }
        };
    }
    if let Some(Command::Openapi) = args.command {
        match sandboxerd::http::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("sandboxerd: cannot render the OpenAPI document: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let overrides = Overrides {
        listen: args.listen,
        data_dir: args.data_dir,
        profiles_dir: args.profiles,
        extensions_dir: args.extensions,
        log_format: args.log_format,
    };
    let settings = match Config::load(args.config.as_deref(), overrides).and_then(|c| c.settings())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandboxerd: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logs(settings.json_logs);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxerd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_file = args.config.as_deref().map_or_else(
        || "(none: defaults and environment)".to_owned(),
        |p| p.display().to_string(),
    );
    match runtime.block_on(run(settings, config_file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("sandboxerd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What an operator needs to see at start: where the configuration and
/// data are, what the catalog holds, how callers are authenticated, and
/// which backends can serve now (and why not).
async fn log_startup(state: &sandboxerd::AppState, config_file: &str) {
    let s = &state.settings;
    let auth = if s.tokens.is_empty() {
        "no tokens: one local operator, loopback only".to_owned()
    } else {
        format!("{} API token(s)", s.tokens.len())
    };
    let profiles: Vec<&str> = state.catalog.profiles.keys().map(String::as_str).collect();
    tracing::info!(
        config = %config_file,
        data_dir = %s.data_dir.display(),
        profiles_dir = %s.profiles_dir.display(),
        extensions_dir = %s.extensions_dir.display(),
        auth = %auth,
        profiles = %profiles.join(","),
        rejected = state.catalog.rejected.len(),
        ssh_gateway = %s.ssh_gateway.as_ref().map_or_else(|| "off".to_owned(), |g| g.listen.to_string()),
        state_hub = %s.state_hub_url.as_deref().unwrap_or("none"),
        "configuration"
    );
    for id in state.catalog.extensions.keys() {
        let Some(ext) = state.extensions.get(id) else {
            tracing::warn!(extension = %id, "extension in the catalog has no code in this daemon");
            continue;
        };
        let a = ext.availability().await;
        tracing::info!(
            extension = %id,
            available = a.available,
            reason = %a.reason.unwrap_or_default(),
            hosts = %ext.hosts().join(","),
            "backend"
        );
    }
}

async fn run(settings: sandboxerd::config::Settings, config_file: String) -> anyhow::Result<()> {
    if settings.tokens.is_empty() && !settings.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {}: no API tokens are configured, so only a loopback address \
             (127.0.0.1 or [::1]) may be served",
            settings.listen
        );
    }
    let listen = settings.listen;
    // Before anything else touches the data dir; held until the process exits.
    let _lock = sandboxerd::datadir::lock(&settings.data_dir)?;
    let state = sandboxerd::build_state(settings).await?;
    log_startup(&state, &config_file).await;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "sandboxerd serving");
    sandboxerd::serve(state, listener, shutdown_signal()).await?;
    tracing::info!("sandboxerd stopped; sandboxes keep running");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SANDBOXER_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}
