//! `ext.docker`: a sandbox is a container of a profile's `image`, run by
//! the local Docker Engine (bollard over its Unix socket) with runc, or
//! gVisor's `runsc` for `isolation: gvisor`.
//!
//! The image needs to know nothing of sand-boxer: the in-sandbox agent is
//! bind-mounted read-only at `/.sandboxer` with the shared libraries it was
//! linked against, and started through that loader as the container's
//! init, so exec, processes, files and ports work as on ext.local. Its
//! socket is made in a directory of the sandbox bind-mounted at
//! `/run/sandboxer`; the daemon connects to it only after checking, by
//! `SO_PEERCRED`, that the process listening is one of this container's
//! (code in the sandbox can swap the socket for a symlink to anything).
//!
//! The workspace is ext.local's (a directory, on its own disk image when
//! the profile sets `resources.disk`), bind-mounted at `/workspace`: the
//! same snapshot archives, restores and forks across both backends. The
//! root filesystem is read-only, `/tmp` a 64 MiB tmpfs, every capability
//! dropped, `no-new-privileges`, Docker's default seccomp profile, no
//! network (`network_mode: none`), and `cpus`, `memory` (without swap)
//! and `pids` as the profile says. Everything carries the labels
//! `io.sandboxer.sandbox-id` and `io.sandboxer.deployment` (this data dir),
//! so the stale sweep finds exactly this daemon's leftovers.
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use sandboxer_api::{Availability, Isolation, ProblemCode, StaleItem};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::local::{agent, LocalExtension};
use super::{
    AgentEndpoint, BackendState, ExtError, Extension, HostInventory, HostSeen, Liveness,
    ProvisionRequest, ReadyInfo, SandboxEnv, ServeAgent, SnapshotArchive, SnapshotSource,
};

/// The catalog id.
pub const ID: &str = "ext.docker";
/// The host id of the local Docker Engine.
pub const HOST: &str = "local";
/// The label every container carries: its sandbox.
pub const LABEL: &str = "io.sandboxer.sandbox-id";
/// The label naming the deployment (data dir) that made it.
pub const DEPLOYMENT: &str = "io.sandboxer.deployment";
/// Where the agent and its libraries are, inside.
const AGENT_MOUNT: &str = "/.sandboxer";
/// Where the agent's socket and logs are, inside.
const RUN_MOUNT: &str = "/run/sandboxer";
/// How long the registered runtimes are taken as known.
const RUNTIMES_FOR: Duration = Duration::from_secs(10);
/// Every Docker API call gives up after this.
const CALL: Duration = Duration::from_secs(30);

/// What is kept on the sandbox row.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DockerState {
    /// The container's id (64 hex digits).
    container: String,
    image: String,
    runtime: String,
    /// The profile's network rules, for `mode: egress` (served again after
    /// a daemon restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    egress: Option<sandboxer_api::NetworkPolicy>,
}

/// The agent and what it needs to run in an image without its libraries.
#[derive(Debug, Clone)]
struct AgentKit {
    /// `<data>/agent/docker`, mounted at [`AGENT_MOUNT`].
    dir: PathBuf,
    /// The dynamic loader's file name in `lib/` (`None`: the agent is
    /// linked statically and runs as it is).
    loader: Option<String>,
}

/// Copies the installed agent and the shared libraries `ldd` says it needs
/// (with the dynamic loader) to `<data>/agent/docker`, readable by any
/// user (the container's user reads them through the bind mount).
fn install_kit(agent: &Path, data_dir: &Path) -> Result<AgentKit, String> {
    let dir = data_dir.join("agent").join("docker");
    let lib = dir.join("lib");
    let fail =
        |what: &str, e: std::io::Error| format!("preparing the agent for containers: {what}: {e}");
    std::fs::create_dir_all(&lib).map_err(|e| fail(&lib.display().to_string(), e))?;
    for d in [&dir, &lib] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail(&d.display().to_string(), e))?;
    }
    let out = std::process::Command::new("ldd")
        .arg(agent)
        .output()
        .map_err(|e| fail("running ldd", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut loader = None;
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)` or the
        // loader: `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        if let Some((_, rest)) = line.split_once("=> ") {
            if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(PathBuf::from(path));
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            loader = Some(PathBuf::from(path));
            libs.push(PathBuf::from(path));
        }
    }
    for src in libs.iter().chain(std::iter::once(&agent.to_path_buf())) {
        let name = src.file_name().unwrap_or_default();
        let dst = if src == agent {
            dir.join("sandboxer-agent")
        } else {
            lib.join(name)
        };
        let tmp = dst.with_extension(format!("tmp{}", std::process::id()));
        std::fs::copy(src, &tmp).map_err(|e| fail(&src.display().to_string(), e))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| fail(&tmp.display().to_string(), e))?;
        std::fs::rename(&tmp, &dst).map_err(|e| fail(&dst.display().to_string(), e))?;
    }
    Ok(AgentKit {
        dir,
        loader: loader.and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())),
    })
}

/// The image a profile's `template: <id>` runs (`crate::templates`
/// builds it).
pub fn template_image(id: &str) -> String {
    format!("sandboxer-template/{id}:current")
}

/// This deployment's id, for the [`DEPLOYMENT`] label: random, made once
/// and kept as `<data_dir>/deployment-id` (two daemons whose data dirs
/// share a path, on one engine, still never take each other's containers).
pub fn deployment_id(data_dir: &Path) -> String {
    let path = data_dir.join("deployment-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return id.to_owned();
        }
    }
    let mut bytes = [0u8; 16];
    let made = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map(|()| hex::encode(bytes));
    match made {
        Ok(id) => {
            // Written whole or not at all.
            let tmp = data_dir.join(format!(".deployment-id.{}", std::process::id()));
            let _ = std::fs::create_dir_all(data_dir)
                .and_then(|()| std::fs::write(&tmp, &id))
                .and_then(|()| std::fs::rename(&tmp, &path));
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .unwrap_or(id)
        }
        // No randomness: the data dir's path, as a last resort.
        Err(_) => data_dir.display().to_string(),
    }
}

/// The Docker backend.
pub struct DockerExtension {
    docker: Result<Docker, String>,
    /// The workspaces (and snapshots of them) are ext.local's.
    local: Arc<LocalExtension>,
    kit: Result<AgentKit, String>,
    agent_limits: agent::Limits,
    /// This deployment, for the [`DEPLOYMENT`] label.
    deployment: String,
    /// What the last availability check saw.
    seen: Mutex<HostSeen>,
    /// The runtimes dockerd had registered, and when that was asked: a
    /// routed create probes availability, and `docker info` is not asked
    /// more than every [`RUNTIMES_FOR`].
    runtimes: Mutex<Option<(Instant, Vec<String>)>>,
}

/// A Docker API failure as the backend's error.
fn docker_error(code: ProblemCode, what: &str, e: bollard::errors::Error) -> ExtError {
    ExtError::new(code, format!("{what}: {e}"))
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// A call bounded by [`CALL`].
async fn bounded<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
) -> Result<Result<T, bollard::errors::Error>, ExtError> {
    tokio::time::timeout(CALL, fut).await.map_err(|_| {
        ExtError::new(
            ProblemCode::BackendUnavailable,
            format!("{what}: the Docker Engine did not answer within {CALL:?}"),
        )
    })
}

impl DockerExtension {
    /// The backend over the local engine (`DOCKER_HOST`, else
    /// `/var/run/docker.sock`), sharing `local`'s workspaces and agent.
    pub fn new(
        data_dir: &Path,
        local: Arc<LocalExtension>,
        access: &crate::config::AccessSettings,
    ) -> Self {
        let docker = Docker::connect_with_unix_defaults().map_err(|e| e.to_string());
        let kit = local
            .agent_binary()
            .map_err(str::to_owned)
            .and_then(|a| install_kit(a, data_dir));
        let deployment = deployment_id(data_dir);
        DockerExtension {
            docker,
            local,
            kit,
            agent_limits: agent::Limits {
                max_log_bytes: access.process_log_max,
                max_processes: access.max_processes,
            },
            deployment,
            seen: Mutex::new(HostSeen::default()),
            runtimes: Mutex::new(None),
        }
    }

    fn docker(&self) -> Result<&Docker, ExtError> {
        self.docker.as_ref().map_err(|e| {
            ExtError::new(
                ProblemCode::BackendUnavailable,
                format!("no Docker Engine: {e}"),
            )
        })
    }

    /// The container's name: fixed by the sandbox id, so a teardown finds
    /// it even when the daemon died before recording its id.
    fn name(sandbox_id: &str) -> String {
        format!("sandboxer-{}", sandbox_id.to_lowercase())
    }

    fn run_dir(&self, sandbox_id: &str) -> PathBuf {
        self.local.sandbox_dir(sandbox_id).join("run")
    }

    fn socket(&self, sandbox_id: &str) -> PathBuf {
        self.run_dir(sandbox_id).join(agent::SOCKET)
    }

    /// The runtimes dockerd has registered (`runc`, `runsc`, ...), as
    /// asked at most [`RUNTIMES_FOR`] ago.
    async fn runtimes(&self) -> Result<Vec<String>, ExtError> {
        if let Some((at, names)) = &*self.runtimes.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < RUNTIMES_FOR {
                return Ok(names.clone());
            }
        }
        let info = bounded("docker info", self.docker()?.info())
            .await?
            .map_err(|e| docker_error(ProblemCode::BackendUnavailable, "docker info", e))?;
        let mut names: Vec<String> = info.runtimes.unwrap_or_default().into_keys().collect();
        names.sort();
        *self.runtimes.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), names.clone()));
        Ok(names)
    }

    fn labels(&self, sandbox_id: &str) -> HashMap<String, String> {
        HashMap::from([
            (LABEL.to_owned(), sandbox_id.to_owned()),
            (DEPLOYMENT.to_owned(), self.deployment.clone()),
        ])
    }

    /// Removes sandbox `sandbox_id`'s containers: the one of its name and
    /// any other of this deployment that carries its label (gone already
    /// is fine).
    async fn remove(&self, sandbox_id: &str) -> Result<(), ExtError> {
        let mut names = vec![Self::name(sandbox_id)];
        names.extend(
            self.labelled(Some(sandbox_id))
                .await?
                .into_iter()
                .map(|i| i.name),
        );
        names.dedup();
        for name in names {
            let opts = RemoveContainerOptionsBuilder::new()
                .force(true)
                .v(true)
                .build();
            match bounded(
                "removing the container",
                self.docker()?.remove_container(&name, Some(opts)),
            )
            .await?
            {
                Ok(()) => {}
                Err(e) if status_of(&e) == Some(404) => {}
                // "removal already in progress": gone before the workspace goes.
                Err(e) if status_of(&e) == Some(409) => self.until_gone(&name).await?,
                Err(e) => {
                    return Err(docker_error(
                        ProblemCode::TeardownFailed,
                        "removing the container",
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Waits (at most 30 s) until container `name` no longer exists.
    async fn until_gone(&self, name: &str) -> Result<(), ExtError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.inspect(name).await {
                Ok(None) => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(ExtError::new(
                        ProblemCode::TeardownFailed,
                        format!("container {name} was still being removed after 30s"),
                    ))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Containers of this deployment (of sandbox `only` when given).
    async fn labelled(&self, only: Option<&str>) -> Result<Vec<StaleItem>, ExtError> {
        let label = match only {
            Some(id) => format!("{LABEL}={id}"),
            None => LABEL.to_owned(),
        };
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![label, format!("{DEPLOYMENT}={}", self.deployment)],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = bounded(
            "listing containers",
            self.docker()?.list_containers(Some(opts)),
        )
        .await?
        .map_err(|e| docker_error(ProblemCode::HostError, "listing containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let id = c.labels.as_ref()?.get(LABEL)?.clone();
                let name = c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_owned();
                Some(StaleItem {
                    kind: "container".into(),
                    name,
                    sandbox_id: id,
                })
            })
            .collect())
    }

    /// Sandbox `sandbox_id`'s container's state (see [`DockerExtension::inspect`]).
    async fn state_of(&self, sandbox_id: &str) -> Result<Option<(bool, bool)>, ExtError> {
        self.inspect(&Self::name(sandbox_id)).await
    }

    /// Container `name`'s state: (running, paused), `None` when it is gone.
    async fn inspect(&self, name: &str) -> Result<Option<(bool, bool)>, ExtError> {
        match bounded(
            "inspecting the container",
            self.docker()?.inspect_container(
                name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            ),
        )
        .await?
        {
            Ok(c) => {
                let s = c.state.unwrap_or_default();
                Ok(Some((
                    s.running.unwrap_or(false),
                    s.paused.unwrap_or(false),
                )))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(docker_error(
                ProblemCode::HostError,
                "inspecting the container",
                e,
            )),
        }
    }

    fn container_id(state: Option<&BackendState>) -> Option<String> {
        state
            .and_then(|s| serde_json::from_value::<DockerState>(s.clone()).ok())
            .map(|s| s.container)
            .filter(|c| !c.is_empty())
    }
}

/// Connects to the agent at `socket` if, and only if, the process that
/// listens there is in container `container`'s cgroup: a socket swapped
/// for a symlink to another sandbox's agent, or to any other socket of the
/// host, is refused before a byte is sent.
pub async fn connect_verified(
    socket: &Path,
    container: &str,
) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    use std::os::unix::io::AsRawFd;
    // The socket itself, never what a symlink put in its place points to
    // (the directory above it is the daemon's, so only the last name can
    // be swapped): opened as a path, checked to be a socket, and connected
    // to through that very descriptor.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(socket)?;
    if !handle.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a socket", socket.display()),
        ));
    }
    let stream =
        tokio::net::UnixStream::connect(format!("/proc/self/fd/{}", handle.as_raw_fd())).await?;
    drop(handle);
    let cred = stream.peer_cred()?;
    let pid = cred.pid().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the agent's socket has no peer pid",
        )
    })?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    if container.len() < 12 || !cgroup.contains(container) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the process behind {} is not the sandbox's agent",
                socket.display()
            ),
        ));
    }
    Ok(stream)
}

/// Serves agent requests by relaying them to the container's agent over a
/// verified connection.
struct DockerAgent {
    socket: PathBuf,
    container: String,
}

impl ServeAgent for DockerAgent {
    fn serve(self: Arc<Self>, _service: Option<String>, mut stream: tokio::net::UnixStream) {
        tokio::spawn(async move {
            let connected = tokio::time::timeout(
                Duration::from_secs(10),
                connect_verified(&self.socket, &self.container),
            )
            .await;
            match connected {
                Ok(Ok(mut agent)) => {
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(socket = %self.socket.display(), error = %e, "the container's agent was not reached")
                }
                Err(_) => {
                    tracing::warn!(socket = %self.socket.display(), "the container's agent did not accept within 10s")
                }
            }
        });
    }
}

#[async_trait]
impl Extension for DockerExtension {
    fn id(&self) -> &'static str {
        ID
    }

    async fn availability(&self) -> Availability {
        let mut seen = HostSeen {
            checked_at_ms: Some(crate::store::now_ms()),
            engine: Some("docker".into()),
            ..HostSeen::default()
        };
        let result = async {
            if let Err(e) = &self.kit {
                return Err(e.clone());
            }
            let docker = self.docker().map_err(|e| e.message)?;
            match tokio::time::timeout(Duration::from_secs(5), docker.ping()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("the Docker Engine does not answer: {e}")),
                Err(_) => return Err("the Docker Engine did not answer within 5s".into()),
            }
            let runtimes = self.runtimes().await.map_err(|e| e.message)?;
            Ok(runtimes)
        }
        .await;
        let availability = match result {
            Ok(runtimes) if runtimes.iter().any(|r| r == "runsc") => Availability {
                available: true,
                reason: None,
            },
            Ok(runtimes) => Availability {
                available: true,
                reason: Some(format!(
                    "isolation `gvisor` is unavailable: `runsc` is not a registered Docker runtime (registered: {})",
                    runtimes.join(", ")
                )),
            },
            Err(reason) => {
                seen.error = Some(reason.clone());
                Availability {
                    available: false,
                    reason: Some(reason),
                }
            }
        };
        seen.reachable = Some(availability.available);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = seen;
        availability
    }

    fn hosts(&self) -> Vec<String> {
        vec![HOST.to_owned()]
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %req.sandbox_id))]
    async fn provision(&self, req: &ProvisionRequest) -> Result<BackendState, ExtError> {
        let kit = self
            .kit
            .as_ref()
            .map_err(|e| ExtError::new(ProblemCode::BackendUnavailable, e.clone()))?;
        let image = match (&req.profile.image, &req.profile.template) {
            (Some(image), _) => image.clone(),
            (None, Some(template)) => template_image(template),
            (None, None) => {
                return Err(ExtError::new(
                    ProblemCode::ProvisionFailed,
                    format!(
                        "profile {} names no `image` or `template` for ext.docker",
                        req.profile.id
                    ),
                ))
            }
        };
        let runtime = match req.profile.isolation {
            Isolation::Gvisor => {
                if !self.runtimes().await?.iter().any(|r| r == "runsc") {
                    return Err(ExtError::new(
                        ProblemCode::BackendUnavailable,
                        "isolation `gvisor` needs gVisor's `runsc` registered as a Docker runtime (apt-get install runsc; see docs/extensions/docker.md)",
                    ));
                }
                "runsc"
            }
            _ => "runc",
        };
        let dir = self.local.prepare_workspace(req).await?;
        let run = dir.join("run");
        let ids = self.local.ids();
        {
            let made = run.clone();
            let top = dir.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                // dockerd (root) makes the bind mounts: the sandbox's host
                // user needs no way into its directory from the host, so
                // other processes of that uid on the host have none either.
                std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o700))?;
                std::fs::create_dir_all(&made)?;
                std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o700))?;
                std::os::unix::fs::chown(&made, Some(ids.uid), Some(ids.gid))
            })
            .await
            .map_err(|e| ExtError::new(ProblemCode::ProvisionFailed, format!("run dir task: {e}")))?
            .map_err(|e| {
                ExtError::new(
                    ProblemCode::ProvisionFailed,
                    format!("{}: {e}", run.display()),
                )
            })?;
        }
        // `network: {mode: egress}`: the daemon's filtering proxy, reached
        // through its socket mounted in and the agent's loopback relay; the
        // container still has no network of its own.
        let egress = (req.profile.network.mode == sandboxer_api::NetworkMode::Egress)
            .then(|| req.profile.network.clone());
        if let Some(network) = &egress {
            self.local.serve_egress(&req.sandbox_id, network)?;
        }
        let r = &req.profile.resources;
        let memory = r.memory.as_deref().and_then(crate::config::parse_size);
        let mut env: Vec<String> = vec![
            "HOME=/workspace".into(),
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ];
        env.extend(
            req.profile
                .setup
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}")),
        );
        env.extend(
            req.secrets
                .iter()
                .map(|(k, v)| format!("{k}={}", v.expose())),
        );
        if egress.is_some() {
            let proxy = format!("http://127.0.0.1:{}", self.local.egress_port());
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.push(format!("{k}={proxy}"));
            }
            for k in ["NO_PROXY", "no_proxy"] {
                env.push(format!("{k}=localhost,127.0.0.1,::1"));
            }
        }
        // A dynamically linked agent runs through its own loader and
        // libraries (the image may have another libc, or none).
        let agent_bin = format!("{AGENT_MOUNT}/sandboxer-agent");
        let (entry, mut cmd) = match &kit.loader {
            Some(loader) => (
                format!("{AGENT_MOUNT}/lib/{loader}"),
                vec![
                    "--library-path".to_owned(),
                    format!("{AGENT_MOUNT}/lib"),
                    agent_bin,
                ],
            ),
            None => (agent_bin, Vec::new()),
        };
        cmd.extend([
            "--listen".into(),
            format!("{RUN_MOUNT}/{}", agent::SOCKET),
            "--log-dir".into(),
            format!("{RUN_MOUNT}/logs"),
            "--max-log-bytes".into(),
            self.agent_limits.max_log_bytes.to_string(),
            "--max-processes".into(),
            self.agent_limits.max_processes.to_string(),
        ]);
        let mut binds = vec![
            format!("{}:{AGENT_MOUNT}:ro", kit.dir.display()),
            format!("{}:/workspace:rw", dir.join("workspace").display()),
            format!("{}:{RUN_MOUNT}:rw", run.display()),
        ];
        if egress.is_some() {
            cmd.extend([
                "--egress-socket".into(),
                format!("{}/{}", agent::EGRESS_DIR_IN_SANDBOX, agent::EGRESS_SOCKET),
                "--egress-port".into(),
                self.local.egress_port().to_string(),
            ]);
            binds.push(format!(
                "{}:{}:ro",
                self.local.egress_dir(&req.sandbox_id).display(),
                agent::EGRESS_DIR_IN_SANDBOX
            ));
        }
        let host = HostConfig {
            binds: Some(binds),
            // Memory-backed (charged to the container's limit): the agent's
            // spilled process output never lands on the host's disk.
            tmpfs: Some(HashMap::from([
                ("/tmp".to_owned(), "rw,nosuid,nodev,size=64m".to_owned()),
                (
                    format!("{RUN_MOUNT}/logs"),
                    "rw,nosuid,nodev,noexec,size=64m".to_owned(),
                ),
            ])),
            // What pid 1 writes (code in the sandbox can write there too,
            // through /proc/1/fd/1) is capped, not the host's disk.
            log_config: Some(HostConfigLogConfig {
                typ: Some("local".into()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "1m".to_owned()),
                    ("max-file".to_owned(), "2".to_owned()),
                    ("compress".to_owned(), "false".to_owned()),
                ])),
            }),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            network_mode: Some("none".into()),
            ipc_mode: Some("private".into()),
            memory: memory.and_then(|m| i64::try_from(m).ok()),
            memory_swap: memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: r.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: Some(r.pids.unwrap_or(super::local::DEFAULT_PIDS) as i64),
            runtime: Some(runtime.into()),
            // Docker's tini as pid 1 reaps what the sandbox orphans (else
            // zombies hold the `pids` limit for ever); the agent is its child.
            init: Some(true),
            ..HostConfig::default()
        };
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            user: Some(format!("{}:{}", ids.uid, ids.gid)),
            entrypoint: Some(vec![entry]),
            cmd: Some(cmd),
            env: Some(env),
            working_dir: Some("/workspace".into()),
            labels: Some(self.labels(&req.sandbox_id)),
            network_disabled: Some(true),
            host_config: Some(host),
            ..ContainerCreateBody::default()
        };
        let docker = self.docker()?;
        let name = Self::name(&req.sandbox_id);
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = match bounded("creating the container", docker.create_container(Some(opts), body)).await? {
            Ok(c) => c,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(ExtError::new(
                    ProblemCode::ProvisionFailed,
                    match &req.profile.template {
                        Some(t) => format!(
                            "template `{t}` has not been built (POST /v1/templates, or `sandboxctl template build {t}`)"
                        ),
                        None => format!(
                            "image `{image}` is not on the Docker host (nothing is pulled: build or load it there, see docs/extensions/docker.md)"
                        ),
                    },
                ))
            }
            Err(e) => return Err(docker_error(ProblemCode::ProvisionFailed, "creating the container", e)),
        };
        let state = DockerState {
            container: created.id.clone(),
            image,
            runtime: runtime.into(),
            egress,
        };
        crate::fault::hit("docker.after_create");
        bounded(
            "starting the container",
            docker.start_container(
                &name,
                None::<bollard::query_parameters::StartContainerOptions>,
            ),
        )
        .await?
        .map_err(|e| docker_error(ProblemCode::ProvisionFailed, "starting the container", e))?;
        Ok(serde_json::to_value(state).unwrap_or_default())
    }

    #[tracing::instrument(skip_all, fields(sandbox_id))]
    async fn wait_ready(
        &self,
        sandbox_id: &str,
        state: &BackendState,
        timeout: Duration,
    ) -> Result<ReadyInfo, ExtError> {
        let st: DockerState = serde_json::from_value(state.clone()).unwrap_or_default();
        let socket = self.socket(sandbox_id);
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Ok(stream) = connect_verified(&socket, &st.container).await {
                let ping = sandboxer_agent::client::open_on(
                    stream,
                    &sandboxer_agent::proto::Request::Ping,
                    Duration::from_secs(5),
                )
                .await;
                if let Ok(mut conn) = ping {
                    if conn
                        .reply::<sandboxer_agent::proto::Hello>(Duration::from_secs(5))
                        .await
                        .is_ok()
                    {
                        break;
                    }
                }
            }
            match self.state_of(sandbox_id).await? {
                Some((true, _)) => {}
                Some((false, _)) | None => {
                    return Err(ExtError::new(
                        ProblemCode::ProvisionFailed,
                        format!(
                            "the container of image `{}` stopped before its agent answered (does the image run on {}? see `docker logs {}`)",
                            st.image,
                            std::env::consts::ARCH,
                            Self::name(sandbox_id)
                        ),
                    ))
                }
            }
            if Instant::now() >= deadline {
                return Err(ExtError::new(
                    ProblemCode::ReadyTimeout,
                    format!("the container's agent did not answer within {timeout:?}"),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        Ok(ReadyInfo {
            reachability: json!({
                "kind": "docker",
                "container": Self::name(sandbox_id),
                "image": st.image,
                "runtime": st.runtime,
                "workdir": self.local.sandbox_dir(sandbox_id).join("workspace"),
            }),
            backend_state: state.clone(),
        })
    }

    fn agent(&self, sandbox_id: &str, state: &BackendState) -> Option<AgentEndpoint> {
        let container = Self::container_id(Some(state))?;
        Some(AgentEndpoint::Served(Arc::new(DockerAgent {
            socket: self.socket(sandbox_id),
            container,
        })))
    }

    fn has_agent(&self) -> bool {
        true
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn teardown(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        self.local.stop_egress(sandbox_id);
        self.remove(sandbox_id).await?;
        self.local.release_workspace(sandbox_id).await
    }

    async fn reattach(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        let st = state.and_then(|s| serde_json::from_value::<DockerState>(s.clone()).ok());
        match st.and_then(|s| s.egress) {
            Some(network) if !self.local.egress_served(sandbox_id) => {
                self.local.serve_egress(sandbox_id, &network)
            }
            _ => Ok(()),
        }
    }

    async fn probe(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<Liveness, ExtError> {
        Ok(match self.state_of(sandbox_id).await? {
            Some((true, _)) => Liveness::Alive,
            _ => Liveness::Gone,
        })
    }

    fn can_pause(&self) -> bool {
        true
    }

    async fn pause(&self, sandbox_id: &str, _state: Option<&BackendState>) -> Result<(), ExtError> {
        if let Some((true, true)) = self.state_of(sandbox_id).await? {
            return Ok(());
        }
        bounded(
            "pausing the container",
            self.docker()?.pause_container(&Self::name(sandbox_id)),
        )
        .await?
        .map_err(|e| docker_error(ProblemCode::HostError, "pausing the container", e))
    }

    async fn resume(
        &self,
        sandbox_id: &str,
        _state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        if let Some((_, false)) = self.state_of(sandbox_id).await? {
            return Ok(());
        }
        bounded(
            "unpausing the container",
            self.docker()?.unpause_container(&Self::name(sandbox_id)),
        )
        .await?
        .map_err(|e| docker_error(ProblemCode::HostError, "unpausing the container", e))
    }

    async fn frozen(&self, sandbox_id: &str, _state: Option<&BackendState>) -> Option<bool> {
        self.state_of(sandbox_id)
            .await
            .ok()
            .flatten()
            .map(|(_, paused)| paused)
    }

    fn can_snapshot(&self) -> bool {
        true
    }

    async fn snapshot(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        dest: &Path,
        max_content_bytes: u64,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<SnapshotArchive, ExtError> {
        self.local
            .snapshot(sandbox_id, state, dest, max_content_bytes, cancel)
            .await
    }

    async fn restore(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        src: &SnapshotSource,
        env: SandboxEnv<'_>,
    ) -> Result<(), ExtError> {
        self.local.restore(sandbox_id, state, src, env).await
    }

    async fn recover_workspace(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        self.local.recover_workspace(sandbox_id, state).await
    }

    fn snapshot_format(&self) -> Option<&'static str> {
        Some(super::local::WORKSPACE_ARCHIVE)
    }

    fn inventory(&self) -> Option<&dyn HostInventory> {
        Some(self)
    }
}

#[async_trait]
impl HostInventory for DockerExtension {
    fn seen(&self, host: &str) -> Option<HostSeen> {
        (host == HOST).then(|| self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    async fn inspect(&self, host: &str) -> Result<sandboxer_api::HostInspect, ExtError> {
        let info = bounded("docker info", self.docker()?.info())
            .await?
            .map_err(|e| docker_error(ProblemCode::HostError, "docker info", e))?;
        let owned = self.owned(host).await?;
        Ok(sandboxer_api::HostInspect {
            host: host.to_owned(),
            engine: "docker".into(),
            engine_version: info.server_version.unwrap_or_default(),
            memory_total_bytes: info
                .mem_total
                .and_then(|m| u64::try_from(m).ok())
                .unwrap_or(0),
            labelled_containers: owned.len() as u64,
            ..sandboxer_api::HostInspect::default()
        })
    }

    async fn owned(&self, host: &str) -> Result<Vec<StaleItem>, ExtError> {
        if host != HOST {
            return Ok(Vec::new());
        }
        self.labelled(None).await
    }

    async fn reap(&self, host: &str, sandbox_id: &str) -> Result<(), ExtError> {
        if host != HOST {
            return Ok(());
        }
        self.remove(sandbox_id).await?;
        self.local.release_workspace(sandbox_id).await
    }
}
