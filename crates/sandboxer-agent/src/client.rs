//! The daemon's side of [`crate::proto`]: one connection per request.
//! Whatever comes back is untrusted (the agent runs with the sandbox's
//! privileges): lines and frames are bounded, every wait has a timeout.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::proto::{read_frame, read_line, write_line, AgentError, Frame, Reply, Request};

/// Why a call did not get an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The agent refused, with a code to pass on.
    #[error("{0}")]
    Refused(AgentError),
    /// No agent answered (not running, hung, or it answered garbage).
    #[error("the sandbox's agent did not answer: {0}")]
    Unreachable(String),
}

/// One open request.
pub struct Conn {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

/// Connects to the agent at `socket` and sends `req`, within `timeout`.
pub async fn open(socket: &Path, req: &Request, timeout: Duration) -> Result<Conn, CallError> {
    let go = async {
        let s = UnixStream::connect(socket).await?;
        let (r, mut w) = s.into_split();
        write_line(&mut w, req).await?;
        Ok::<_, std::io::Error>(Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
        })
    };
    match tokio::time::timeout(timeout, go).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(CallError::Unreachable(format!("{}: {e}", socket.display()))),
        Err(_) => Err(CallError::Unreachable(format!(
            "no connection within {timeout:?}"
        ))),
    }
}

/// Sends `req` on `stream` (one end of a pair whose other end serves the
/// protocol), within `timeout`.
pub async fn open_on(
    stream: UnixStream,
    req: &Request,
    timeout: Duration,
) -> Result<Conn, CallError> {
    let (r, mut w) = stream.into_split();
    match tokio::time::timeout(timeout, write_line(&mut w, req)).await {
        Ok(Ok(())) => Ok(Conn {
            r: BufReader::with_capacity(64 * 1024, r),
            w,
        }),
        Ok(Err(e)) => Err(CallError::Unreachable(e.to_string())),
        Err(_) => Err(CallError::Unreachable(format!(
            "no connection within {timeout:?}"
        ))),
    }
}

impl Conn {
    /// Reads the reply line within `timeout`.
    pub async fn reply<T: DeserializeOwned>(&mut self, timeout: Duration) -> Result<T, CallError> {
        let line = tokio::time::timeout(timeout, read_line::<_, Reply>(&mut self.r)).await;
        match line {
            Ok(Ok(Some(Reply::Ok(v)))) => serde_json::from_value(v)
                .map_err(|e| CallError::Unreachable(format!("unexpected answer: {e}"))),
            Ok(Ok(Some(Reply::Err(e)))) => Err(CallError::Refused(e)),
            Ok(Ok(None)) => Err(CallError::Unreachable("it closed the connection".into())),
            Ok(Err(e)) => Err(CallError::Unreachable(e.to_string())),
            Err(_) => Err(CallError::Unreachable(format!(
                "no answer within {timeout:?}"
            ))),
        }
    }

    /// The next frame; `None` at the end.
    pub async fn frame(&mut self) -> std::io::Result<Option<Frame>> {
        read_frame(&mut self.r).await
    }

    /// Ends what the daemon sends (the body of a write or upload).
    pub async fn finish(&mut self) -> std::io::Result<()> {
        self.w.shutdown().await
    }
}

/// Sends `req` and reads its reply: for requests whose answer is one line.
pub async fn call<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<(T, Conn), CallError> {
    let mut conn = open(socket, req, timeout).await?;
    let v = conn.reply(timeout).await?;
    Ok((v, conn))
}
