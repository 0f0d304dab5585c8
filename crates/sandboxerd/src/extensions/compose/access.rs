//! Exec and files of a compose stack's service, for the access routes:
//! the agent's protocol served by the daemon itself, each operation done
//! by the container engine on the placement host (`docker exec` over the
//! pooled SSH connection). Everything runs inside the service's container,
//! with its privileges, so a path resolves in the container's own view.
//!
//! What it does not do (answered `unsupported`): background processes,
//! tar uploads (whose entries could not be checked before the container's
//! own `tar` acts on them) and the port proxy (a stack's ports are
//! published by the engine; `reachability` lists them). A timed-out exec's
//! session is closed; the engine may leave the program running in the
//! container until the stack goes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::ChannelMsg;
use sandboxer_agent::proto::{
    self, kind, reply_err, reply_ok, AgentError, Exec, FileMeta, FrameReader, Hello, Request,
};
use sandboxer_api::{ExecExit, FileEntry, FileList, FileType, PortList, Written};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

use super::ssh::{sh_quote, HostPool};
use super::{ComposeState, LABEL};
use crate::extensions::ServeAgent;

/// Starting a remote command, and quick checks, take at most this.
const QUICK: Duration = Duration::from_secs(30);

/// The agent of one compose sandbox.
pub struct ComposeAgent {
    pub pool: Arc<HostPool>,
    pub state: ComposeState,
    pub sandbox_id: String,
}

impl ServeAgent for ComposeAgent {
    fn serve(self: Arc<Self>, service: Option<String>, stream: UnixStream) {
        tokio::spawn(async move { self.handle(service, stream).await });
    }
}

fn refused(code: &str, message: impl Into<String>) -> AgentError {
    AgentError::new(code, message)
}

/// A program's output as it came: stdout, stderr, exit status.
struct Ran {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Option<u32>,
}

impl ComposeAgent {
    async fn handle(self: Arc<Self>, service: Option<String>, stream: UnixStream) {
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let req: Request = match proto::read_line(&mut r).await {
            Ok(Some(req)) => req,
            _ => return,
        };
        let container = match self.container(service.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = reply_err(&mut w, e).await;
                return;
            }
        };
        let done = match req {
            Request::Ping => {
                reply_ok(
                    &mut w,
                    &Hello {
                        version: env!("CARGO_PKG_VERSION").into(),
                        pid: 0,
                        processes: 0,
                    },
                )
                .await
            }
            Request::Exec(x) => self.exec(&container, x, r, w).await,
            Request::Read { path } => self.read(&container, &path, w).await,
            Request::Write {
                path,
                mode,
                max_bytes,
            } => self.write(&container, &path, mode, max_bytes, r, w).await,
            Request::Delete { path, recursive } => self.delete(&container, &path, recursive, &mut w).await,
            Request::List {
                path,
                depth,
                max_entries,
            } => self.list(&container, &path, depth, max_entries, &mut w).await,
            Request::Download { path } => self.download(&container, &path, w).await,
            Request::Ports => self.ports(&container, &mut w).await,
            _ => {
                reply_err(
                    &mut w,
                    refused(
                        "unsupported",
                        "ext.compose-ssh runs commands and moves single files in a service; background processes, tar uploads and the port proxy are ext.local's",
                    ),
                )
                .await
            }
        };
        let _ = done;
    }

    fn engine(&self) -> &str {
        &self.state.tooling.engine
    }

    /// The running container of `service` (default: the stack's first service).
    async fn container(&self, service: Option<&str>) -> Result<String, AgentError> {
        let service = match service {
            Some(s) => s.to_string(),
            None => self
                .state
                .services
                .first()
                .cloned()
                .ok_or_else(|| refused("file_error", "the stack has no services"))?,
        };
        if !self.state.services.contains(&service) {
            return Err(refused(
                "unknown_service",
                format!(
                    "the stack has no service `{service}` (it has: {})",
                    self.state.services.join(", ")
                ),
            ));
        }
        let cmd = format!(
            "{} ps -q --filter {} --filter {} --filter status=running",
            self.engine(),
            sh_quote(&format!("label={LABEL}={}", self.sandbox_id)),
            sh_quote(&format!("label=com.docker.compose.service={service}"))
        );
        let out = self
            .pool
            .exec(&cmd, None, Some(QUICK))
            .await
            .map_err(|e| refused("agent_unreachable", e.to_string()))?;
        out.stdout_text()
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                refused(
                    "agent_unreachable",
                    format!("service `{service}` has no running container"),
                )
            })
    }

    /// `engine exec [flags] container sh -c script sh args…`.
    fn shell(&self, container: &str, interactive: bool, script: &str, args: &[&str]) -> String {
        let mut cmd = format!("{} exec ", self.engine());
        if interactive {
            cmd.push_str("-i ");
        }
        cmd.push_str(&sh_quote(container));
        cmd.push_str(" sh -c ");
        cmd.push_str(&sh_quote(script));
        cmd.push_str(" sh");
        for a in args {
            cmd.push(' ');
            cmd.push_str(&sh_quote(a));
        }
        cmd
    }

    async fn run(&self, command: &str) -> Result<Ran, AgentError> {
        let out = self
            .pool
            .exec(command, None, Some(QUICK))
            .await
            .map_err(|e| refused("agent_unreachable", e.to_string()))?;
        Ok(Ran {
            stdout: out.stdout,
            stderr: out.stderr,
            status: out.status,
        })
    }

    async fn exec(
        &self,
        container: &str,
        x: Exec,
        mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut w: OwnedWriteHalf,
    ) -> std::io::Result<()> {
        if x.pty.is_some() || x.stdin_stream {
            return reply_err(
                &mut w,
                refused("unsupported", "interactive sessions are ext.local's"),
            )
            .await;
        }
        let mut cmd = format!("{} exec", self.engine());
        if x.stdin.is_some() {
            cmd.push_str(" -i");
        }
        if let Some(cwd) = &x.cwd {
            cmd.push_str(" -w ");
            cmd.push_str(&sh_quote(cwd));
        }
        for (k, v) in &x.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return reply_err(
                    &mut w,
                    refused(
                        "invalid_env",
                        format!("env: `{}` is not a valid name", k.escape_debug()),
                    ),
                )
                .await;
            }
            cmd.push_str(" -e ");
            cmd.push_str(&sh_quote(&format!("{k}={v}")));
        }
        cmd.push(' ');
        cmd.push_str(&sh_quote(container));
        for a in &x.argv {
            cmd.push(' ');
            cmd.push_str(&sh_quote(a));
        }
        let started = Instant::now();
        let (slot, mut channel) = match self.pool.open_exec(&cmd, QUICK).await {
            Ok(c) => c,
            Err(e) => return reply_err(&mut w, refused("agent_unreachable", e.to_string())).await,
        };
        reply_ok(&mut w, &serde_json::json!({ "pid": 0 })).await?;
        if let Some(text) = &x.stdin {
            let _ = channel.data(text.as_bytes()).await;
        }
        let _ = channel.eof().await;
        let cap = x.max_output.unwrap_or(u64::MAX);
        let mut sent = [0u64; 2];
        let mut truncated = [false; 2];
        let mut status = None;
        let mut timed_out = false;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(x.timeout_ms.max(1));
        let mut probe = [0u8; 64];
        loop {
            tokio::select! {
                msg = channel.wait() => {
                    let Some(msg) = msg else { break };
                    let (k, data) = match msg {
                        ChannelMsg::Data { data } => (0, data),
                        ChannelMsg::ExtendedData { data, .. } => (1, data),
                        ChannelMsg::ExitStatus { exit_status } => {
                            status = Some(exit_status);
                            continue;
                        }
                        _ => continue,
                    };
                    let frame_kind = if k == 0 { kind::STDOUT } else { kind::STDERR };
                    proto::write_capped(&mut w, frame_kind, &data, cap, &mut sent[k], &mut truncated[k]).await?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    timed_out = true;
                    let _ = channel.close().await;
                    break;
                }
                gone = r.read(&mut probe) => {
                    if matches!(gone, Ok(0) | Err(_)) {
                        let _ = channel.close().await;
                        return Ok(());
                    }
                }
            }
        }
        drop(slot);
        let exit = ExecExit {
            exit_code: status.map(|s| s as i32),
            signal: None,
            timed_out,
            stdout_truncated: truncated[0],
            stderr_truncated: truncated[1],
            duration_ms: started.elapsed().as_millis() as u64,
            oom_killed: false,
        };
        let json = serde_json::to_vec(&exit).map_err(std::io::Error::other)?;
        proto::write_frame(&mut w, kind::EXIT, &json).await?;
        w.shutdown().await
    }

    /// What `path` is in the container: `dir`, `file SIZE MODE`, `other` or `none`.
    async fn what_is(&self, container: &str, path: &str) -> Result<String, AgentError> {
        let script = r#"if [ -d "$1" ]; then echo dir; elif [ -f "$1" ]; then stat -c "file %s %a" "$1"; elif [ -e "$1" ] || [ -L "$1" ]; then echo other; else echo none; fi"#;
        let ran = self
            .run(&self.shell(container, false, script, &[path]))
            .await?;
        if ran.status != Some(0) {
            return Err(refused(
                "file_error",
                String::from_utf8_lossy(&ran.stderr).trim().to_string(),
            ));
        }
        Ok(String::from_utf8_lossy(&ran.stdout).trim().to_string())
    }

    async fn read(
        &self,
        container: &str,
        path: &str,
        mut w: OwnedWriteHalf,
    ) -> std::io::Result<()> {
        let what = match self.what_is(container, path).await {
            Ok(w) => w,
            Err(e) => return reply_err(&mut w, e).await,
        };
        let mut parts = what.split_whitespace();
        let (size, mode) = match parts.next() {
            Some("file") => (
                parts
                    .next()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0),
                parts
                    .next()
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .unwrap_or(0o644),
            ),
            Some("dir") => {
                return reply_err(
                    &mut w,
                    refused("is_a_directory", format!("{path} is a directory")),
                )
                .await
            }
            Some("other") => {
                return reply_err(
                    &mut w,
                    refused("not_a_file", format!("{path} is not a regular file")),
                )
                .await
            }
            _ => {
                return reply_err(
                    &mut w,
                    refused("file_not_found", format!("{path}: no such file")),
                )
                .await
            }
        };
        let cmd = format!(
            "{} exec {} cat -- {}",
            self.engine(),
            sh_quote(container),
            sh_quote(path)
        );
        self.stream_out(&cmd, FileMeta { size, mode }, size, w)
            .await
    }

    /// Runs `cmd` and answers `meta`, then at most `limit` bytes of its
    /// output (a file grown meanwhile does not make an endless answer).
    async fn stream_out(
        &self,
        cmd: &str,
        meta: FileMeta,
        limit: u64,
        mut w: OwnedWriteHalf,
    ) -> std::io::Result<()> {
        let (slot, mut channel) = match self.pool.open_exec(cmd, QUICK).await {
            Ok(c) => c,
            Err(e) => return reply_err(&mut w, refused("agent_unreachable", e.to_string())).await,
        };
        reply_ok(&mut w, &meta).await?;
        let mut left = limit;
        while let Some(msg) = channel.wait().await {
            if let ChannelMsg::Data { data } = msg {
                let take = (data.len() as u64).min(left) as usize;
                w.write_all(&data[..take]).await?;
                left -= take as u64;
                if left == 0 {
                    break;
                }
            }
        }
        drop(slot);
        w.shutdown().await
    }

    async fn write(
        &self,
        container: &str,
        path: &str,
        mode: Option<u32>,
        max_bytes: u64,
        r: BufReader<tokio::net::unix::OwnedReadHalf>,
        mut w: OwnedWriteHalf,
    ) -> std::io::Result<()> {
        match self.what_is(container, path).await {
            Ok(what) if what == "dir" => {
                return reply_err(
                    &mut w,
                    refused("is_a_directory", format!("{path} is a directory")),
                )
                .await
            }
            Ok(_) => {}
            Err(e) => return reply_err(&mut w, e).await,
        }
        let part = format!("{path}.sandboxer-part");
        let script = r#"mkdir -p "$(dirname "$1")" && cat > "$2""#;
        let (slot, mut channel) = match self
            .pool
            .open_exec(&self.shell(container, true, script, &[path, &part]), QUICK)
            .await
        {
            Ok(c) => c,
            Err(e) => return reply_err(&mut w, refused("agent_unreachable", e.to_string())).await,
        };
        let mut body = FrameReader::new(r);
        let mut buf = vec![0u8; 64 * 1024];
        let mut n: u64 = 0;
        let outcome: Result<(), AgentError> = loop {
            match body.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k as u64;
                    if n > max_bytes {
                        break Err(refused(
                            "payload_too_large",
                            format!("the file is larger than the limit of {max_bytes} bytes"),
                        ));
                    }
                    if channel.data(&buf[..k]).await.is_err() {
                        break Err(refused(
                            "file_error",
                            "the container stopped taking the file",
                        ));
                    }
                }
                Err(_) => {
                    break Err(refused(
                        "body_incomplete",
                        "the body was broken off; the file was left as it was",
                    ))
                }
            }
        };
        let mut status = None;
        if outcome.is_ok() {
            let _ = channel.eof().await;
            while let Some(msg) = channel.wait().await {
                if let ChannelMsg::ExitStatus { exit_status } = msg {
                    status = Some(exit_status);
                }
            }
        } else {
            let _ = channel.close().await;
        }
        drop(slot);
        let finish = match (&outcome, status) {
            (Ok(()), Some(0)) => {
                let m = format!("{:o}", mode.unwrap_or(0o644) & 0o777);
                self.run(&self.shell(
                    container,
                    false,
                    r#"chmod "$3" "$2" && mv -f "$2" "$1""#,
                    &[path, &part, &m],
                ))
                .await
                .and_then(|ran| match ran.status {
                    Some(0) => Ok(()),
                    _ => Err(refused(
                        "permission_denied",
                        String::from_utf8_lossy(&ran.stderr).trim().to_string(),
                    )),
                })
            }
            (Ok(()), _) => Err(refused(
                "permission_denied",
                format!("{path}: the container could not write it"),
            )),
            (Err(e), _) => Err(e.clone()),
        };
        match finish {
            Ok(()) => {
                reply_ok(
                    &mut w,
                    &Written {
                        written: n,
                        entries: 1,
                    },
                )
                .await
            }
            Err(e) => {
                let _ = self
                    .run(&self.shell(container, false, r#"rm -f "$1""#, &[&part]))
                    .await;
                reply_err(&mut w, e).await
            }
        }
    }

    async fn delete(
        &self,
        container: &str,
        path: &str,
        recursive: bool,
        w: &mut OwnedWriteHalf,
    ) -> std::io::Result<()> {
        let script = r#"if [ -d "$1" ] && [ ! -L "$1" ]; then if [ "$2" = 1 ]; then rm -rf -- "$1" && echo yes; else echo dir; fi; elif [ -e "$1" ] || [ -L "$1" ]; then rm -f -- "$1" && echo yes; else echo no; fi"#;
        let rec = if recursive { "1" } else { "0" };
        match self
            .run(&self.shell(container, false, script, &[path, rec]))
            .await
        {
            Ok(ran) => match String::from_utf8_lossy(&ran.stdout).trim() {
                "yes" => reply_ok(w, &serde_json::json!({ "deleted": true })).await,
                "no" => reply_ok(w, &serde_json::json!({ "deleted": false })).await,
                "dir" => {
                    reply_err(
                        w,
                        refused(
                            "is_a_directory",
                            format!("{path} is a directory; pass recursive=true to delete it"),
                        ),
                    )
                    .await
                }
                _ => {
                    reply_err(
                        w,
                        refused(
                            "permission_denied",
                            String::from_utf8_lossy(&ran.stderr).trim().to_string(),
                        ),
                    )
                    .await
                }
            },
            Err(e) => reply_err(w, e).await,
        }
    }

    async fn list(
        &self,
        container: &str,
        path: &str,
        depth: u32,
        max_entries: usize,
        w: &mut OwnedWriteHalf,
    ) -> std::io::Result<()> {
        match self.what_is(container, path).await {
            Ok(what) if what == "dir" => {}
            Ok(what) if what == "none" => {
                return reply_err(
                    w,
                    refused("file_not_found", format!("{path}: no such directory")),
                )
                .await
            }
            Ok(_) => {
                return reply_err(
                    w,
                    refused("not_a_directory", format!("{path} is not a directory")),
                )
                .await
            }
            Err(e) => return reply_err(w, e).await,
        }
        let script = r#"find "$1" -mindepth 1 -maxdepth "$2" -exec stat -c '%F|%s|%a|%Y|%n' {} \;"#;
        let ran = match self
            .run(&self.shell(container, false, script, &[path, &depth.max(1).to_string()]))
            .await
        {
            Ok(r) => r,
            Err(e) => return reply_err(w, e).await,
        };
        let text = String::from_utf8_lossy(&ran.stdout);
        let mut items: Vec<FileEntry> = text.lines().filter_map(parse_stat_line).collect();
        items.sort_by(|a, b| a.path.cmp(&b.path));
        let truncated = items.len() > max_entries;
        items.truncate(max_entries);
        reply_ok(w, &FileList { items, truncated }).await
    }

    async fn download(
        &self,
        container: &str,
        path: &str,
        mut w: OwnedWriteHalf,
    ) -> std::io::Result<()> {
        let what = match self.what_is(container, path).await {
            Ok(w) => w,
            Err(e) => return reply_err(&mut w, e).await,
        };
        let script = match what.split_whitespace().next() {
            Some("dir") => r#"cd "$1" && exec tar -c ."#,
            Some("file") => r#"cd "$(dirname "$1")" && exec tar -c "$(basename "$1")""#,
            Some("other") => {
                return reply_err(
                    &mut w,
                    refused("not_a_file", format!("{path} is not a file or directory")),
                )
                .await
            }
            _ => {
                return reply_err(
                    &mut w,
                    refused("file_not_found", format!("{path}: no such file")),
                )
                .await
            }
        };
        let cmd = self.shell(container, false, script, &[path]);
        let meta = FileMeta {
            size: 0,
            mode: 0o755,
        };
        self.stream_out(&cmd, meta, u64::MAX, w).await
    }

    async fn ports(&self, container: &str, w: &mut OwnedWriteHalf) -> std::io::Result<()> {
        let cmd = format!(
            "{} exec {} cat /proc/net/tcp",
            self.engine(),
            sh_quote(container)
        );
        let cmd6 = format!(
            "{} exec {} cat /proc/net/tcp6",
            self.engine(),
            sh_quote(container)
        );
        let (tcp, tcp6) = match (self.run(&cmd).await, self.run(&cmd6).await) {
            (Ok(a), b) => (a.stdout, b.map(|b| b.stdout).unwrap_or_default()),
            (Err(e), _) => return reply_err(w, e).await,
        };
        let items = sandboxer_agent::ports::parse(
            &String::from_utf8_lossy(&tcp),
            &String::from_utf8_lossy(&tcp6),
        );
        reply_ok(w, &PortList { items }).await
    }
}

/// One `find … -exec stat -c '%F|%s|%a|%Y|%n'` line.
fn parse_stat_line(line: &str) -> Option<FileEntry> {
    let mut f = line.splitn(5, '|');
    let (kind, size, mode, mtime, path) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    let kind = match kind {
        "directory" => FileType::Dir,
        "symbolic link" => FileType::Symlink,
        k if k.contains("regular") => FileType::File,
        _ => FileType::Other,
    };
    let modified_at = mtime.parse::<u64>().ok().map(|s| {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
            .to_string()
    });
    Some(FileEntry {
        name: path.rsplit('/').next().unwrap_or(path).to_string(),
        path: path.to_string(),
        kind,
        size: size.parse().unwrap_or(0),
        mode: format!("{:0>4}", mode),
        modified_at,
        target: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_entries() {
        let e = parse_stat_line("regular file|12|644|1700000000|/srv/a|b.txt").unwrap();
        assert_eq!(
            (e.kind, e.size, e.mode.as_str(), e.name.as_str()),
            (FileType::File, 12, "0644", "a|b.txt")
        );
        assert_eq!(
            parse_stat_line("directory|4096|755|1|/srv/d").unwrap().kind,
            FileType::Dir
        );
        assert!(parse_stat_line("garbage").is_none());
    }
}
