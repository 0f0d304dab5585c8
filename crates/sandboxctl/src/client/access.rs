//! Reaching into a sandbox: exec (answered whole or streamed), background
//! processes, files (streamed both ways), ports and SSH keys.
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Url};
use sandboxer_api::{
    AddSshKey, ExecExit, ExecRequest, ExecResult, FileList, PortList, ProcessInfo, ProcessList,
    SendSignal, SshKey, SshKeyList, StartProcess, Written,
};

use super::error::transport_error;
use super::{api_error, check_id, to_json, Client, ClientError, REQUEST_TIMEOUT};

/// How long a streamed request may run (a transfer, a followed log): as
/// long as it takes. The connection itself still has its connect timeout.
const STREAM_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

/// One event of a streamed exec or a followed log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A chunk of standard output, as text.
    Stdout(String),
    /// A chunk of standard error, as text.
    Stderr(String),
    /// The end, with how it ended.
    Exit(ExecExit),
    /// The daemon broke the stream off (its `error` event).
    Error(String),
}

/// A stream of server-sent events, read as it comes.
pub struct EventStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    done: bool,
}

impl EventStream {
    /// The next event; `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        loop {
            if let Some(end) = find_event_end(&self.buf) {
                let raw: Vec<u8> = self.buf.drain(..end.0 + end.1).collect();
                if let Some(ev) = parse_event(&raw[..end.0]) {
                    return Ok(Some(ev));
                }
                continue;
            }
            if self.done {
                return Ok(None);
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => self.done = true,
                Err(e) => return Err(ClientError::Decode(format!("the stream broke off: {e}"))),
            }
        }
    }
}

/// Where the first event in `buf` ends: (its length, the blank line's length).
pub(super) fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// One event's lines: `event:` names it, `data:` lines join with `\n`.
/// One raw event: its name and data (`None` for a keep-alive comment or an
/// event without data).
pub(super) fn parse_raw(raw: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(raw);
    let mut name = "message".to_string();
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = v.trim_start().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    if data.is_empty() {
        return None;
    }
    Some((name, data.join("\n")))
}

fn parse_event(raw: &[u8]) -> Option<ExecEvent> {
    let (name, data) = parse_raw(raw)?;
    Some(match name.as_str() {
        "stdout" => ExecEvent::Stdout(data),
        "stderr" => ExecEvent::Stderr(data),
        "exit" => ExecEvent::Exit(serde_json::from_str(&data).unwrap_or_default()),
        "error" => ExecEvent::Error(data),
        _ => return None,
    })
}

/// A file or archive being read from a sandbox.
pub struct Download {
    resp: reqwest::Response,
    /// `File-Size` of a file (a download of a tree has none).
    pub size: Option<u64>,
}

impl Download {
    /// The next piece; `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        self.resp
            .chunk()
            .await
            .map(|c| c.map(|b| b.to_vec()))
            .map_err(|e| ClientError::Decode(format!("the download broke off: {e}")))
    }
}

impl Client {
    fn sandbox_url(
        &self,
        id: &str,
        rest: &[&str],
        query: &[(&str, String)],
    ) -> Result<Url, ClientError> {
        let id = check_id(id)?;
        let mut segments = vec!["v1", "sandboxes", id];
        segments.extend_from_slice(rest);
        Ok(self.endpoint(&segments, query))
    }

    /// Sends a request whose answer is read as it comes; a non-2xx answer
    /// is read whole and answered as its problem.
    pub(super) async fn open_stream(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
        json: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, ClientError> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers)
            .timeout(STREAM_TIMEOUT);
        if let Some(json) = &json {
            req = req.json(json);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&method, &url, &e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(resp)
    }

    /// `POST /v1/sandboxes/{id}/exec`: runs a command and answers its output.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult, ClientError> {
        let url = self.sandbox_url(id, &["exec"], &[])?;
        let body = to_json(req)?;
        // The command's own timeout bounds the answer (at most a day by default).
        let wait = req
            .timeout
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
            .unwrap_or(Duration::from_secs(60));
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        let resp = self
            .open_stream(Method::POST, url.clone(), h, None, Some(body))
            .await?;
        let read = tokio::time::timeout(wait + REQUEST_TIMEOUT, resp.bytes()).await;
        let bytes = match read {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(transport_error(&Method::POST, &url, &e)),
            Err(_) => return Err(ClientError::Decode("no answer to the exec in time".into())),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("unexpected answer to POST {url}: {e}")))
    }

    /// The same, streamed: events as the command writes, then its exit.
    pub async fn exec_stream(
        &self,
        id: &str,
        req: &ExecRequest,
    ) -> Result<EventStream, ClientError> {
        let url = self.sandbox_url(id, &["exec"], &[])?;
        let body = to_json(req)?;
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let resp = self
            .open_stream(Method::POST, url, h, None, Some(body))
            .await?;
        Ok(EventStream {
            resp,
            buf: Vec::new(),
            done: false,
        })
    }

    /// `POST /v1/sandboxes/{id}/processes`: starts a background process.
    pub async fn start_process(
        &self,
        id: &str,
        req: &StartProcess,
    ) -> Result<ProcessInfo, ClientError> {
        let url = self.sandbox_url(id, &["processes"], &[])?;
        let body = to_json(req)?;
        self.call_ok(Method::POST, url, Some(body), None).await
    }

    /// `GET /v1/sandboxes/{id}/processes`.
    pub async fn processes(&self, id: &str) -> Result<ProcessList, ClientError> {
        let url = self.sandbox_url(id, &["processes"], &[])?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/sandboxes/{id}/processes/{proc}`.
    pub async fn process(&self, id: &str, proc_id: &str) -> Result<ProcessInfo, ClientError> {
        let url = self.sandbox_url(id, &["processes", check_id(proc_id)?], &[])?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// A process's output from `offset`: (where it starts, the bytes).
    pub async fn logs(
        &self,
        id: &str,
        proc_id: &str,
        offset: u64,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let url = self.sandbox_url(
            id,
            &["processes", check_id(proc_id)?, "logs"],
            &[("offset", offset.to_string())],
        )?;
        let resp = self
            .open_stream(Method::GET, url.clone(), HeaderMap::new(), None, None)
            .await?;
        let from = resp
            .headers()
            .get("log-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(offset);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&Method::GET, &url, &e))?;
        Ok((from, bytes.to_vec()))
    }

    /// A process's output from `offset` as events, until it ends.
    pub async fn follow_logs(
        &self,
        id: &str,
        proc_id: &str,
        offset: u64,
    ) -> Result<EventStream, ClientError> {
        let url = self.sandbox_url(
            id,
            &["processes", check_id(proc_id)?, "logs"],
            &[("follow", "true".into()), ("offset", offset.to_string())],
        )?;
        let resp = self
            .open_stream(Method::GET, url, HeaderMap::new(), None, None)
            .await?;
        Ok(EventStream {
            resp,
            buf: Vec::new(),
            done: false,
        })
    }

    /// `POST …/processes/{proc}/signal`.
    pub async fn signal(
        &self,
        id: &str,
        proc_id: &str,
        signal: &str,
    ) -> Result<ProcessInfo, ClientError> {
        let url = self.sandbox_url(id, &["processes", check_id(proc_id)?, "signal"], &[])?;
        let body = to_json(&SendSignal {
            signal: signal.into(),
        })?;
        self.call_ok(Method::POST, url, Some(body), None).await
    }

    /// `GET …/files?path=`: a file's bytes, as they come.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Download, ClientError> {
        let url = self.sandbox_url(id, &["files"], &[("path", path.into())])?;
        let resp = self
            .open_stream(Method::GET, url, HeaderMap::new(), None, None)
            .await?;
        let size = resp
            .headers()
            .get("file-size")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Download { resp, size })
    }

    /// `PUT …/files?path=`: writes `body` (streamed) as the file.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        body: reqwest::Body,
    ) -> Result<Written, ClientError> {
        let mut q = vec![("path", path.to_string())];
        if let Some(m) = mode {
            q.push(("mode", format!("{:04o}", m & 0o777)));
        }
        let url = self.sandbox_url(id, &["files"], &q)?;
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let resp = self
            .open_stream(Method::PUT, url.clone(), h, Some(body), None)
            .await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&Method::PUT, &url, &e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("unexpected answer to PUT {url}: {e}")))
    }

    /// `DELETE …/files?path=`: whether something was there.
    pub async fn delete_file(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<bool, ClientError> {
        let url = self.sandbox_url(
            id,
            &["files"],
            &[("path", path.into()), ("recursive", recursive.to_string())],
        )?;
        let v: serde_json::Value = self.call_ok(Method::DELETE, url, None, None).await?;
        Ok(v["deleted"].as_bool().unwrap_or(false))
    }

    /// `GET …/files/list?path=&depth=`.
    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: u32,
    ) -> Result<FileList, ClientError> {
        let url = self.sandbox_url(
            id,
            &["files", "list"],
            &[("path", path.into()), ("depth", depth.to_string())],
        )?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `POST …/files/upload?path=`: unpacks the tar archive `body` there.
    pub async fn upload(
        &self,
        id: &str,
        path: &str,
        body: reqwest::Body,
    ) -> Result<Written, ClientError> {
        let url = self.sandbox_url(id, &["files", "upload"], &[("path", path.into())])?;
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
        let resp = self
            .open_stream(Method::POST, url.clone(), h, Some(body), None)
            .await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&Method::POST, &url, &e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode(format!("unexpected answer to POST {url}: {e}")))
    }

    /// `GET …/files/download?path=`: a tar archive of the tree, as it comes.
    pub async fn download(&self, id: &str, path: &str) -> Result<Download, ClientError> {
        let url = self.sandbox_url(id, &["files", "download"], &[("path", path.into())])?;
        let resp = self
            .open_stream(Method::GET, url, HeaderMap::new(), None, None)
            .await?;
        Ok(Download { resp, size: None })
    }

    /// `GET …/ports`.
    pub async fn ports(&self, id: &str) -> Result<PortList, ClientError> {
        let url = self.sandbox_url(id, &["ports"], &[])?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// The URL of `path` on port `port` inside the sandbox, through the daemon.
    pub fn port_url(&self, id: &str, port: u16, path: &str) -> Result<Url, ClientError> {
        let mut url = self.sandbox_url(id, &["ports", &port.to_string()], &[])?;
        let rest = path.trim_start_matches('/');
        if let Ok(mut p) = url.path_segments_mut() {
            p.extend(rest.split('/'));
        }
        Ok(url)
    }

    /// `POST …/ssh-keys`.
    pub async fn add_ssh_key(&self, id: &str, public_key: &str) -> Result<SshKey, ClientError> {
        let url = self.sandbox_url(id, &["ssh-keys"], &[])?;
        let body = to_json(&AddSshKey {
            public_key: public_key.into(),
        })?;
        self.call_ok(Method::POST, url, Some(body), None).await
    }

    /// `GET …/ssh-keys`.
    pub async fn ssh_keys(&self, id: &str) -> Result<SshKeyList, ClientError> {
        let url = self.sandbox_url(id, &["ssh-keys"], &[])?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `DELETE …/ssh-keys/{fingerprint}`.
    pub async fn remove_ssh_key(
        &self,
        id: &str,
        fingerprint: &str,
    ) -> Result<SshKeyList, ClientError> {
        let url = self.sandbox_url(id, &["ssh-keys", check_id(fingerprint)?], &[])?;
        self.call_ok(Method::DELETE, url, None, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_as_the_daemon_writes_them() {
        assert_eq!(
            parse_event(b"event: stdout\ndata: one\ndata: "),
            Some(ExecEvent::Stdout("one\n".into()))
        );
        assert_eq!(parse_event(b": keep-alive"), None);
        let exit = parse_event(b"event: exit\ndata: {\"exit_code\":3,\"signal\":null,\"timed_out\":false,\"duration_ms\":5}");
        assert!(matches!(exit, Some(ExecEvent::Exit(e)) if e.exit_code == Some(3)));
        assert_eq!(
            find_event_end(b"event: a\ndata: b\n\nevent: c"),
            Some((16, 2))
        );
        assert_eq!(find_event_end(b"event: a\ndata: b\n"), None);
    }
}
