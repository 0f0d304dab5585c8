//! `sandboxctl exec`, `start`, `ps`, `logs`, `kill`, `cp`, `ls-files`,
//! `ports`, `open`, `ssh-key`, `shell`: reaching into a sandbox.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sandboxctl::api::{Command as Cmd, ExecRequest, ProcessInfo, StartProcess};
use sandboxctl::client::{Download, EventStream, ExecEvent};
use sandboxctl::Client;

use crate::args::{Command, SshKeyCommand};
use crate::output::{emit, emit_json, CliError};
use crate::table::Table;

/// Runs one access subcommand.
pub async fn run(client: &Client, command: Command, json: bool) -> Result<(), CliError> {
    match command {
        Command::Exec {
            id,
            cwd,
            env,
            timeout,
            stdin,
            no_stream,
            cmd,
        } => {
            let req = ExecRequest {
                cmd: command_of(cmd),
                cwd,
                env: env_map(&env)?,
                stdin: match stdin {
                    Some(p) => Some(read_stdin_arg(&p)?),
                    None => None,
                },
                timeout,
                service: None,
            };
            if no_stream || json {
                let r = client.exec(&id, &req).await?;
                if json {
                    emit_json(&r)?;
                } else {
                    print!("{}", r.stdout);
                    eprint!("{}", r.stderr);
                }
                return exit_with(r.exit_code, r.signal.as_deref(), r.timed_out);
            }
            let events = client.exec_stream(&id, &req).await?;
            follow(events).await
        }
        Command::Start {
            id,
            cwd,
            env,
            tag,
            cmd,
        } => {
            let req = StartProcess {
                cmd: command_of(cmd),
                cwd,
                env: env_map(&env)?,
                tag,
                service: None,
            };
            let p = client.start_process(&id, &req).await?;
            if json {
                return emit_json(&p);
            }
            emit(&format!("{}\n", p.id));
            Ok(())
        }
        Command::Ps { id } => {
            let list = client.processes(&id).await?;
            if json {
                return emit_json(&list.items);
            }
            emit(&processes_table(&list.items));
            Ok(())
        }
        Command::Logs {
            id,
            process,
            follow: f,
            offset,
        } => {
            if f {
                let events = client.follow_logs(&id, &process, offset).await?;
                return follow(events).await.or_else(|e| match e {
                    // The process's own exit status is not sandboxctl's here.
                    CliError::Exit(_) => Ok(()),
                    e => Err(e),
                });
            }
            let (_, bytes) = client.logs(&id, &process, offset).await?;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(|e| CliError::Failed(format!("writing the output: {e}")))
        }
        Command::Kill {
            id,
            process,
            signal,
        } => {
            let p = client.signal(&id, &process, &signal).await?;
            if json {
                return emit_json(&p);
            }
            emit(&format!("{} sent {signal} ({})\n", p.id, state_of(&p)));
            Ok(())
        }
        Command::Cp { src, dst, mode } => cp(client, &src, &dst, mode, json).await,
        Command::LsFiles { id, path, depth } => {
            let list = client.list_files(&id, &path, depth).await?;
            if json {
                return emit_json(&list);
            }
            let mut t = Table::new(&["TYPE", "MODE", "SIZE", "MODIFIED", "PATH"]);
            for e in &list.items {
                let path = match &e.target {
                    Some(t) => format!("{} -> {t}", e.path),
                    None => e.path.clone(),
                };
                t.row(vec![
                    format!("{:?}", e.kind).to_lowercase(),
                    e.mode.clone(),
                    e.size.to_string(),
                    e.modified_at.clone().unwrap_or_default(),
                    path,
                ]);
            }
            let mut out = t.render();
            if list.truncated {
                out.push_str("(more entries than the daemon lists at once)\n");
            }
            emit(&out);
            Ok(())
        }
        Command::Ports { id } => {
            let list = client.ports(&id).await?;
            if json {
                return emit_json(&list.items);
            }
            let mut t = Table::new(&["PORT", "ADDRESS", "URL"]);
            for p in &list.items {
                let url = client.port_url(&id, p.port, "/")?;
                t.row(vec![p.port.to_string(), p.address.clone(), url.to_string()]);
            }
            emit(&t.render());
            Ok(())
        }
        Command::Open { id, port, path } => {
            let url = client.port_url(&id, port, &path)?;
            emit(&format!("{url}\n"));
            Ok(())
        }
        Command::SshKey(cmd) => ssh_key(client, cmd, json).await,
        Command::Shell { id, command } => shell(client, &id, command).await,
        _ => Err(CliError::Usage("not an access command".into())),
    }
}

/// One argument is a shell line; several are an argv.
fn command_of(mut cmd: Vec<String>) -> Cmd {
    if cmd.len() == 1 {
        Cmd::Shell(cmd.remove(0))
    } else {
        Cmd::Argv(cmd)
    }
}

fn env_map(pairs: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else {
            return Err(CliError::Usage(format!("--env {p}: expected KEY=VALUE")));
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `--stdin -` reads this process's standard input; `--stdin FILE` a file.
fn read_stdin_arg(p: &str) -> Result<String, CliError> {
    let mut buf = Vec::new();
    let read = if p == "-" {
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| ())
    } else {
        std::fs::read(p).map(|b| buf = b)
    };
    read.map_err(|e| CliError::Usage(format!("--stdin {p}: {e}")))?;
    String::from_utf8(buf).map_err(|_| CliError::Usage(format!("--stdin {p}: not UTF-8 text")))
}

/// Prints a stream's output as it comes; ends with the command's exit status.
async fn follow(mut events: EventStream) -> Result<(), CliError> {
    let mut out = std::io::stdout();
    let mut err = std::io::stderr();
    while let Some(ev) = events.next().await? {
        match ev {
            ExecEvent::Stdout(s) => {
                let _ = out.write_all(s.as_bytes());
                let _ = out.flush();
            }
            ExecEvent::Stderr(s) => {
                let _ = err.write_all(s.as_bytes());
                let _ = err.flush();
            }
            ExecEvent::Exit(e) => return exit_with(e.exit_code, e.signal.as_deref(), e.timed_out),
            ExecEvent::Error(e) => {
                return Err(CliError::Failed(format!("the stream broke off: {e}")))
            }
        }
    }
    Err(CliError::Failed(
        "the stream ended without an exit status".into(),
    ))
}

/// sandboxctl ends as the command did: its exit code, 128 + a signal's number, 124 on a timeout.
fn exit_with(code: Option<i32>, signal: Option<&str>, timed_out: bool) -> Result<(), CliError> {
    let code = match (code, signal, timed_out) {
        (_, _, true) => 124,
        (Some(0), _, _) => return Ok(()),
        (Some(c), _, _) => c.clamp(1, 255) as u8,
        (None, Some(s), _) => 128u8.saturating_add(
            sandboxctl::api::signal_number(s)
                .and_then(|n| u8::try_from(n).ok())
                .unwrap_or(0),
        ),
        (None, None, _) => 1,
    };
    Err(CliError::Exit(code))
}

fn state_of(p: &ProcessInfo) -> String {
    match (&p.state, p.exit_code, &p.signal) {
        (sandboxctl::api::ProcessState::Running, _, _) => "running".into(),
        (_, Some(c), _) => format!("exited {c}"),
        (_, None, Some(s)) => format!("killed by {s}"),
        _ => "exited".into(),
    }
}

fn processes_table(items: &[ProcessInfo]) -> String {
    let mut t = Table::new(&["ID", "PID", "STATE", "TAG", "STARTED", "OUTPUT", "COMMAND"]);
    for p in items {
        t.row(vec![
            p.id.clone(),
            p.pid.to_string(),
            state_of(p),
            p.tag.clone().unwrap_or_default(),
            p.started_at.clone(),
            p.output_bytes.to_string(),
            p.cmd.join(" "),
        ]);
    }
    t.render()
}

/// `SBX:PATH` names a path in sandbox `SBX`; anything else is local.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    id.starts_with("sbx_").then_some((id, path))
}

async fn write_download(mut d: Download, to: &mut dyn Write) -> Result<u64, CliError> {
    let mut n = 0u64;
    while let Some(chunk) = d.chunk().await? {
        to.write_all(&chunk)
            .map_err(|e| CliError::Failed(format!("writing: {e}")))?;
        n += chunk.len() as u64;
    }
    Ok(n)
}

/// `cp LOCAL SBX:PATH` or `cp SBX:PATH LOCAL`; directories go as tar.
async fn cp(
    client: &Client,
    src: &str,
    dst: &str,
    mode: Option<String>,
    json: bool,
) -> Result<(), CliError> {
    let mode = match mode {
        Some(m) => Some(
            u32::from_str_radix(m.trim_start_matches("0o"), 8).map_err(|_| {
                CliError::Usage(format!("--mode {m}: expected an octal mode such as 0644"))
            })?,
        ),
        None => None,
    };
    match (remote(src), remote(dst)) {
        (None, Some((id, path))) => {
            let local = Path::new(src);
            let meta = std::fs::metadata(local).map_err(|e| CliError::Usage(format!("{src}: {e}")))?;
            let written = if meta.is_dir() {
                // Packed on a thread, streamed as it is made.
                let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(8);
                let dir = local.to_path_buf();
                std::thread::spawn(move || {
                    let w = ChannelWriter { tx: tx.clone() };
                    let mut b = tar::Builder::new(w);
                    b.follow_symlinks(false);
                    let r = b.append_dir_all(".", &dir).and_then(|_| b.finish());
                    if let Err(e) = r {
                        let _ = tx.blocking_send(Err(e));
                    }
                });
                let stream = futures_lite_stream(rx);
                client.upload(id, path, reqwest::Body::wrap_stream(stream)).await?
            } else {
                let file = tokio::fs::File::open(local)
                    .await
                    .map_err(|e| CliError::Usage(format!("{src}: {e}")))?;
                let mode = mode.or_else(|| {
                    use std::os::unix::fs::PermissionsExt;
                    Some(meta.permissions().mode() & 0o777)
                });
                client.write_file(id, path, mode, reqwest::Body::from(file)).await?
            };
            if json {
                return emit_json(&written);
            }
            emit(&format!("{} bytes ({} entries) to {dst}\n", written.written, written.entries.max(1)));
            Ok(())
        }
        (Some((id, path)), None) => {
            let listing = client.list_files(id, parent_of(path), 1).await.ok();
            let name = path.trim_end_matches('/').rsplit('/').next().unwrap_or(path).to_string();
            let is_dir = listing
                .as_ref()
                .and_then(|l| l.items.iter().find(|e| e.name == name))
                .is_some_and(|e| e.kind == sandboxctl::api::FileType::Dir);
            let local = PathBuf::from(dst);
            if is_dir {
                let target = if local.is_dir() { local.join(&name) } else { local };
                std::fs::create_dir_all(&target).map_err(|e| CliError::Failed(format!("{}: {e}", target.display())))?;
                let mut d = client.download(id, path).await?;
                // Unpacked on a thread as it arrives, never held whole.
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
                let into = target.clone();
                let unpacker = std::thread::spawn(move || {
                    let mut ar = tar::Archive::new(ChannelReader { rx, piece: Vec::new(), at: 0 });
                    ar.set_preserve_permissions(true);
                    ar.unpack(&into)
                });
                let mut n = 0u64;
                while let Some(chunk) = d.chunk().await? {
                    n += chunk.len() as u64;
                    if tx.send(chunk).is_err() {
                        break;
                    }
                }
                drop(tx);
                match unpacker.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(CliError::Failed(format!("unpacking into {}: {e}", target.display()))),
                    Err(_) => return Err(CliError::Failed("the unpacking thread failed".into())),
                }
                emit(&format!("{n} bytes of archive into {}\n", target.display()));
                return Ok(());
            }
            let target = if local.is_dir() { local.join(&name) } else { local };
            let d = client.read_file(id, path).await?;
            if dst == "-" {
                write_download(d, &mut std::io::stdout()).await?;
                return Ok(());
            }
            let tmp = target.with_extension("sandboxctl-part");
            let mut f = std::fs::File::create(&tmp).map_err(|e| CliError::Failed(format!("{}: {e}", tmp.display())))?;
            let n = write_download(d, &mut f).await?;
            std::fs::rename(&tmp, &target).map_err(|e| CliError::Failed(format!("{}: {e}", target.display())))?;
            if !json {
                emit(&format!("{n} bytes to {}\n", target.display()));
            }
            Ok(())
        }
        _ => Err(CliError::Usage(
            "cp copies between this machine and a sandbox: `cp LOCAL sbx_…:PATH` or `cp sbx_…:PATH LOCAL`".into(),
        )),
    }
}

fn parent_of(path: &str) -> &str {
    let p = path.trim_end_matches('/');
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None => "/workspace",
    }
}

/// A `Write` that hands its bytes to an async channel (a streamed body).
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Vec<u8>>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(Ok(buf.to_vec()))
            .map_err(|_| std::io::Error::other("the upload was cut off"))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn futures_lite_stream(
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// A `Read` over pieces handed from an async loop (a streamed download
/// unpacked on a thread).
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    piece: Vec<u8>,
    at: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.piece.len() {
            match self.rx.recv() {
                Ok(p) => {
                    self.piece = p;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

async fn ssh_key(client: &Client, cmd: SshKeyCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        SshKeyCommand::Add { id, key } => {
            let text = if Path::new(&key).is_file() {
                std::fs::read_to_string(&key).map_err(|e| CliError::Usage(format!("{key}: {e}")))?
            } else {
                key
            };
            let k = client.add_ssh_key(&id, text.trim()).await?;
            if json {
                return emit_json(&k);
            }
            emit(&format!("{} added to {id}\n", k.fingerprint));
            Ok(())
        }
        SshKeyCommand::List { id } => {
            let l = client.ssh_keys(&id).await?;
            if json {
                return emit_json(&l.items);
            }
            let mut t = Table::new(&["FINGERPRINT", "COMMENT", "ADDED"]);
            for k in &l.items {
                t.row(vec![
                    k.fingerprint.clone(),
                    k.comment.clone(),
                    k.created_at.clone(),
                ]);
            }
            emit(&t.render());
            Ok(())
        }
        SshKeyCommand::Rm { id, fingerprint } => {
            let l = client.remove_ssh_key(&id, &fingerprint).await?;
            if json {
                return emit_json(&l.items);
            }
            emit(&format!("{fingerprint} removed from {id}\n"));
            Ok(())
        }
    }
}

/// An interactive shell through the daemon's SSH gateway: a key made for
/// this session only, registered, used by OpenSSH's `ssh` with the
/// gateway's host key pinned, and removed afterwards.
async fn shell(client: &Client, id: &str, command: Vec<String>) -> Result<(), CliError> {
    let sbx = client.get(id, None).await?;
    let ssh = sbx
        .reachability
        .as_ref()
        .and_then(|r| r.get("ssh"))
        .cloned()
        .ok_or_else(|| {
            CliError::Failed(format!(
                "{id} has no reachability.ssh: the daemon runs no SSH gateway ([ssh_gateway] listen); use `sandboxctl exec`"
            ))
        })?;
    let (Some(host), Some(port), Some(user), Some(host_key)) = (
        ssh["host"].as_str(),
        ssh["port"].as_u64(),
        ssh["user"].as_str(),
        ssh["host_key"].as_str(),
    ) else {
        return Err(CliError::Failed(format!(
            "{id}: reachability.ssh is incomplete: {ssh}"
        )));
    };
    // Private (0700) and removed when it goes out of scope.
    let dir = tempfile::Builder::new()
        .prefix("sandboxctl-shell-")
        .tempdir()
        .map_err(|e| CliError::Failed(format!("a private temporary directory: {e}")))?;
    let key = dir.path().join("id_ed25519");
    let made = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "sandboxctl-shell",
            "-f",
        ])
        .arg(&key)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| CliError::Failed(format!("ssh-keygen (OpenSSH's client is needed): {e}")))?;
    if !made.success() {
        return Err(CliError::Failed("ssh-keygen failed".into()));
    }
    let public = std::fs::read_to_string(key.with_extension("pub"))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let added = client.add_ssh_key(id, public.trim()).await?;
    let known = dir.path().join("known_hosts");
    let host_field = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    std::fs::write(&known, format!("{host_field} {host_key}\n"))
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let mut c = std::process::Command::new("ssh");
    c.args([
        "-p",
        &port.to_string(),
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known.display()))
    .arg("-i")
    .arg(&key)
    .arg(format!("{user}@{host}"));
    if command.is_empty() {
        c.arg("-t");
    } else {
        c.args(&command);
    }
    let status = c.status();
    let _ = client.remove_ssh_key(id, &added.fingerprint).await;
    drop(dir);
    let status =
        status.map_err(|e| CliError::Failed(format!("ssh (OpenSSH's client is needed): {e}")))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(CliError::Exit(c.clamp(1, 255) as u8)),
        None => Err(CliError::Exit(1)),
    }
}
