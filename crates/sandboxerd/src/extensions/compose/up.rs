//! Bringing a stack up on a host: pack and upload the workspace (with the
//! override file that labels everything and keeps networks internal), fill
//! named volumes from a snapshot, then `compose up -d`.
use super::*;

/// What [`ComposeExtension::bring_up`] puts on a host.
pub(crate) struct BringUp<'a> {
    pub sandbox_id: &'a str,
    /// The workspace on the daemon's machine (a repository, or a snapshot's
    /// `workdir/` extracted).
    pub root: PathBuf,
    /// Make the project's networks internal.
    pub internal: bool,
    /// A snapshot's `volumes/` extracted: each folder fills the project's
    /// named volume of that name before any service starts.
    pub volumes: Option<PathBuf>,
    /// Refuse with `host_full` at the host's `max_sandboxes`.
    pub check_capacity: bool,
    /// Host-reaching compose settings the profile allows (`compose.allow`).
    pub allow: Vec<ComposeAllow>,
}

/// `export K=V; ` for every variable, quoted for the shell.
fn exports(env: SandboxEnv<'_>) -> String {
    let mut out = String::new();
    for (k, v) in env.env {
        out.push_str(&format!("export {}={}; ", sh_quote(k), sh_quote(v)));
    }
    for (k, v) in env.secrets {
        out.push_str(&format!(
            "export {}={}; ",
            sh_quote(k),
            sh_quote(v.expose())
        ));
    }
    out
}

impl ComposeExtension {
    /// Upload a workspace to `<workdir>/<sandbox id>` and start its stack
    /// (filling named volumes first when a snapshot gives them).
    pub(crate) async fn bring_up(
        &self,
        pool: &HostPool,
        up: BringUp<'_>,
        env: SandboxEnv<'_>,
    ) -> Result<BackendState, ExtError> {
        let root = up.root.clone();
        let id = up.sandbox_id.to_owned();
        let workdir = pool.host.workdir.clone();
        let internal = up.internal;
        let allow = up.allow.clone();
        let (ws, tar) = tokio::task::spawn_blocking(move || {
            let ws = project::prepare(&root, &id, &workdir, internal, &allow)?;
            let tar = project::tar(&ws)?;
            Ok::<_, ExtError>((ws, tar))
        })
        .await
        .map_err(|e| {
            ExtError::new(
                ProblemCode::UploadFailed,
                format!("packing the workspace: {e}"),
            )
        })??;
        let t = self.tooling(pool).await?;
        if up.check_capacity
            && pool.host.max_sandboxes > 0
            && self.sandboxes_on(pool, &t).await? >= pool.host.max_sandboxes as usize
        {
            return Err(ExtError::new(
                ProblemCode::HostFull,
                format!(
                    "host {} already holds its `max_sandboxes` ({})",
                    pool.host.id, pool.host.max_sandboxes
                ),
            )
            .host_unusable());
        }
        let dir = Self::dir(&pool.host, up.sandbox_id);
        let qdir = sh_quote(&dir);
        let out = pool
            .exec(
                &format!("mkdir -p {qdir} && tar -x -C {qdir} -f -"),
                Some(&tar),
                None,
            )
            .await?;
        if !out.success() {
            return Err(ExtError::new(
                ProblemCode::UploadFailed,
                format!(
                    "host {}: unpacking into {dir} failed: {}",
                    pool.host.id,
                    out.stderr_tail()
                ),
            ));
        }
        let project = up.sandbox_id.to_lowercase();
        let env = exports(env);
        let compose = format!(
            "{} -p {} -f {} -f {OVERRIDE_FILE}",
            t.compose,
            sh_quote(&project),
            sh_quote(&ws.compose_file),
        );
        if let Some(volumes) = &up.volumes {
            let created = pool
                .exec(
                    &format!("cd {qdir} && {env}{compose} up --no-start"),
                    None,
                    None,
                )
                .await?;
            if !created.success() {
                return Err(ExtError::new(
                    ProblemCode::ComposeUpFailed,
                    format!(
                        "host {}: `{} up --no-start` failed (exit {:?}): {}",
                        pool.host.id,
                        t.compose,
                        created.status,
                        created.stderr_tail()
                    ),
                ));
            }
            snapshot::fill_volumes(pool, &t, up.sandbox_id, &project, volumes).await?;
        }
        let started = format!(
            "cd {qdir} && {env}echo $$ > {UP_PID_FILE} && exec {compose} up -d --remove-orphans"
        );
        let out = pool.exec(&started, None, None).await?;
        if !out.success() {
            return Err(ExtError::new(
                ProblemCode::ComposeUpFailed,
                format!(
                    "host {}: `{} up` failed (exit {:?}): {}",
                    pool.host.id,
                    t.compose,
                    out.status,
                    out.stderr_tail()
                ),
            ));
        }
        let state = ComposeState {
            host: pool.host.id.clone(),
            project,
            dir,
            compose_file: ws.compose_file,
            services: ws.services,
            tooling: t,
            internal: up.internal,
            allow: up.allow,
        };
        serde_json::to_value(&state)
            .map_err(|e| ExtError::new(ProblemCode::Internal, format!("backend state: {e}")))
    }
}
