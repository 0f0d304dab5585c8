//! Placement hosts: the `[[hosts]]` entries of the configuration, checked.
//! A host is a machine reached over SSH (its key pinned) that runs a
//! container engine for `ext.compose-ssh`.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `[[hosts]]` entry as written in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Stable id, named by profiles' `placement` and requests' `placement.host`.
    pub id: String,
    /// Hostname or IP address of the SSH server.
    pub address: String,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The SSH user sandboxes are made as (needs the container engine).
    pub user: String,
    /// Private key the daemon authenticates with (OpenSSH format).
    pub identity_file: PathBuf,
    /// The host's public key, pinned (`ssh-ed25519 AAAA…`); another key is refused.
    pub host_key: String,
    /// `docker` | `podman` | `auto` (detected on first use).
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Folder on the host under which each sandbox gets `<workdir>/<sandbox id>`.
    pub workdir: String,
    /// Free-form labels shown by `GET /v1/hosts`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Most live sandboxes placed on this host at once (0: no cap).
    #[serde(default, alias = "capacity")]
    pub max_sandboxes: u32,
    /// How long connecting and authenticating may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: String,
    /// How long one remote command (an upload, `compose up`) may take.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: String,
}

fn default_port() -> u16 {
    22
}

fn default_engine() -> String {
    "auto".to_owned()
}

fn default_connect_timeout() -> String {
    "10s".to_owned()
}

fn default_command_timeout() -> String {
    "5m".to_owned()
}

/// The container engine a host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Docker,
    Podman,
    /// Detected on first use (docker first, then podman).
    Auto,
}

impl Engine {
    /// The name as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
            Engine::Auto => "auto",
        }
    }
}

/// A host, checked: durations parsed, engine known, key pinned.
#[derive(Debug, Clone)]
pub struct Host {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    /// The pinned host key as configured (`<algorithm> <base64> [comment]`).
    pub host_key: String,
    pub engine: Engine,
    pub workdir: String,
    pub labels: BTreeMap<String, String>,
    /// 0: no cap.
    pub max_sandboxes: u32,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
}

impl HostConfig {
    /// Check the entry at index `i`; errors name the key.
    pub fn check(&self, i: usize) -> anyhow::Result<Host> {
        let key = |field: &str| format!("config `hosts[{i}].{field}`");
        let valid_id = !self.id.is_empty()
            && self.id.len() <= 64
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_id {
            anyhow::bail!(
                "{}: `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
                key("id"),
                self.id
            );
        }
        if self.address.trim().is_empty() {
            anyhow::bail!("{}: must not be empty", key("address"));
        }
        if self.port == 0 {
            anyhow::bail!("{}: must be 1 to 65535", key("port"));
        }
        if self.user.is_empty() {
            anyhow::bail!("{}: must not be empty", key("user"));
        }
        let Some(host_key) = normalize_host_key(&self.host_key) else {
            anyhow::bail!(
                "{}: must be an OpenSSH public key line like `ssh-ed25519 AAAA…` (or `ssh-keyscan` output)",
                key("host_key")
            );
        };
        let engine = match self.engine.as_str() {
            "docker" => Engine::Docker,
            "podman" => Engine::Podman,
            "auto" => Engine::Auto,
            other => anyhow::bail!("{}: `{other}` is not docker, podman or auto", key("engine")),
        };
        if !self.workdir.starts_with('/') || self.workdir.len() < 2 {
            anyhow::bail!(
                "{}: `{}` must be an absolute path other than `/`",
                key("workdir"),
                self.workdir
            );
        }
        if self.workdir.contains(['\'', '\n', '\0']) {
            anyhow::bail!("{}: must not contain quotes or newlines", key("workdir"));
        }
        let dur = |field: &str, v: &str| -> anyhow::Result<Duration> {
            let d = humantime::parse_duration(v)
                .map_err(|e| anyhow::anyhow!("{}: `{v}` is not a duration ({e})", key(field)))?;
            if d.is_zero() {
                anyhow::bail!("{}: must be more than zero", key(field));
            }
            Ok(d)
        };
        Ok(Host {
            id: self.id.clone(),
            address: self.address.trim().to_owned(),
            port: self.port,
            user: self.user.clone(),
            identity_file: self.identity_file.clone(),
            host_key,
            engine,
            workdir: self.workdir.trim_end_matches('/').to_owned(),
            labels: self.labels.clone(),
            max_sandboxes: self.max_sandboxes,
            connect_timeout: dur("connect_timeout", &self.connect_timeout)?,
            command_timeout: dur("command_timeout", &self.command_timeout)?,
        })
    }
}

/// Check every entry; ids must be unique.
pub fn check_all(hosts: &[HostConfig]) -> anyhow::Result<Vec<Host>> {
    let mut out: Vec<Host> = Vec::with_capacity(hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        let host = h.check(i)?;
        if host.id == "local" {
            anyhow::bail!(
                "config `hosts[{i}].id`: `local` is this machine (ext.local, ext.docker); name the placement host otherwise"
            );
        }
        if out.iter().any(|o| o.id == host.id) {
            anyhow::bail!("config `hosts[{i}].id`: `{}` is defined twice", host.id);
        }
        out.push(host);
    }
    Ok(out)
}

/// The `<algorithm> <base64>` of a host key given as a public key line
/// (`ssh-ed25519 AAAA… comment`) or as `ssh-keyscan` prints it (`host
/// ssh-ed25519 AAAA…`, `[host]:2222 …`, `# comment` lines, one line per
/// key type): the ed25519 key when there is one, else the first.
pub fn normalize_host_key(text: &str) -> Option<String> {
    let keys: Vec<(String, String)> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let alg = parts.by_ref().find(|p| {
                p.starts_with("ssh-") || p.starts_with("ecdsa-") || p.starts_with("sk-")
            })?;
            let b64 = parts.next()?;
            Some((alg.to_owned(), b64.to_owned()))
        })
        .collect();
    let (alg, b64) = keys
        .iter()
        .find(|(alg, _)| alg == "ssh-ed25519")
        .or_else(|| keys.first())?;
    Some(format!("{alg} {b64}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_are_taken_as_ssh_keyscan_prints_them() {
        let scan = "# sandboxer01:22 SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\n\
                    sandboxer01 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC\n\
                    # sandboxer01:22 SSH-2.0-OpenSSH_9.2p1\n\
                    sandboxer01 ecdsa-sha2-nistp256 AAAAE2VjZHNh\n\
                    sandboxer01 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx\n";
        assert_eq!(
            normalize_host_key(scan).as_deref(),
            Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx")
        );
        assert_eq!(
            normalize_host_key("[10.0.0.5]:2222 ecdsa-sha2-nistp256 AAAAE2V").as_deref(),
            Some("ecdsa-sha2-nistp256 AAAAE2V")
        );
        assert_eq!(
            normalize_host_key("ssh-ed25519 AAAAC3Nz root@box").as_deref(),
            Some("ssh-ed25519 AAAAC3Nz")
        );
        for bad in ["", "# only a comment", "AAAA", "host AAAA"] {
            assert_eq!(normalize_host_key(bad), None, "{bad}");
        }
        let mut h = good();
        h.host_key = scan.into();
        assert_eq!(
            h.check(0).expect("keyscan output is accepted").host_key,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEx"
        );
    }

    fn good() -> HostConfig {
        HostConfig {
            id: "coulombcore".into(),
            address: "127.0.0.1".into(),
            port: 22,
            user: "sandboxer".into(),
            identity_file: "/etc/sandboxer/id_ed25519".into(),
            host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample".into(),
            engine: "docker".into(),
            workdir: "/var/lib/sandboxer/workspaces/".into(),
            labels: BTreeMap::new(),
            max_sandboxes: 0,
            connect_timeout: "10s".into(),
            command_timeout: "5m".into(),
        }
    }

    #[test]
    fn hosts_are_checked_and_errors_name_the_key() {
        let h = good().check(0).expect("valid");
        assert_eq!(h.workdir, "/var/lib/sandboxer/workspaces");
        assert_eq!(h.engine, Engine::Docker);
        type Change = fn(&mut HostConfig);
        let cases: [(Change, &str); 6] = [
            (|h| h.id = "a b".into(), "hosts[0].id"),
            (|h| h.host_key = "AAAA".into(), "hosts[0].host_key"),
            (|h| h.engine = "lxc".into(), "hosts[0].engine"),
            (|h| h.workdir = "relative".into(), "hosts[0].workdir"),
            (|h| h.workdir = "/".into(), "hosts[0].workdir"),
            (
                |h| h.connect_timeout = "0s".into(),
                "hosts[0].connect_timeout",
            ),
        ];
        for (change, key) in cases {
            let mut c = good();
            change(&mut c);
            let err = c.check(0).expect_err(key).to_string();
            assert!(err.contains(key), "{err}");
        }
        let err = check_all(&[good(), good()]).expect_err("twice").to_string();
        assert!(err.contains("defined twice"), "{err}");
    }
}
