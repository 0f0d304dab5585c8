//! `ext.compose-ssh`: a compose stack per sandbox on a placement host,
//! reached over SSH. The workspace is uploaded to `<workdir>/<sandbox id>`,
//! the project is named after the sandbox id (lower case), and an override
//! file labels every container, network and volume with
//! `io.sandboxer.sandbox-id` and makes the project's networks internal
//! (default-deny), so teardown and orphan sweeps find all of it by label.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sandboxer_api::{Availability, ComposeAllow, NetworkMode, ProblemCode};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    BackendState, ExtError, Extension, Liveness, ProvisionRequest, ReadyInfo, SandboxEnv,
    SnapshotArchive, SnapshotSource,
};
use crate::hosts::{Engine, Host};

pub mod access;
pub mod policy;
pub mod project;
pub mod snapshot;
pub mod ssh;
pub mod telemetry;
mod up;

pub(crate) use up::BringUp;

use project::{LABEL, OVERRIDE_FILE};
use ssh::{sh_quote, HostPool};

/// The catalog id.
pub const ID: &str = "ext.compose-ssh";
/// The input naming the repository to upload.
pub const REPO_INPUT: &str = "repo";
/// Written by the `up` command so a crashed daemon's teardown can stop it.
const UP_PID_FILE: &str = ".sandboxer-up.pid";
/// Time a probe or a status poll may take.
const QUICK: Duration = Duration::from_secs(20);

/// The engine binary and compose command found on a host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tooling {
    /// `docker` or `podman`.
    pub engine: String,
    /// `docker compose`, `docker-compose` or `podman-compose`.
    pub compose: String,
}

/// What the row keeps to find a stack again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComposeState {
    pub host: String,
    pub project: String,
    pub dir: String,
    pub compose_file: String,
    pub services: Vec<String>,
    pub tooling: Tooling,
    /// Whether the project's networks were made internal (default-deny);
    /// a restore brings the stack back the same way.
    #[serde(default = "internal_by_default")]
    pub internal: bool,
    /// The profile's `compose.allow` at provision; a restore checks the
    /// snapshot's compose file against the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<ComposeAllow>,
}

fn internal_by_default() -> bool {
    true
}

/// The `ext.compose-ssh` backend: one SSH pool per configured host.
pub struct ComposeExtension {
    /// Pools in configuration order.
    hosts: Vec<Arc<HostPool>>,
    tooling: Mutex<BTreeMap<String, Tooling>>,
}

impl ComposeExtension {
    /// A backend over the configured hosts (none is fine: it is then unavailable).
    pub fn new(hosts: &[Host]) -> Self {
        Self {
            hosts: hosts
                .iter()
                .map(|h| Arc::new(HostPool::new(h.clone())))
                .collect(),
            tooling: Mutex::new(BTreeMap::new()),
        }
    }

    /// The pool of host `id`.
    pub fn pool(&self, id: &str) -> Option<Arc<HostPool>> {
        self.hosts.iter().find(|p| p.host.id == id).cloned()
    }

    pub(super) fn cached_tooling(&self, id: &str) -> Option<Tooling> {
        self.tooling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn pool_or_err(&self, id: &str) -> Result<Arc<HostPool>, ExtError> {
        self.pool(id).ok_or_else(|| {
            ExtError::new(
                ProblemCode::UnknownHost,
                format!("host `{id}` is not configured (`[[hosts]]`)"),
            )
        })
    }

    /// The engine and compose command of a host, detected once.
    pub async fn tooling(&self, pool: &HostPool) -> Result<Tooling, ExtError> {
        if let Some(t) = self.cached_tooling(&pool.host.id) {
            return Ok(t);
        }
        let (try_docker, try_podman) = match pool.host.engine {
            Engine::Docker => (true, false),
            Engine::Podman => (false, true),
            Engine::Auto => (true, true),
        };
        let mut script = String::new();
        if try_docker {
            script.push_str(
                "if command -v docker >/dev/null 2>&1; then \
                   if docker compose version >/dev/null 2>&1; then echo 'docker|docker compose'; exit 0; fi; \
                   if command -v docker-compose >/dev/null 2>&1; then echo 'docker|docker-compose'; exit 0; fi; \
                 fi; ",
            );
        }
        if try_podman {
            script.push_str(
                "if command -v podman >/dev/null 2>&1 && command -v podman-compose >/dev/null 2>&1; then \
                   echo 'podman|podman-compose'; exit 0; fi; ",
            );
        }
        script.push_str("exit 3");
        let out = pool.exec(&script, None, Some(QUICK)).await?;
        let line = out.stdout_text();
        let Some((engine, compose)) = line.trim().split_once('|') else {
            return Err(ExtError::new(
                ProblemCode::EngineNotFound,
                format!(
                    "host {}: no compose tool found for engine `{}` (docker compose, docker-compose or podman-compose)",
                    pool.host.id,
                    pool.host.engine.as_str()
                ),
            ));
        };
        let t = Tooling {
            engine: engine.to_owned(),
            compose: compose.to_owned(),
        };
        self.tooling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pool.host.id.clone(), t.clone());
        Ok(t)
    }

    fn known_state(&self, state: Option<&BackendState>) -> Result<ComposeState, ExtError> {
        parse_state(state).ok_or_else(|| {
            ExtError::new(
                ProblemCode::InvalidState,
                "the sandbox has no compose state yet (it is not ready)",
            )
        })
    }

    fn dir(host: &Host, sandbox_id: &str) -> String {
        format!("{}/{}", host.workdir, sandbox_id)
    }

    /// How many distinct sandboxes hold containers on the host.
    async fn sandboxes_on(&self, pool: &HostPool, t: &Tooling) -> Result<usize, ExtError> {
        let cmd = format!(
            "{} ps -a --filter label={LABEL} --format '{{{{.Label \"{LABEL}\"}}}}' | sort -u",
            t.engine
        );
        let out = pool
            .run(&cmd, ProblemCode::HostError, "listing sandboxes")
            .await?;
        Ok(out
            .stdout_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count())
    }

    /// Remove everything sandbox `sandbox_id` holds on one host.
    async fn teardown_on(
        &self,
        pool: &HostPool,
        sandbox_id: &str,
        known: Option<&ComposeState>,
    ) -> Result<(), ExtError> {
        let t = match known {
            Some(s) => s.tooling.clone(),
            None => self.tooling(pool).await?,
        };
        let dir = sh_quote(&Self::dir(&pool.host, sandbox_id));
        let project = sh_quote(&sandbox_id.to_lowercase());
        let label = sh_quote(&format!("{LABEL}={sandbox_id}"));
        let (e, c) = (&t.engine, &t.compose);
        let script = format!(
            r#"d={dir}; p={project}
if [ -f "$d/{UP_PID_FILE}" ]; then
  pid=$(cat "$d/{UP_PID_FILE}")
  if [ -n "$pid" ] && grep -q -- "$p" "/proc/$pid/cmdline" 2>/dev/null; then
    kill "$pid" 2>/dev/null; i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
    kill -9 "$pid" 2>/dev/null
  fi
fi
if [ -d "$d" ] && [ -f "$d/{OVERRIDE_FILE}" ]; then
  for f in e2e/docker-compose.yml docker-compose.yml; do
    if [ -f "$d/$f" ]; then
      (cd "$d" && {c} -p "$p" -f "$f" -f {OVERRIDE_FILE} down -v --remove-orphans -t 5) >/dev/null 2>&1
      break
    fi
  done
fi
{e} ps -q --filter label={label} --filter status=paused | xargs -r {e} unpause >/dev/null 2>&1
{e} ps -aq --filter label={label} | xargs -r {e} rm -f -v >/dev/null || exit 1
{e} network ls -q --filter label={label} | xargs -r {e} network rm >/dev/null || exit 1
{e} volume ls -q --filter label={label} | xargs -r {e} volume rm -f >/dev/null || exit 1
rm -rf "$d" || exit 1
"#
        );
        pool.run(&script, ProblemCode::TeardownFailed, "teardown")
            .await?;
        Ok(())
    }

    /// `docker pause` (or `unpause`) every container of the sandbox that is
    /// running (or paused): what `docker-compose pause` does for the
    /// project, but it also takes containers the stack started outside its
    /// compose file, and needs neither the file nor the project's folder.
    async fn freeze(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        freeze: bool,
    ) -> Result<(), ExtError> {
        let s = self.known_state(state)?;
        let pool = self.pool_or_err(&s.host)?;
        let e = &s.tooling.engine;
        let label = sh_quote(&format!("label={LABEL}={sandbox_id}"));
        // Every container that could run (a `restarting` one of a crash
        // loop too), then a check that none is left running: a half-done
        // step fails, and the lifecycle undoes it.
        let (from, verb, left) = if freeze {
            (
                "--filter status=running --filter status=restarting",
                "pause",
                "running --filter status=restarting",
            )
        } else {
            ("--filter status=paused", "unpause", "paused")
        };
        let cmd = format!(
            "ids=$({e} ps -q --filter {label} {from}) || exit 1\n\
             [ -z \"$ids\" ] || {e} {verb} $ids >/dev/null || exit 1\n\
             left=$({e} ps -q --filter {label} --filter status={left}) || exit 1\n\
             [ -z \"$left\" ] || {{ echo \"still not {verb}d: $left\" >&2; exit 1; }}"
        );
        pool.run(&cmd, ProblemCode::HostError, verb).await?;
        Ok(())
    }

    /// Containers of the sandbox: (name, state, status, service, ports).
    async fn containers(
        &self,
        pool: &HostPool,
        t: &Tooling,
        sandbox_id: &str,
    ) -> Result<Vec<[String; 5]>, ExtError> {
        let cmd = format!(
            "{} ps -a --filter {} --format '{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Status}}}}\t{{{{.Label \"com.docker.compose.service\"}}}}\t{{{{.Ports}}}}'",
            t.engine,
            sh_quote(&format!("label={LABEL}={sandbox_id}"))
        );
        let out = pool.exec(&cmd, None, Some(QUICK)).await?;
        if !out.success() {
            return Err(ExtError::new(
                ProblemCode::HostError,
                format!(
                    "host {}: listing containers failed: {}",
                    pool.host.id,
                    out.stderr_tail()
                ),
            ));
        }
        Ok(out
            .stdout_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let mut parts = l.splitn(5, '\t').map(str::to_owned);
                std::array::from_fn(|_| parts.next().unwrap_or_default())
            })
            .collect())
    }
}

fn parse_state(state: Option<&BackendState>) -> Option<ComposeState> {
    state.and_then(|s| serde_json::from_value(s.clone()).ok())
}

#[async_trait]
impl Extension for ComposeExtension {
    fn agent(&self, sandbox_id: &str, state: &BackendState) -> Option<super::AgentEndpoint> {
        let s = parse_state(Some(state))?;
        let pool = self.pool(&s.host)?;
        Some(super::AgentEndpoint::Served(Arc::new(
            access::ComposeAgent {
                pool,
                state: s,
                sandbox_id: sandbox_id.to_string(),
            },
        )))
    }

    fn has_agent(&self) -> bool {
        true
    }

    fn id(&self) -> &'static str {
        ID
    }

    async fn availability(&self) -> Availability {
        if self.hosts.is_empty() {
            return Availability {
                available: false,
                reason: Some("no placement hosts are configured (`[[hosts]]`)".into()),
            };
        }
        if self.hosts.iter().all(|p| p.known_down()) {
            return Availability {
                available: false,
                reason: Some("no configured host was reachable at the last attempt".into()),
            };
        }
        Availability {
            available: true,
            reason: None,
        }
    }

    /// Configured hosts, those that failed their last connection attempt last.
    fn inventory(&self) -> Option<&dyn crate::extensions::HostInventory> {
        Some(self)
    }

    fn hosts(&self) -> Vec<String> {
        let (up, down): (Vec<_>, Vec<_>) = self.hosts.iter().partition(|p| !p.known_down());
        up.into_iter()
            .chain(down)
            .map(|p| p.host.id.clone())
            .collect()
    }

    fn host_known_down(&self, id: &str) -> bool {
        self.pool(id).is_some_and(|p| p.known_down())
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %req.sandbox_id, host = %req.host))]
    async fn provision(&self, req: &ProvisionRequest) -> Result<BackendState, ExtError> {
        let pool = self.pool_or_err(&req.host)?;
        let internal = req.profile.network.mode != NetworkMode::Open;
        let env = SandboxEnv {
            env: &req.profile.setup.env,
            secrets: &req.secrets,
        };
        let allow = req
            .profile
            .compose
            .as_ref()
            .map(|c| c.allow.clone())
            .unwrap_or_default();
        if let Some(src) = &req.from_snapshot {
            return snapshot::fork(self, &pool, &req.sandbox_id, internal, src, env, allow).await;
        }
        let Some(repo) = req.inputs.get(REPO_INPUT) else {
            return Err(ExtError::new(
                ProblemCode::InvalidInput,
                format!("input `{REPO_INPUT}` is required by {ID}"),
            ));
        };
        let up = BringUp {
            sandbox_id: &req.sandbox_id,
            root: PathBuf::from(repo),
            internal,
            volumes: None,
            check_capacity: true,
            allow,
        };
        self.bring_up(&pool, up, env).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn wait_ready(
        &self,
        sandbox_id: &str,
        state: &BackendState,
        timeout: Duration,
    ) -> Result<ReadyInfo, ExtError> {
        let Some(s) = parse_state(Some(state)) else {
            return Err(ExtError::new(
                ProblemCode::Internal,
                "the sandbox's backend state is not a compose state",
            ));
        };
        let pool = self.pool_or_err(&s.host)?;
        let deadline = Instant::now() + timeout;
        loop {
            let containers = self.containers(&pool, &s.tooling, sandbox_id).await?;
            let mut waiting = Vec::new();
            for [name, st, status, service, _] in &containers {
                match st.as_str() {
                    "running" => {
                        if status.contains("health: starting") {
                            waiting.push(format!("{service} ({name}) is not healthy yet"));
                        } else if status.contains("unhealthy") {
                            waiting.push(format!("{service} ({name}) is unhealthy"));
                        }
                    }
                    "exited" | "dead" => {
                        return Err(ExtError::new(
                            ProblemCode::ServiceExited,
                            format!("service `{service}` ({name}) stopped: {status}"),
                        ))
                    }
                    _ => waiting.push(format!("{service} ({name}) is {st}")),
                }
            }
            for svc in &s.services {
                if !containers.iter().any(|c| &c[3] == svc) {
                    waiting.push(format!("{svc} has no container yet"));
                }
            }
            if waiting.is_empty() {
                let services: serde_json::Map<String, serde_json::Value> = containers
                    .iter()
                    .map(|[name, _, _, service, ports]| {
                        let ports: Vec<&str> = ports
                            .split(", ")
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .collect();
                        (service.clone(), json!({"container": name, "ports": ports}))
                    })
                    .collect();
                let reachability = json!({
                    "kind": "compose",
                    "host": pool.host.address,
                    "host_id": pool.host.id,
                    "port": pool.host.port,
                    "user": pool.host.user,
                    "workdir": s.dir,
                    "project": s.project,
                    "services": services,
                });
                return Ok(ReadyInfo {
                    reachability,
                    backend_state: state.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(ExtError::new(
                    ProblemCode::ReadyTimeout,
                    format!("not ready within {timeout:?}: {}", waiting.join("; ")),
                ));
            }
            // One `docker ps` over a pooled connection per poll.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn teardown(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError> {
        if let Some(s) = parse_state(state) {
            let pool = self.pool_or_err(&s.host)?;
            return self.teardown_on(&pool, sandbox_id, Some(&s)).await;
        }
        // Nothing recorded (a crash before the state was written): clear
        // the sandbox's label and folder on every host.
        let mut errors = Vec::new();
        for pool in &self.hosts {
            if let Err(e) = self.teardown_on(pool, sandbox_id, None).await {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ExtError::new(
                ProblemCode::TeardownFailed,
                errors.join("; "),
            ))
        }
    }

    fn can_snapshot(&self) -> bool {
        true
    }

    fn can_pause(&self) -> bool {
        true
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn pause(&self, sandbox_id: &str, state: Option<&BackendState>) -> Result<(), ExtError> {
        self.freeze(sandbox_id, state, true).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn resume(&self, sandbox_id: &str, state: Option<&BackendState>) -> Result<(), ExtError> {
        self.freeze(sandbox_id, state, false).await
    }

    async fn frozen(&self, sandbox_id: &str, state: Option<&BackendState>) -> Option<bool> {
        let s = parse_state(state)?;
        let pool = self.pool(&s.host)?;
        let rows = self.containers(&pool, &s.tooling, sandbox_id).await.ok()?;
        // All paused, or none: a mix (a step cut off) cannot be told.
        let states: Vec<&str> = rows.iter().map(|r| r[1].as_str()).collect();
        let paused = states.iter().filter(|s| **s == "paused").count();
        let running = states
            .iter()
            .filter(|s| matches!(**s, "running" | "restarting"))
            .count();
        match (paused, running) {
            (0, r) if r > 0 => Some(false),
            (p, 0) if p > 0 => Some(true),
            _ => None,
        }
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn snapshot(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        dest: &std::path::Path,
        max_content_bytes: u64,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<SnapshotArchive, ExtError> {
        let s = self.known_state(state)?;
        let pool = self.pool_or_err(&s.host)?;
        snapshot::capture(&pool, &s, sandbox_id, dest, max_content_bytes, cancel).await
    }

    #[tracing::instrument(skip_all, fields(sandbox_id = %sandbox_id))]
    async fn restore(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
        src: &SnapshotSource,
        env: SandboxEnv<'_>,
    ) -> Result<(), ExtError> {
        let s = self.known_state(state)?;
        let pool = self.pool_or_err(&s.host)?;
        snapshot::restore(self, &pool, &s, sandbox_id, src, env, s.internal).await
    }

    async fn probe(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<Liveness, ExtError> {
        let pools: Vec<Arc<HostPool>> = match parse_state(state) {
            Some(s) => vec![self.pool_or_err(&s.host)?],
            None => self.hosts.clone(),
        };
        for pool in pools {
            let t = self.tooling(&pool).await?;
            let cmd = format!(
                "{} ps -q --filter {}",
                t.engine,
                sh_quote(&format!("label={LABEL}={sandbox_id}"))
            );
            let out = pool.run(&cmd, ProblemCode::HostError, "probing").await?;
            if !out.stdout_text().trim().is_empty() {
                return Ok(Liveness::Alive);
            }
        }
        Ok(Liveness::Gone)
    }
}
