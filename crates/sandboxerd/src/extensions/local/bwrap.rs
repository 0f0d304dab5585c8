//! The bubblewrap command line of a sandbox: what it sees of the host, its
//! namespaces, its seccomp programs and workspace as descriptors, who it
//! runs as; and the `enter` argv that joins it.

use super::*;

/// Directories bound read-only into every sandbox (when they exist).
pub(super) const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc", "/opt",
];

/// Files of the host's `/etc` replaced by an empty file in every sandbox.
pub(super) const HIDDEN_FILES: &[&str] = &[
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/shadow-",
    "/etc/gshadow-",
    "/etc/docker/key.json",
];

/// Directories of the host's `/etc` replaced by an empty tmpfs.
pub(super) const HIDDEN_DIRS: &[&str] = &[
    "/etc/ssl/private",
    "/etc/sandboxer",
    "/etc/credstore",
    "/etc/credstore.encrypted",
];

/// [`HIDDEN_FILES`] that exist, and the SSH host private keys.
pub(super) fn hidden_files() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = HIDDEN_FILES
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    if let Ok(entries) = std::fs::read_dir("/etc/ssh") {
        let mut keys: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("ssh_host_") && name.ends_with("_key")
            })
            .map(|e| e.path())
            .collect();
        keys.sort();
        out.extend(keys);
    }
    out
}

/// Fixed descriptor numbers in bubblewrap's process.
pub(super) const WORKSPACE_FD: i32 = 10;
pub(super) const SECCOMP_FD: i32 = 11;
/// The agent's listening socket (after the two seccomp programs).
pub(super) const AGENT_FD: i32 = 14;

impl LocalExtension {
    /// The bubblewrap arguments (everything after `bwrap`) that start the
    /// sandbox of `req`; the workspace and the seccomp programs come as the
    /// descriptors [`Self::bwrap_command`] maps. Public so the benchmark can
    /// time bubblewrap alone with exactly the daemon's flags.
    pub fn bwrap_args(&self, req: &ProvisionRequest) -> Vec<String> {
        let mut args: Vec<String> = [
            "--info-fd",
            "1",
            // Its own user namespace: uid and gid 0 inside are an
            // unprivileged id on the host (the daemon's own, or
            // `[local] sandbox_uid` under a root daemon), so no host file
            // is the sandbox's unless that id owns it, and no capability it
            // holds inside counts outside. No second, nested namespace
            // (as `--uid` other than 0 would make), so `enter` can join it.
            "--unshare-user",
            "--uid",
            "0",
            "--gid",
            "0",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--new-session",
            // No capabilities, even inside its own namespace: it cannot
            // remount, change file flags or load filters.
            "--cap-drop",
            "ALL",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let short = req.sandbox_id.to_lowercase();
        let hostname = format!("sbx-{}", &short[short.len().saturating_sub(10)..]);
        args.extend(["--hostname".into(), hostname]);
        for dir in SYSTEM_DIRS {
            let path = Path::new(dir);
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        args.extend([
                            "--symlink".into(),
                            target.to_string_lossy().into_owned(),
                            dir.to_string(),
                        ]);
                    }
                }
                Ok(meta) if meta.is_dir() => {
                    args.extend(["--ro-bind".into(), dir.to_string(), dir.to_string()]);
                }
                _ => {}
            }
        }
        args.extend(
            [
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--tmpfs",
                "/run",
                "--dir",
                "/run/sandboxer",
                // Kernel settings stay read-only whatever their modes.
                "--ro-bind",
                "/proc/sys",
                "/proc/sys",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        // Password hashes and private keys are no business of a sandbox.
        // The user namespace already makes root-only files unreadable;
        // these are hidden besides, whatever their modes on this host.
        for secret in hidden_files() {
            args.extend([
                "--ro-bind".into(),
                "/dev/null".into(),
                secret.to_string_lossy().into_owned(),
            ]);
        }
        for secret in HIDDEN_DIRS {
            if Path::new(secret).is_dir() {
                args.extend(["--tmpfs".into(), secret.to_string()]);
            }
        }
        if let Ok(ps) = &self.seccomp {
            for i in 0..ps.len() {
                args.extend([
                    "--add-seccomp-fd".into(),
                    (SECCOMP_FD + i as i32).to_string(),
                ]);
            }
        }
        args.extend([
            "--bind-fd".into(),
            WORKSPACE_FD.to_string(),
            "/workspace".into(),
            "--chdir".into(),
            "/workspace".into(),
        ]);
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert(
            "PATH".into(),
            "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into(),
        );
        env.insert("HOME".into(), "/workspace".into());
        env.insert("SANDBOX_ID".into(), req.sandbox_id.clone());
        let egress =
            (req.profile.network.mode == NetworkMode::Egress).then(|| self.egress.proxy_port());
        if let Some(port) = egress {
            // Everything that honours the usual variables (curl, pip, npm,
            // git, Python, Go, ...) goes through the agent's relay.
            let proxy = format!("http://127.0.0.1:{port}");
            for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(k.into(), proxy.clone());
            }
            for k in ["NO_PROXY", "no_proxy"] {
                env.insert(k.into(), "localhost,127.0.0.1,::1".into());
            }
            args.extend([
                "--ro-bind".into(),
                self.dir_of(&req.sandbox_id)
                    .join(EGRESS_DIR)
                    .to_string_lossy()
                    .into_owned(),
                agent::EGRESS_DIR_IN_SANDBOX.into(),
            ]);
        }
        env.extend(req.profile.setup.env.clone());
        for (k, v) in env {
            args.extend(["--setenv".into(), k, v]);
        }
        if let Ok(agent) = &self.agent {
            args.extend([
                "--ro-bind".into(),
                agent.to_string_lossy().into_owned(),
                agent::AGENT_IN_SANDBOX.into(),
            ]);
        }
        args.push("--".into());
        args.extend(agent::command(AGENT_FD, self.agent_limits, egress));
        args
    }

    /// bubblewrap for `req`, ready to spawn: its arguments, the workspace
    /// under `dir` and the seccomp programs as descriptors, the sandbox's
    /// host ids, a clean environment holding only the secrets (so they are
    /// never on a command line), `info.json` on stdout and `bwrap.log` on
    /// stderr, in a process group of its own.
    pub fn bwrap_command(
        &self,
        req: &ProvisionRequest,
        dir: &Path,
        cgroup: Option<&SandboxCgroup>,
    ) -> Result<std::process::Command, ExtError> {
        let Some(bwrap) = self.bwrap.clone() else {
            return Err(ExtError::new(
                ProblemCode::BackendUnavailable,
                "bubblewrap (`bwrap`) is not installed; install it with `apt-get install bubblewrap`",
            ));
        };
        let programs = self.seccomp_for(&req.profile.security.allow)?;
        if let Err(e) = &self.agent {
            return Err(ExtError::new(ProblemCode::BackendUnavailable, e.clone()));
        }
        let fail = |what: String| {
            move |e: std::io::Error| {
                ExtError::new(ProblemCode::ProvisionFailed, format!("{what}: {e}"))
            }
        };
        let workspace = dir.join("workspace");
        // By descriptor, so what is bound is the directory opened here.
        // (bubblewrap 0.8 still resolves the descriptor's path as the
        // sandbox's user, hence the 0710 directories of `prepare_dir`.)
        let ws = std::fs::File::open(&workspace)
            .map_err(fail(format!("opening {}", workspace.display())))?;
        let mut mappings = vec![FdMapping {
            parent_fd: OwnedFd::from(ws),
            child_fd: WORKSPACE_FD,
        }];
        for (i, bytes) in programs.iter().enumerate() {
            let (reader, mut writer) =
                std::io::pipe().map_err(fail("making a pipe for the seccomp filter".into()))?;
            // A program is a few KiB: it fits the pipe's buffer whole.
            std::io::Write::write_all(&mut writer, bytes)
                .map_err(fail("writing the seccomp filter".into()))?;
            drop(writer);
            mappings.push(FdMapping {
                parent_fd: OwnedFd::from(reader),
                child_fd: SECCOMP_FD + i as i32,
            });
        }
        let listener = agent::listen(dir).map_err(fail(format!(
            "making the agent's socket in {}",
            dir.display()
        )))?;
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(listener),
            child_fd: AGENT_FD,
        });
        let info = std::fs::File::create(dir.join("info.json"))
            .map_err(fail("creating info.json".into()))?;
        let log = std::fs::File::create(dir.join("bwrap.log"))
            .map_err(fail("creating bwrap.log".into()))?;
        let mut cmd = std::process::Command::new(&bwrap);
        cmd.args(self.bwrap_args(req))
            // bubblewrap passes its own environment on: only the secrets,
            // which thus never appear on a command line (`ps` shows argv to
            // every user; environ only to the same user).
            .env_clear()
            .envs(req.secrets.iter().map(|(k, v)| (k, v.expose())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(info))
            .stderr(Stdio::from(log))
            // Its own process group: a Ctrl-C to the daemon's terminal does not reach it.
            .process_group(0);
        // Between fork and exec: into the sandbox's cgroup (so bubblewrap
        // and everything it starts are limited from their first
        // instruction), then, under a root daemon, become the sandbox's
        // host user (supplementary groups dropped), so the sandbox's user
        // namespace maps root inside to that user. In this order: joining
        // a cgroup needs the daemon's rights over it.
        let join = cgroup.map(SandboxCgroup::procs_files).unwrap_or_default();
        let user = self.ids.switch.then_some((self.ids.uid, self.ids.gid));
        sandboxer_sys::join_cgroups_then_become(&mut cmd, join, user);
        cmd.fd_mappings(mappings).map_err(|e| {
            ExtError::new(
                ProblemCode::ProvisionFailed,
                format!("descriptors for bubblewrap: {e}"),
            )
        })?;
        Ok(cmd)
    }

    /// The argv prefix that runs a command inside the sandbox whose init is
    /// `pid`, with the sandbox's privileges: `sandboxerd enter`.
    pub(super) fn enter_prefix(&self, pid: i32, start: u64, allow: &[String]) -> Vec<String> {
        let mut argv = vec![
            self.exe.to_string_lossy().into_owned(),
            "enter".into(),
            "--pid".into(),
            pid.to_string(),
            "--start".into(),
            start.to_string(),
        ];
        if !allow.is_empty() {
            argv.extend(["--seccomp-allow".into(), allow.join(",")]);
        }
        argv.push("--".into());
        argv
    }
}

pub(super) fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
