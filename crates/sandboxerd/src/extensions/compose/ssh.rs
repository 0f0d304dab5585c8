//! SSH to placement hosts (russh): the host key is pinned, every step has a
//! deadline, and a few connections per host are kept and shared across
//! requests (each command is one exec channel on a pooled connection).
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::ChannelMsg;
use sandboxer_api::ProblemCode;

use crate::extensions::ExtError;
use crate::hosts::Host;

/// Connections kept per host.
const POOL_SIZE: usize = 4;
/// Channels one connection carries before another is opened (sshd's
/// `MaxSessions` defaults to 10).
const CHANNELS_PER_CONN: usize = 8;
/// Most bytes kept of a command's stdout or stderr.
const OUTPUT_CAP: usize = 4 << 20;

/// Why an SSH step failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    /// The server presented another key than the pinned one.
    #[error("host {host}: the server's key does not match the pinned `host_key`")]
    HostKeyMismatch { host: String },
    /// No TCP connection, or the SSH handshake failed.
    #[error("host {host}: cannot connect: {message}")]
    Unreachable { host: String, message: String },
    /// A step ran out of time.
    #[error("host {host}: {step} did not finish within {timeout:?}")]
    Timeout {
        host: String,
        step: &'static str,
        timeout: Duration,
    },
    /// The server refused our key.
    #[error("host {host}: authentication as `{user}` refused")]
    Auth { host: String, user: String },
    /// The pinned key or our identity file cannot be used.
    #[error("host {host}: {message}")]
    Config { host: String, message: String },
    /// The connection broke mid-command.
    #[error("host {host}: {message}")]
    Channel { host: String, message: String },
}

impl SshError {
    /// The stable failure code a sandbox gets.
    pub fn code(&self) -> ProblemCode {
        match self {
            SshError::HostKeyMismatch { .. } => ProblemCode::HostKeyMismatch,
            SshError::Unreachable { .. } => ProblemCode::HostUnreachable,
            SshError::Timeout { .. } => ProblemCode::HostTimeout,
            SshError::Auth { .. } => ProblemCode::HostAuthFailed,
            SshError::Config { .. } => ProblemCode::HostMisconfigured,
            SshError::Channel { .. } => ProblemCode::HostConnectionLost,
        }
    }
}

/// The step name of a connection attempt that ran out of time.
const CONNECT_STEP: &str = "connecting over SSH";

impl From<SshError> for ExtError {
    fn from(e: SshError) -> Self {
        // No session was ever opened: nothing can have been made on the host.
        let before_any_command = match &e {
            SshError::HostKeyMismatch { .. }
            | SshError::Unreachable { .. }
            | SshError::Auth { .. }
            | SshError::Config { .. } => true,
            SshError::Timeout { step, .. } => *step == CONNECT_STEP,
            SshError::Channel { .. } => false,
        };
        let err = ExtError::new(e.code(), e.to_string());
        if before_any_command {
            err.host_unusable()
        } else {
            err
        }
    }
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status (`None`: killed by a signal or the channel closed first).
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether the command exited 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// stdout as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The last lines of stderr, for failure messages.
    pub fn stderr_tail(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        let start = text.len().saturating_sub(600);
        let start = (start..text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }
}

/// What a command streamed to a file did.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// Exit status (`None`: cut off, killed, or the channel closed first).
    pub status: Option<u32>,
    /// Bytes of stdout received.
    pub bytes: u64,
    /// Stdout went past the limit and the command was cut off.
    pub over_limit: bool,
    pub stderr: Vec<u8>,
}

impl Streamed {
    /// The last lines of stderr.
    pub fn stderr_tail(&self) -> String {
        Output {
            status: self.status,
            stdout: Vec::new(),
            stderr: self.stderr.clone(),
        }
        .stderr_tail()
    }
}

/// Checks the server key against the pinned one.
struct Pinned {
    expected: PublicKey,
    mismatch: Arc<AtomicBool>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.expected.key_data()
            }
            // A certificate is not the pinned key itself.
            PublicKeyOrCertificate::Certificate(_) => false,
        };
        if !ok {
            self.mismatch.store(true, Ordering::SeqCst);
        }
        Ok(ok)
    }
}

struct Conn {
    handle: client::Handle<Pinned>,
    in_flight: AtomicUsize,
}

/// Releases a connection's channel slot when a command ends.
pub struct Slot(Arc<Conn>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reachability of a host as last seen.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// `Some(true)` after a successful connect, `Some(false)` after a failed one.
    pub reachable: Option<bool>,
    /// When that was (Unix ms).
    pub at_ms: Option<i64>,
    /// The last connection error.
    pub error: Option<String>,
}

/// The connections to one host.
pub struct HostPool {
    /// The host as configured.
    pub host: Host,
    conns: tokio::sync::Mutex<Vec<Arc<Conn>>>,
    seen: Mutex<Seen>,
}

impl HostPool {
    /// A pool for `host`; nothing connects until the first command.
    pub fn new(host: Host) -> Self {
        Self {
            host,
            conns: tokio::sync::Mutex::new(Vec::new()),
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Reachability as last seen.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record(&self, result: Result<(), &SshError>) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.at_ms = Some(crate::clock::now_ms());
        match result {
            Ok(()) => {
                seen.reachable = Some(true);
                seen.error = None;
            }
            Err(e) => {
                seen.reachable = Some(false);
                seen.error = Some(e.to_string());
            }
        }
    }

    /// Whether the last connection attempt failed.
    pub fn known_down(&self) -> bool {
        self.seen().reachable == Some(false)
    }

    /// A pooled connection with a free channel slot, connecting if needed.
    async fn slot(&self) -> Result<Slot, SshError> {
        let mut conns = self.conns.lock().await;
        conns.retain(|c| !c.handle.is_closed());
        let best = conns
            .iter()
            .min_by_key(|c| c.in_flight.load(Ordering::SeqCst))
            .cloned();
        let conn = match best {
            Some(c)
                if c.in_flight.load(Ordering::SeqCst) < CHANNELS_PER_CONN
                    || conns.len() >= POOL_SIZE =>
            {
                c
            }
            _ => {
                let result = self.connect().await;
                self.record(result.as_ref().map(|_| ()));
                let conn = Arc::new(Conn {
                    handle: result?,
                    in_flight: AtomicUsize::new(0),
                });
                conns.push(conn.clone());
                conn
            }
        };
        conn.in_flight.fetch_add(1, Ordering::SeqCst);
        Ok(Slot(conn))
    }

    async fn connect(&self) -> Result<client::Handle<Pinned>, SshError> {
        let host = &self.host;
        let expected = PublicKey::from_openssh(&host.host_key).map_err(|e| SshError::Config {
            host: host.id.clone(),
            message: format!("`host_key` is not a usable public key: {e}"),
        })?;
        let key = load_identity(host).await?;
        let mismatch = Arc::new(AtomicBool::new(false));
        let handler = Pinned {
            expected,
            mismatch: mismatch.clone(),
        };
        let config = Arc::new(client::Config {
            // Dead peers are noticed; idle pooled connections stay open.
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        });
        let addr = (host.address.clone(), host.port);
        let user = host.user.clone();
        let attempt = async move {
            let mut handle = client::connect(config, addr, handler).await?;
            let hash = handle.best_supported_rsa_hash().await?.flatten();
            let auth = handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await?;
            Ok::<_, russh::Error>((handle, auth.success()))
        };
        match tokio::time::timeout(host.connect_timeout, attempt).await {
            Err(_) => Err(SshError::Timeout {
                host: host.id.clone(),
                step: CONNECT_STEP,
                timeout: host.connect_timeout,
            }),
            Ok(Err(_)) if mismatch.load(Ordering::SeqCst) => Err(SshError::HostKeyMismatch {
                host: host.id.clone(),
            }),
            Ok(Err(e)) => Err(SshError::Unreachable {
                host: host.id.clone(),
                message: e.to_string(),
            }),
            Ok(Ok((_, false))) => Err(SshError::Auth {
                host: host.id.clone(),
                user: host.user.clone(),
            }),
            Ok(Ok((handle, true))) => Ok(handle),
        }
    }

    /// Run `command` (a shell line) with `stdin` fed to it, at most
    /// `timeout` (default: the host's `command_timeout`) including the
    /// wait for a connection.
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Result<Output, SshError> {
        let timeout = timeout.unwrap_or(self.host.command_timeout);
        let host = self.host.id.clone();
        let run = async {
            let slot = self.slot().await?;
            let lost = |e: russh::Error| SshError::Channel {
                host: host.clone(),
                message: format!("the connection broke: {e}"),
            };
            let mut channel = slot.0.handle.channel_open_session().await.map_err(lost)?;
            channel.exec(true, command).await.map_err(lost)?;
            if let Some(data) = stdin {
                channel.data(data).await.map_err(lost)?;
            }
            channel.eof().await.map_err(lost)?;
            let mut out = Output {
                status: None,
                stdout: Vec::new(),
                stderr: Vec::new(),
            };
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } if out.stdout.len() < OUTPUT_CAP => {
                        out.stdout.extend_from_slice(&data)
                    }
                    ChannelMsg::ExtendedData { data, .. } if out.stderr.len() < OUTPUT_CAP => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    _ => {}
                }
            }
            drop(slot);
            Ok(out)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout {
                host,
                step: "a remote command",
                timeout,
            }),
        }
    }

    /// Run `command` and write its stdout to the new file `dest`, at most
    /// `limit` bytes (more: [`Streamed::over_limit`], the command is cut
    /// off), within `timeout`. Answers its exit status and stderr's tail.
    pub async fn exec_to_file(
        &self,
        command: &str,
        dest: &std::path::Path,
        limit: u64,
        timeout: Duration,
    ) -> Result<Streamed, SshError> {
        use tokio::io::AsyncWriteExt;
        let host = self.host.id.clone();
        let run = async {
            let lost = |message: String| SshError::Channel {
                host: host.clone(),
                message,
            };
            let mut file = tokio::fs::File::create_new(dest)
                .await
                .map_err(|e| lost(format!("creating {}: {e}", dest.display())))?;
            let slot = self.slot().await?;
            let broke = |e: russh::Error| lost(format!("the connection broke: {e}"));
            let mut channel = slot.0.handle.channel_open_session().await.map_err(broke)?;
            channel.exec(true, command).await.map_err(broke)?;
            channel.eof().await.map_err(broke)?;
            let mut out = Streamed {
                status: None,
                bytes: 0,
                over_limit: false,
                stderr: Vec::new(),
            };
            while let Some(msg) = channel.wait().await {
                match msg {
                    ChannelMsg::Data { data } => {
                        out.bytes += data.len() as u64;
                        if out.bytes > limit {
                            out.over_limit = true;
                            let _ = channel.close().await;
                            break;
                        }
                        file.write_all(&data)
                            .await
                            .map_err(|e| lost(format!("writing {}: {e}", dest.display())))?;
                    }
                    ChannelMsg::ExtendedData { data, .. } if out.stderr.len() < OUTPUT_CAP => {
                        out.stderr.extend_from_slice(&data)
                    }
                    ChannelMsg::ExitStatus { exit_status } => out.status = Some(exit_status),
                    _ => {}
                }
            }
            file.flush()
                .await
                .map_err(|e| lost(format!("writing {}: {e}", dest.display())))?;
            drop(slot);
            Ok(out)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout {
                host,
                step: "a transfer",
                timeout,
            }),
        }
    }

    /// Starts `command` on an exec channel and hands the channel over (with
    /// the slot it holds), for output read as it comes and input written as
    /// it arrives. Connecting and starting take at most `timeout`.
    pub async fn open_exec(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<(Slot, russh::Channel<client::Msg>), SshError> {
        let host = self.host.id.clone();
        let run = async {
            let slot = self.slot().await?;
            let lost = |e: russh::Error| SshError::Channel {
                host: host.clone(),
                message: format!("the connection broke: {e}"),
            };
            let channel = slot.0.handle.channel_open_session().await.map_err(lost)?;
            channel.exec(true, command).await.map_err(lost)?;
            Ok((slot, channel))
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(SshError::Timeout {
                host,
                step: "starting a remote command",
                timeout,
            }),
        }
    }

    /// Run `command` and fail with `code` unless it exits 0.
    pub async fn run(
        &self,
        command: &str,
        code: ProblemCode,
        what: &str,
    ) -> Result<Output, ExtError> {
        let out = self.exec(command, None, None).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(ExtError::new(
                code,
                format!(
                    "host {}: {what} failed (exit {:?}): {}",
                    self.host.id,
                    out.status,
                    out.stderr_tail()
                ),
            ))
        }
    }
}

async fn load_identity(host: &Host) -> Result<PrivateKey, SshError> {
    let path = host.identity_file.clone();
    let loaded = tokio::task::spawn_blocking(move || russh::keys::load_secret_key(&path, None))
        .await
        .map_err(|e| SshError::Config {
            host: host.id.clone(),
            message: format!("loading `identity_file`: {e}"),
        })?;
    loaded.map_err(|e| SshError::Config {
        host: host.id.clone(),
        message: format!(
            "`identity_file` {}: cannot be used: {e}",
            host.identity_file.display()
        ),
    })
}

/// Quote `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
