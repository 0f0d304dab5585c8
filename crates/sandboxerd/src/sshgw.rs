//! The SSH gateway (`[ssh_gateway] listen`): SSH into a sandbox with a key
//! registered for it (user = the sandbox id). A shell with a terminal,
//! exec, SFTP and `direct-tcpip` forwarding; everything runs inside the
//! sandbox through its agent, with the sandbox's privileges (SFTP is the
//! system's `sftp-server` run inside the sandbox, so every path resolves in
//! the sandbox's own view). Every session is audited and counts as
//! activity.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{
    Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Server as _, Session, VerifiedPublicKey,
};
use russh::{Channel, ChannelId, ChannelOpenFailure, Sig};
use sandboxer_agent::client;
use sandboxer_agent::proto::{self, kind, Exec, PtySize, Request};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lifecycle::access::{self, Target};
use crate::store::NewAudit;
use crate::AppState;

/// An interactive session has no timeout of its own (the sandbox's TTL ends it).
const SESSION_MS: u64 = 30 * 24 * 3600 * 1000;
/// Environment variables a client may set per channel.
const MAX_ENV: usize = 64;

/// The gateway's host key: `<data_dir>/ssh_gateway/host_ed25519_key`,
/// made on first start (0600) and kept, so clients can pin it.
pub fn host_key(data_dir: &Path) -> anyhow::Result<PrivateKey> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = data_dir.join("ssh_gateway");
    crate::extensions::fsutil::private_dir(&dir)?;
    let path = dir.join("host_ed25519_key");
    if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        return PrivateKey::from_openssh(&text)
            .map_err(|e| anyhow::anyhow!("SSH gateway host key {}: {e}", path.display()));
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut seed)?;
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    let key = PrivateKey::from(pair);
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding the SSH gateway host key: {e}"))?;
    let tmp = dir.join(".host_ed25519_key.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(key)
}

/// `reachability.ssh` of a sandbox: where and as whom to connect, and the
/// host key to expect.
pub fn reachability(host: &str, port: u16, sandbox_id: &str, key: &PublicKey) -> serde_json::Value {
    serde_json::json!({
        "host": host,
        "port": port,
        "user": sandbox_id,
        "host_key": key.to_openssh().unwrap_or_default(),
        "host_key_fingerprint": key.fingerprint(HashAlg::Sha256).to_string(),
    })
}

/// The gateway: its socket (bound when the daemon starts, so a port 0
/// is known at once), its host key, what it tells clients.
pub struct Gateway {
    listener: std::sync::Mutex<Option<TcpListener>>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// What clients are told to connect to.
    pub host: String,
    key: PrivateKey,
    sftp_server: PathBuf,
}

impl Gateway {
    /// Binds `[ssh_gateway] listen` and loads (or makes) the host key.
    pub async fn bind(
        gw: &crate::config::SshGatewaySettings,
        data_dir: &Path,
    ) -> anyhow::Result<Gateway> {
        let key = host_key(data_dir)?;
        let listener = TcpListener::bind(gw.listen).await?;
        let addr = listener.local_addr()?;
        tracing::info!(ssh_addr = %addr, "SSH gateway listening");
        Ok(Gateway {
            listener: std::sync::Mutex::new(Some(listener)),
            addr,
            host: gw
                .advertise_host
                .clone()
                .unwrap_or_else(|| addr.ip().to_string()),
            key,
            sftp_server: gw.sftp_server.clone(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `reachability.ssh` of sandbox `sandbox_id`.
    pub fn reachability(&self, sandbox_id: &str) -> serde_json::Value {
        reachability(
            &self.host,
            self.addr.port(),
            sandbox_id,
            self.key.public_key(),
        )
    }

    /// Serves SSH until `shutdown` (once; later calls return at once).
    pub async fn serve(self: Arc<Self>, state: AppState, shutdown: CancellationToken) {
        let listener = match self.listener.lock() {
            Ok(mut l) => l.take(),
            Err(_) => None,
        };
        let Some(listener) = listener else { return };
        let config = Arc::new(russh::server::Config {
            inactivity_timeout: Some(Duration::from_secs(3600)),
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::from_millis(0)),
            keys: vec![self.key.clone()],
            ..Default::default()
        });
        let mut server = Server {
            state,
            sftp_server: Arc::new(self.sftp_server.clone()),
        };
        let running = server.run_on_socket(config, &listener);
        let handle = running.handle();
        tokio::select! {
            r = running => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "SSH gateway stopped");
                }
            }
            _ = shutdown.cancelled() => handle.shutdown("the daemon is stopping".into()),
        }
    }
}

#[derive(Clone)]
struct Server {
    state: AppState,
    sftp_server: Arc<PathBuf>,
}

impl russh::server::Server for Server {
    type Handler = Conn;

    fn new_client(&mut self, peer: Option<SocketAddr>) -> Conn {
        Conn {
            state: self.state.clone(),
            sftp_server: self.sftp_server.clone(),
            peer,
            authed: None,
            channels: HashMap::new(),
        }
    }
}

/// Who got in, to which sandbox.
struct Authed {
    target: Target,
    fingerprint: String,
}

/// A session channel: what the client asked for before starting something.
#[derive(Default)]
struct Chan {
    pty: Option<PtySize>,
    env: BTreeMap<String, String>,
    input: Option<mpsc::Sender<Input>>,
}

enum Input {
    Data(Vec<u8>),
    Eof,
    Resize(PtySize),
    Signal(i32),
}

/// One client connection.
struct Conn {
    state: AppState,
    sftp_server: Arc<PathBuf>,
    peer: Option<SocketAddr>,
    authed: Option<Authed>,
    channels: HashMap<ChannelId, Chan>,
}

impl Conn {
    /// Whether `key` may open sandbox `user` now; its target if so.
    async fn admit(&self, user: &str, key: &PublicKey) -> Option<(Target, String)> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match self.state.db.has_ssh_key(user, &fingerprint).await {
            Ok(true) => {}
            _ => return None,
        }
        // The key is the credential: any project's sandbox, if it holds the key.
        let target = access::target(&self.state, None, user).await.ok()?;
        Some((target, fingerprint))
    }

    async fn audit(&self, what: &str, status: u16, code: Option<&str>) {
        let Some(a) = &self.authed else { return };
        let peer = self.peer.map(|p| p.ip().to_string()).unwrap_or_default();
        let path = format!("ssh {what} from {peer}");
        let _ = self
            .state
            .db
            .audit(NewAudit {
                actor_type: "ssh",
                actor: &a.fingerprint,
                project: &a.target.project,
                role: "consumer",
                method: "SSH",
                path: &path,
                sandbox_id: Some(&a.target.sandbox_id),
                status,
                code,
            })
            .await;
    }

    /// Starts `argv` in the sandbox for session channel `channel`.
    async fn start(
        &mut self,
        channel: ChannelId,
        argv: Vec<String>,
        what: &str,
        pty: bool,
        session: &mut Session,
    ) {
        let (Some(a), Some(chan)) = (&self.authed, self.channels.get_mut(&channel)) else {
            let _ = session.channel_failure(channel);
            return;
        };
        if chan.input.is_some() {
            // One program per channel (RFC 4254 6.5).
            let _ = session.channel_failure(channel);
            return;
        }
        // Activity, and a check that the sandbox is still usable.
        let target = match access::target(&self.state, None, &a.target.sandbox_id).await {
            Ok(t) => t,
            Err(e) => {
                let _ = session.channel_failure(channel);
                tracing::info!(sandbox_id = %a.target.sandbox_id, error = %e, "SSH request refused");
                return;
            }
        };
        let request = Request::Exec(Exec {
            argv,
            cwd: None,
            env: chan.env.clone(),
            stdin: None,
            timeout_ms: SESSION_MS,
            max_output: None,
            stdin_stream: true,
            pty: if pty { chan.pty.clone() } else { None },
        });
        let timeout = self.state.settings.access.agent_timeout;
        let mut conn = match target.open(None, &request, timeout).await {
            Ok(c) => c,
            Err(e) => {
                let _ = session.channel_failure(channel);
                tracing::warn!(sandbox_id = %target.sandbox_id, error = %e, "SSH: the agent did not answer");
                return;
            }
        };
        if let Err(e) = conn.reply::<serde_json::Value>(timeout).await {
            let _ = session.channel_failure(channel);
            let handle = session.handle();
            let msg = format!("sand-boxer: {e}\r\n");
            tokio::spawn(async move {
                let _ = handle.extended_data(channel, 1, msg.into_bytes()).await;
                let _ = handle.exit_status_request(channel, 127).await;
                let _ = handle.close(channel).await;
            });
            return;
        }
        let _ = session.channel_success(channel);
        let (tx, rx) = mpsc::channel(64);
        chan.input = Some(tx);
        tokio::spawn(pump(session.handle(), channel, conn, rx));
        self.audit(what, 200, None).await;
    }
}

/// Copies a program's output to its channel and the channel's input to it,
/// until it exits (its exit status goes to the client) or the channel goes.
async fn pump(
    handle: russh::server::Handle,
    channel: ChannelId,
    conn: client::Conn,
    mut input: mpsc::Receiver<Input>,
) {
    use futures::StreamExt;
    let client::Conn { r, mut w } = conn;
    // `read_frame` is not cancel-safe: in the `select!` below a frame half
    // read when input arrived would be lost and the stream desynchronised
    // ("frame too large"). The stream keeps a read in progress across polls.
    let frames = futures::stream::unfold(r, |mut r| async move {
        let f = proto::read_frame(&mut r).await;
        Some((f, r))
    });
    tokio::pin!(frames);
    let mut input_open = true;
    loop {
        tokio::select! {
            Some(f) = frames.next() => {
                let f = match f {
                    Ok(Some(f)) => f,
                    end => {
                        // The agent hung up before the program's exit: the
                        // client hears why instead of a bare 255.
                        let why = match end {
                            Err(e) => e.to_string(),
                            _ => "the connection closed".into(),
                        };
                        tracing::warn!(error = %why, "SSH: the sandbox's agent ended the session without an exit status");
                        let msg = format!("sand-boxer: the sandbox's agent hung up ({why})\r\n");
                        let _ = handle.extended_data(channel, 1, msg.into_bytes()).await;
                        break;
                    }
                };
                if f.kind == kind::STDOUT || f.kind == kind::STDERR {
                    let sent = if f.kind == kind::STDOUT {
                        handle.data(channel, f.data).await
                    } else {
                        handle.extended_data(channel, 1, f.data).await
                    };
                    if sent.is_err() {
                        // The client is gone.
                        return;
                    }
                    continue;
                }
                if f.kind != kind::EXIT {
                    continue;
                }
                let exit: sandboxer_api::ExecExit = serde_json::from_slice(&f.data).unwrap_or_default();
                let _ = handle.eof(channel).await;
                match (exit.exit_code, exit.signal.clone()) {
                    (Some(code), _) => {
                        let _ = handle.exit_status_request(channel, code as u32).await;
                    }
                    (None, Some(sig)) => {
                        tracing::info!(signal = %sig, "SSH: the program was ended by a signal");
                        let _ = handle
                            .exit_signal_request(channel, sig_of(&sig), false, String::new(), String::new())
                            .await;
                    }
                    (None, None) => {
                        tracing::warn!(?exit, "SSH: the agent reported no exit status");
                    }
                }
                break;
            }
            m = input.recv(), if input_open => {
                let sent = match m {
                    Some(Input::Data(d)) => {
                        let mut ok = Ok(());
                        for piece in d.chunks(proto::MAX_FRAME) {
                            ok = proto::write_frame(&mut w, kind::STDIN, piece).await;
                        }
                        ok
                    }
                    Some(Input::Eof) => proto::write_frame(&mut w, kind::STDIN_END, b"").await,
                    Some(Input::Resize(size)) => {
                        let json = serde_json::to_vec(&size).unwrap_or_default();
                        proto::write_frame(&mut w, kind::RESIZE, &json).await
                    }
                    Some(Input::Signal(sig)) => {
                        let json = serde_json::to_vec(&sig).unwrap_or_default();
                        proto::write_frame(&mut w, kind::SIGNAL, &json).await
                    }
                    // The channel is gone: dropping the connection ends the program.
                    None => return,
                };
                if sent.is_err() {
                    input_open = false;
                }
            }
        }
    }
    let _ = handle.close(channel).await;
}

/// The SSH name of a signal the agent reported (`KILL`, `TERM`, ...).
fn sig_of(name: &str) -> Sig {
    match name {
        "ABRT" => Sig::ABRT,
        "ALRM" => Sig::ALRM,
        "FPE" => Sig::FPE,
        "HUP" => Sig::HUP,
        "ILL" => Sig::ILL,
        "INT" => Sig::INT,
        "KILL" => Sig::KILL,
        "PIPE" => Sig::PIPE,
        "QUIT" => Sig::QUIT,
        "SEGV" => Sig::SEGV,
        "TERM" => Sig::TERM,
        "USR1" => Sig::USR1,
        other => Sig::Custom(other.to_string()),
    }
}

fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::TERM => 15,
        _ => return None,
    })
}

impl russh::server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Only keys that would be accepted get to sign.
        let fingerprint = offer.public_key.fingerprint(HashAlg::Sha256).to_string();
        match self.state.db.has_ssh_key(user, &fingerprint).await {
            Ok(true) => Ok(Auth::Accept),
            _ => Ok(Auth::reject()),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.admit(user, key.public_key).await {
            Some((target, fingerprint)) => {
                self.authed = Some(Authed {
                    target,
                    fingerprint,
                });
                self.audit("login", 200, None).await;
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(user, peer = ?self.peer, "SSH gateway: key refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.authed.is_none() || self.channels.len() >= 16 {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        // Everything arrives through the handler's methods; the channel's
        // own copy of the messages is not read (dropped, it costs nothing).
        self.channels.insert(channel.id(), Chan::default());
        drop(channel);
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(chan) => {
                chan.pty = Some(PtySize {
                    rows: row_height.clamp(1, 1000) as u16,
                    cols: col_width.clamp(1, 1000) as u16,
                    term: Some(term.chars().take(64).collect()),
                });
                session.channel_success(channel)?;
            }
            None => session.channel_failure(channel)?,
        }
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let ok = match self.channels.get_mut(&channel) {
            Some(chan)
                if chan.env.len() < MAX_ENV
                    && !name.is_empty()
                    && name.len() <= 256
                    && value.len() <= 8192
                    && !name.contains(['=', '\0'])
                    && !value.contains('\0') =>
            {
                chan.env.insert(name.to_string(), value.to_string());
                true
            }
            _ => false,
        };
        if ok {
            session.channel_success(channel)?;
        } else {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let shell = if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        };
        self.start(
            channel,
            vec![shell.into(), "-l".into()],
            "shell",
            true,
            session,
        )
        .await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(data).into_owned();
        let what = format!("exec {}", cmd.chars().take(200).collect::<String>());
        self.start(
            channel,
            vec!["/bin/sh".into(), "-c".into(), cmd],
            &what,
            true,
            session,
        )
        .await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" || !self.sftp_server.is_file() {
            session.channel_failure(channel)?;
            return Ok(());
        }
        let argv = vec![self.sftp_server.to_string_lossy().into_owned()];
        self.start(channel, argv, "sftp", false, session).await;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            let _ = tx.send(Input::Data(data.to_vec())).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            let _ = tx.send(Input::Eof).await;
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(tx) = self.channels.get(&channel).and_then(|c| c.input.clone()) {
            let size = PtySize {
                rows: row_height.clamp(1, 1000) as u16,
                cols: col_width.clamp(1, 1000) as u16,
                term: None,
            };
            let _ = tx.send(Input::Resize(size)).await;
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let (Some(tx), Some(n)) = (
            self.channels.get(&channel).and_then(|c| c.input.clone()),
            signal_number(&signal),
        ) {
            let _ = tx.send(Input::Signal(n)).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Dropping its input sender ends the pump, which hangs up on the
        // agent, which kills the program.
        self.channels.remove(&channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(a) = &self.authed else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // Only the sandbox's own loopback: it has no other network to reach.
        let local = matches!(host_to_connect, "localhost" | "127.0.0.1" | "::1" | "[::1]");
        let port = u16::try_from(port_to_connect).ok().filter(|p| *p > 0);
        let (true, Some(port)) = (local, port) else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let target = match access::target(&self.state, None, &a.target.sandbox_id).await {
            Ok(t) => t,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        let timeout = self.state.settings.access.agent_timeout;
        let conn = match target
            .call::<serde_json::Value>(None, &Request::Connect { port }, timeout)
            .await
        {
            Ok((_, conn)) => conn,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                self.audit(&format!("direct-tcpip {port}"), 502, Some("port_closed"))
                    .await;
                return Ok(());
            }
        };
        reply.accept().await;
        self.audit(&format!("direct-tcpip {port}"), 200, None).await;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // What the server inside said at once (a greeting) may already be buffered.
            let early = conn.r.buffer().to_vec();
            let Ok(mut agent) = conn.r.into_inner().reunite(conn.w) else {
                return;
            };
            let mut stream = channel.into_stream();
            if !early.is_empty() && stream.write_all(&early).await.is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut agent).await;
        });
        Ok(())
    }
}
