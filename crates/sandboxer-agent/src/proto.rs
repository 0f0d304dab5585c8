//! The wire between the daemon and an agent: one request per connection.
//!
//! The daemon writes one JSON [`Request`] and a newline. The agent answers
//! with one JSON line, [`Reply`]: `{"ok": ...}` or `{"err": {"code", "message"}}`.
//! What follows depends on the operation:
//! - `exec`, `logs`: [`Frame`]s (a kind byte, a big-endian `u32` length, the
//!   payload) until the connection closes; the last is an `exit` frame.
//! - `read`, `download`: the raw bytes (a file, a tar archive) until EOF.
//! - `write`, `upload`: the daemon first sends the body as `data` frames
//!   and an `end` frame; the agent answers after it has read them all (or
//!   at once when it refuses the request). A body without its `end` frame
//!   was broken off (the client went away, or sent too much): a `write`
//!   then leaves the file as it was.
//! - `connect`: raw bytes both ways, to and from the port inside.
//!
//! Everything is untrusted in both directions: the agent runs with the
//! sandbox's privileges and the code in the sandbox may have replaced it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

/// The longest request or reply line accepted.
pub const MAX_LINE: usize = 8 << 20;
/// The largest frame payload accepted.
pub const MAX_FRAME: usize = 1 << 20;

/// One operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answers `{"ok": Hello}`.
    Ping,
    /// Run a command; frames of its output, then `exit`.
    Exec(Exec),
    /// Start a background process; answers its [`sandboxer_api::ProcessInfo`].
    Spawn(Spawn),
    /// Answers [`sandboxer_api::ProcessList`].
    Processes,
    /// Answers one [`sandboxer_api::ProcessInfo`].
    Process { id: String },
    /// Answers the process's info, then frames of its output from `offset`
    /// (`stdout`/`stderr`), and when it has exited and `follow` is set, or
    /// at the current end otherwise, an `exit` frame.
    Logs {
        id: String,
        offset: u64,
        follow: bool,
    },
    /// Signals a process's group.
    Signal { id: String, signal: i32 },
    /// Answers [`FileMeta`], then the file's bytes.
    Read { path: String },
    /// Answers [`sandboxer_api::Written`] after reading the bytes.
    Write {
        path: String,
        mode: Option<u32>,
        max_bytes: u64,
    },
    /// Answers `{"ok": {"deleted": bool}}`.
    Delete { path: String, recursive: bool },
    /// Answers [`sandboxer_api::FileList`].
    List {
        path: String,
        depth: u32,
        max_entries: usize,
    },
    /// Answers [`sandboxer_api::Written`] after unpacking the tar archive sent.
    Upload { path: String, max_bytes: u64 },
    /// Answers [`FileMeta`] of the directory, then a tar archive of it.
    Download { path: String },
    /// Answers [`sandboxer_api::PortList`].
    Ports,
    /// Answers `{"ok": null}`, then relays bytes to and from the port.
    Connect { port: u16 },
}

/// What `exec` runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Exec {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub stdin: Option<String>,
    /// Milliseconds before the process tree is killed.
    pub timeout_ms: u64,
    /// Bytes kept per stream; the rest is read and dropped.
    pub max_output: Option<u64>,
    /// After the reply, the daemon sends `stdin`, `stdin_end`, `resize` and
    /// `signal` frames (interactive use: SSH, a terminal).
    #[serde(default)]
    pub stdin_stream: bool,
    /// Run on a pseudo-terminal of this size (its output comes as `stdout`).
    #[serde(default)]
    pub pty: Option<PtySize>,
}

/// A terminal's size (and, when starting one, its `TERM`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
    #[serde(default)]
    pub term: Option<String>,
}

/// What `spawn` starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Spawn {
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub tag: Option<String>,
}

/// The agent's answer to `ping`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: String,
    /// The agent's pid inside the sandbox.
    pub pid: i32,
    pub processes: usize,
}

/// What `read` and `download` announce before the bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    pub size: u64,
    pub mode: u32,
}

/// A refusal, with a problem code the daemon passes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AgentError {
    pub code: String,
    pub message: String,
}

impl AgentError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        AgentError {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The first line of every answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(serde_json::Value),
    Err(AgentError),
}

/// Kinds of [`Frame`].
pub mod kind {
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    /// JSON [`sandboxer_api::ExecExit`].
    pub const EXIT: u8 = 3;
    /// A piece of the body of a `write` or `upload`.
    pub const DATA: u8 = 4;
    /// The body is complete. A connection that ends without it is an
    /// abort: nothing of a `write` is kept.
    pub const END: u8 = 5;
    /// Input for an interactive `exec`.
    pub const STDIN: u8 = 6;
    /// The end of that input.
    pub const STDIN_END: u8 = 7;
    /// JSON [`super::PtySize`]: the terminal was resized.
    pub const RESIZE: u8 = 8;
    /// JSON signal number for the command's process group.
    pub const SIGNAL: u8 = 9;
}

/// A piece of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub data: Vec<u8>,
}

/// Writes one JSON line.
pub async fn write_line<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    let mut buf = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf).await
}

/// Reads one JSON line of at most [`MAX_LINE`] bytes; `None` at a clean EOF.
pub async fn read_line<R: AsyncBufRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> std::io::Result<Option<T>> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        let why = if buf.len() > MAX_LINE {
            "line too long"
        } else {
            "line cut short"
        };
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Answers `{"ok": v}`.
pub async fn reply_ok<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    v: &T,
) -> std::io::Result<()> {
    let value = serde_json::to_value(v).map_err(std::io::Error::other)?;
    write_line(w, &Reply::Ok(value)).await
}

/// Answers `{"err": e}`.
pub async fn reply_err<W: AsyncWrite + Unpin>(w: &mut W, e: AgentError) -> std::io::Result<()> {
    write_line(w, &Reply::Err(e)).await
}

/// Sends what of `data` fits under `cap` (counted in `sent`) as a frame of
/// `kind`; the rest is dropped and `truncated` set.
pub async fn write_capped<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    data: &[u8],
    cap: u64,
    sent: &mut u64,
    truncated: &mut bool,
) -> std::io::Result<()> {
    let room = cap.saturating_sub(*sent);
    let take = (data.len() as u64).min(room) as usize;
    if take < data.len() {
        *truncated = true;
    }
    if take > 0 {
        write_frame(w, kind, &data[..take]).await?;
        *sent += take as u64;
    }
    Ok(())
}

/// Writes a frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    data: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(data).await
}

/// Reads a frame; `None` at a clean EOF between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Frame>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data).await?;
    Ok(Some(Frame {
        kind: head[0],
        data,
    }))
}

/// The body of a `write` or `upload` as a byte stream: the payloads of
/// `data` frames, ending cleanly at the `end` frame and with
/// `UnexpectedEof` when the connection ends before it.
pub struct FrameReader<R> {
    inner: R,
    head: [u8; 5],
    head_len: usize,
    remaining: usize,
    done: bool,
}

impl<R> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            head: [0; 5],
            head_len: 0,
            remaining: 0,
            done: false,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for FrameReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        loop {
            if this.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.remaining > 0 {
                let want = this.remaining.min(buf.remaining());
                let mut tmp = vec![0u8; want];
                let mut rb = tokio::io::ReadBuf::new(&mut tmp);
                match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(broken_off()));
                }
                buf.put_slice(&tmp[..n]);
                this.remaining -= n;
                return Poll::Ready(Ok(()));
            }
            while this.head_len < this.head.len() {
                let mut rb = tokio::io::ReadBuf::new(&mut this.head[this.head_len..]);
                match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Err(broken_off()));
                }
                this.head_len += n;
            }
            this.head_len = 0;
            let len = u32::from_be_bytes([this.head[1], this.head[2], this.head[3], this.head[4]])
                as usize;
            match this.head[0] {
                kind::DATA if len <= MAX_FRAME => this.remaining = len,
                kind::END => this.done = true,
                _ => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a body frame",
                    )))
                }
            }
        }
    }
}

fn broken_off() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the body was broken off before its end",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_ends_at_its_end_frame_and_fails_without_it() {
        let mut wire = Vec::new();
        write_frame(&mut wire, kind::DATA, b"hello ").await.unwrap();
        write_frame(&mut wire, kind::DATA, b"").await.unwrap();
        write_frame(&mut wire, kind::DATA, b"world").await.unwrap();
        let complete = {
            let mut w = wire.clone();
            write_frame(&mut w, kind::END, b"").await.unwrap();
            w
        };
        let mut out = Vec::new();
        FrameReader::new(&complete[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, b"hello world");
        let mut out = Vec::new();
        let err = FrameReader::new(&wire[..])
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let err = FrameReader::new(&wire[..3])
            .read_to_end(&mut Vec::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
