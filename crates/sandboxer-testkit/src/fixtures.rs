//! Fixtures: the checkout's own files, daemon settings, requests and rows.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxer_api::{Consumer, CreateSandbox};
use sandboxerd::config::Settings;
use sandboxerd::store::{new_id, now_ms, NewSandbox};

/// The shipped profile every test and benchmark creates from.
pub const LOCAL_SHELL: &str = "profile.local-shell";

/// The root of this checkout (`profiles/`, `extensions/`, `tests/fixtures/`
/// live there).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The text of the checkout's file `rel` (`"profiles/local-shell.yaml"`).
pub fn repo_file(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Settings for an in-process daemon whose data lives in `data_dir`, on the
/// checkout's catalog, with short timeouts and a 200 ms reaper.
pub fn settings(data_dir: &Path) -> Settings {
    let root = repo_root();
    let mut s = sandboxerd::config::Config::default()
        .settings()
        .expect("default settings");
    s.listen = "127.0.0.1:0".parse().expect("addr");
    s.data_dir = data_dir.to_owned();
    s.profiles_dir = root.join("profiles");
    s.extensions_dir = root.join("extensions");
    s.provision_timeout = Duration::from_secs(30);
    s.shutdown_grace = Duration::from_secs(5);
    s.reaper_interval = Duration::from_millis(200);
    // An in-process daemon's executable is the test binary (in
    // `target/<profile>/deps/`): its agent is the one cargo built beside
    // `sandboxerd`, one level up.
    s.access.agent = agent_beside_current_exe();
    s
}

/// `sandboxer-agent` next to the running executable or one level up.
pub fn agent_beside_current_exe() -> Option<std::path::PathBuf> {
    let me = std::env::current_exe().ok()?;
    let dir = me.parent()?;
    [dir.join("sandboxer-agent"), dir.join("../sandboxer-agent")]
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}

/// A create request of [`LOCAL_SHELL`] with every other field defaulted.
pub fn local_shell() -> CreateSandbox {
    CreateSandbox {
        profile: LOCAL_SHELL.into(),
        ..CreateSandbox::default()
    }
}

/// A sandbox row of [`LOCAL_SHELL`] on `ext.local` for `project` (actor
/// `agt:test`), expiring in `ttl_ms` and at most in `max_ms`, to insert
/// straight into the store (no backend) with `create_sandbox`.
pub fn sandbox_row(project: &str, ttl_ms: i64, max_ms: i64) -> NewSandbox {
    let now = now_ms();
    NewSandbox {
        placement_host: None,
        name: None,
        reuse_by_name: false,
        id: new_id("sbx"),
        profile: LOCAL_SHELL.into(),
        profile_version: 1,
        extension: "ext.local".into(),
        host: "local".into(),
        consumer: Consumer {
            actor_type: "agt".into(),
            actor: "test".into(),
            project: project.into(),
        },
        inputs: BTreeMap::new(),
        labels: BTreeMap::new(),
        now,
        expires_at: now + ttl_ms,
        max_expires_at: now + max_ms,
        estimate_credits: 0,
    }
}

/// A `[[tokens]]` block of the daemon's TOML config for `token` (stored as
/// its SHA-256), held by `agt:<actor>` of `project` with `role`
/// (`consumer` or `operator`).
pub fn token_block(token: &str, actor: &str, project: &str, role: &str) -> String {
    format!(
        "[[tokens]]\ntoken_sha256 = \"{}\"\nactor_type = \"agt\"\nactor = \"{actor}\"\nproject = \"{project}\"\nrole = \"{role}\"\n\n",
        sandboxctl::token::token_sha256(token)
    )
}
