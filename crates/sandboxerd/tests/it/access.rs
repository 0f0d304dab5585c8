//! API v1.1 "Reaching into a sandbox" on real bubblewrap, over TCP on
//! loopback only, as a harness on another machine would: exec, background
//! processes, files, ports. No nsenter, no host paths. Hostile input is
//! tried alongside the polite path.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use sandboxer_testkit as testkit;
use testkit::{local_shell, require_bwrap, Daemon, TestDir};

/// One sandbox's access routes.
struct Sbx {
    http: reqwest::Client,
    base: String,
    id: String,
}

impl Sbx {
    async fn new(d: &Daemon) -> Sbx {
        let sbx = testkit::ready_sandbox(&d.client, &local_shell()).await;
        Sbx::of(d, &sbx.id)
    }

    fn of(d: &Daemon, id: &str) -> Sbx {
        Sbx {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            base: format!("{}/v1/sandboxes/{id}", d.url),
            id: id.to_string(),
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}{rest}", self.base)
    }

    async fn exec(&self, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/exec"))
            .json(&body)
            .send()
            .await
            .expect("exec");
        let status = r.status();
        (status, r.json().await.expect("json"))
    }

    /// Runs `sh -c script`, which must exit 0; its stdout.
    async fn sh(&self, script: &str) -> String {
        let (status, v) = self.exec(json!({ "cmd": script })).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["exit_code"], 0, "{script}: {v}");
        v["stdout"].as_str().unwrap_or_default().to_string()
    }

    async fn put(&self, path: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .http
            .put(self.url("/files"))
            .query(&[("path", path)])
            .body(bytes)
            .send()
            .await
            .expect("put");
        let status = r.status();
        (status, r.json().await.expect("json"))
    }

    async fn get(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let r = self
            .http
            .get(self.url("/files"))
            .query(&[("path", path)])
            .send()
            .await
            .expect("get");
        let status = r.status();
        (status, r.bytes().await.expect("body").to_vec())
    }

    async fn upload(&self, path: &str, tar: Vec<u8>) -> (StatusCode, Value) {
        let r = self
            .http
            .post(self.url("/files/upload"))
            .query(&[("path", path)])
            .header("content-type", "application/x-tar")
            .body(tar)
            .send()
            .await
            .expect("upload");
        let status = r.status();
        (status, r.json().await.expect("json"))
    }
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or_default()
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    // xorshift: every byte value, no runs.
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_answers_exit_codes_output_stdin_cwd_env_and_kills_its_tree_on_timeout() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;

    let (status, v) = s
        .exec(json!({"cmd": ["sh", "-c", "echo out; echo err >&2; exit 7"]}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        (v["exit_code"].as_i64(), v["signal"].as_str()),
        (Some(7), None)
    );
    assert_eq!(
        (v["stdout"].as_str(), v["stderr"].as_str()),
        (Some("out\n"), Some("err\n"))
    );
    assert_eq!(v["timed_out"], false);

    let (_, v) = s
        .exec(json!({"cmd": "cat; pwd; echo $GREETING", "stdin": "from stdin\n", "cwd": "/tmp", "env": {"GREETING": "hello"}}))
        .await;
    assert_eq!(v["stdout"], "from stdin\n/tmp\nhello\n", "{v}");

    // The daemon's environment never reaches the sandbox.
    let env = s.sh("env").await;
    assert!(env.contains("SANDBOX_ID="), "{env}");
    for leak in [
        "RUST_LOG",
        "CARGO",
        "SANDBOXER_",
        "SSH_AUTH_SOCK",
        "USER=root",
    ] {
        assert!(!env.contains(leak), "{leak} leaked into the sandbox: {env}");
    }

    // The whole tree goes at the timeout, a process that ignores TERM and a
    // backgrounded child in a new session included.
    let (_, v) = s
        .exec(json!({"cmd": "trap '' TERM; (setsid sleep 300 &); sleep 300 & sleep 301", "timeout": "1s"}))
        .await;
    assert_eq!(
        (v["timed_out"].as_bool(), v["signal"].as_str()),
        (Some(true), Some("KILL")),
        "{v}"
    );
    let left = s
        .sh("for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done")
        .await;
    assert!(
        !left.contains("sleep 30"),
        "processes outlived the timeout: {left}"
    );

    // The agent (pid 2) is not dumpable: its descriptors, memory and
    // environment are out of the tenant's reach.
    let (_, v) = s
        .exec(json!({"cmd": "cat /proc/2/cmdline >/dev/null; ls /proc/2/fd; cat /proc/2/environ"}))
        .await;
    assert_ne!(v["exit_code"], 0, "{v}");
    assert!(
        v["stderr"].as_str().unwrap().contains("Permission denied"),
        "{v}"
    );

    // Invalid bytes are replaced, not an error.
    let (_, v) = s.exec(json!({"cmd": "printf 'a\\377b'"})).await;
    assert_eq!(v["stdout"], "a\u{fffd}b");

    // Every process it starts has the sandbox's privileges.
    let status = s
        .sh("grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status")
        .await;
    assert!(status.contains("CapEff:\t0000000000000000"), "{status}");
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(status.contains("Seccomp:\t2"), "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_exec_delivers_output_as_it_is_written() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;
    // The command waits for a file that only this test makes, after it has
    // seen the first chunk: the chunk cannot have come at the end.
    let r = s
        .http
        .post(s.url("/exec"))
        .header("accept", "text/event-stream")
        .json(&json!({"cmd": "echo first; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo second >&2; exit 3", "timeout": "60s"}))
        .send()
        .await
        .expect("exec");
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut body = r.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("data: first") {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .expect("first chunk in time")
            .expect("stream open")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: stdout"), "{seen}");
    assert!(!seen.contains("event: exit"), "{seen}");
    s.sh("touch /tmp/go").await;
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
    }
    assert!(seen.contains("event: stderr\ndata: second"), "{seen}");
    let exit = seen
        .split("event: exit\ndata: ")
        .nth(1)
        .expect("an exit event");
    let exit: Value = serde_json::from_str(exit.lines().next().unwrap()).expect("exit json");
    assert_eq!(exit["exit_code"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_background_server_is_reached_through_the_port_proxy_and_its_logs_resume() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;
    let (status, _) = s
        .put(
            "/workspace/site/hello.txt",
            b"hello through the proxy".to_vec(),
        )
        .await;
    assert_eq!(status, 201);
    let r = s
        .http
        .post(s.url("/processes"))
        .json(&json!({"cmd": "cd /workspace/site && exec python3 -u -m http.server 8080 --bind 127.0.0.1", "tag": "web"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let proc_: Value = r.json().await.unwrap();
    assert_eq!(
        (proc_["state"].as_str(), proc_["tag"].as_str()),
        (Some("running"), Some("web"))
    );
    let pid = proc_["id"].as_str().unwrap().to_string();

    // Listed once it listens.
    let mut listed = false;
    for _ in 0..200 {
        let ports: Value = s
            .http
            .get(s.url("/ports"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ports["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 8080)
        {
            listed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed, "port 8080 never listed");

    let r = s
        .http
        .get(s.url("/ports/8080/hello.txt?x=1"))
        .bearer_auth("not-for-the-sandbox")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "hello through the proxy");
    let r = s
        .http
        .get(s.url("/ports/8080/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the server's own answer passes through");
    let r = s.http.get(s.url("/ports/8081/")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(code(&r.json().await.unwrap()), "port_closed");

    // Its log holds the requests; reading from an offset gives the rest.
    let r = s
        .http
        .get(s.url(&format!("/processes/{pid}/logs")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["log-offset"], "0");
    let all = r.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&all).contains("GET /hello.txt?x=1"),
        "{all:?}"
    );
    let r = s
        .http
        .get(s.url(&format!("/processes/{pid}/logs?offset=10")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), all[10..]);

    // Followed: events until it ends, each with the offset after it.
    let follow = s
        .http
        .get(s.url(&format!(
            "/processes/{pid}/logs?follow=true&offset={}",
            all.len()
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let r = s
        .http
        .post(s.url(&format!("/processes/{pid}/signal")))
        .json(&json!({"signal": "TERM"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = tokio::time::timeout(Duration::from_secs(30), follow.text())
        .await
        .expect("the stream ends with the process")
        .unwrap();
    assert!(text.contains("event: exit"), "{text}");
    let info: Value = s
        .http
        .get(s.url(&format!("/processes/{pid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["state"], "exited");
    assert_eq!(info["signal"], "TERM", "{info}");
}

/// A WebSocket echo server in Python's standard library (no `websockets` module here).
const WS_ECHO: &str = r#"
import base64, hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 9000)); s.listen(4)
while True:
    c, _ = s.accept(); req = b""
    while b"\r\n\r\n" not in req: req += c.recv(4096)
    key = [l.split(b":", 1)[1].strip() for l in req.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    h = c.recv(2); n = h[1] & 127; mask = c.recv(4); data = bytearray(c.recv(n))
    for i in range(n): data[i] ^= mask[i % 4]
    c.sendall(bytes([0x81, n]) + bytes(data)); c.close()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_pass_through_the_port_proxy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;
    s.put("/workspace/ws.py", WS_ECHO.as_bytes().to_vec()).await;
    let r = s
        .http
        .post(s.url("/processes"))
        .json(&json!({"cmd": ["python3", "/workspace/ws.py"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for _ in 0..200 {
        let ports: Value = s
            .http
            .get(s.url("/ports"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ports["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == 9000)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr = d.url.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!(
        "GET /v1/sandboxes/{}/ports/9000/chat HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        s.id
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    // A masked text frame "ping", echoed back unmasked.
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 4];
    frame.extend_from_slice(&mask);
    frame.extend(b"ping".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame).await.unwrap();
    let mut back = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&back, b"\x81\x04ping");
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_and_their_logs_survive_kill_9_of_the_daemon() {
    require_bwrap();
    let dir = TestDir::new();
    let mut d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;
    let r = s
        .http
        .post(s.url("/processes"))
        .json(&json!({"cmd": "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done"}))
        .send()
        .await
        .unwrap();
    let p: Value = r.json().await.unwrap();
    let pid = p["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    d.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::of(&d, &s.id);
    let info: Value = s
        .http
        .get(s.url(&format!("/processes/{pid}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["state"], "running", "{info}");
    let log = s
        .http
        .get(s.url(&format!("/processes/{pid}/logs")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(log.starts_with("tick 0\ntick 1\n"), "{log}");
    // It kept running while no daemon was there: more ticks than 300 ms alone give.
    let ticks = log.lines().count();
    assert!(ticks >= 8, "{ticks} ticks: {log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_byte_exact_small_and_200_mib_streamed() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;

    let one = pattern(1 << 20, 7);
    let (status, v) = s.put("/workspace/deep/er/one.bin", one.clone()).await;
    assert_eq!(
        (status, v["written"].as_u64()),
        (StatusCode::CREATED, Some(1 << 20))
    );
    let (status, got) = s.get("deep/er/one.bin").await;
    assert_eq!(status, 200);
    assert!(got == one, "1 MiB came back different");
    assert_eq!(
        s.sh("sha256sum /workspace/deep/er/one.bin | cut -c1-16")
            .await
            .len(),
        17
    );

    // 200 MiB, streamed both ways (the daemon never holds it whole).
    let big_len: usize = 200 << 20;
    let chunk = pattern(1 << 20, 11);
    let body = futures::stream::iter((0..200).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let r = s
        .http
        .put(s.url("/files"))
        .query(&[("path", "/workspace/big.bin"), ("mode", "0600")])
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s
        .http
        .get(s.url("/files"))
        .query(&[("path", "/workspace/big.bin")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["file-mode"], "0600");
    let mut stream = r.bytes_stream();
    let chunk = pattern(1 << 20, 11);
    let mut n = 0usize;
    while let Some(b) = stream.next().await {
        let b = b.unwrap();
        for (i, byte) in b.iter().enumerate() {
            assert_eq!(*byte, chunk[(n + i) % chunk.len()], "byte {}", n + i);
        }
        n += b.len();
    }
    assert_eq!(n, big_len);

    // Delete: idempotent; a directory only with `recursive`.
    let del = |p: &str, rec: bool| {
        s.http
            .delete(s.url("/files"))
            .query(&[("path", p.to_string()), ("recursive", rec.to_string())])
            .send()
    };
    let r = del("/workspace/deep", false).await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(code(&r.json().await.unwrap()), "is_a_directory");
    let r: Value = del("/workspace/deep", true)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["deleted"], true);
    let r: Value = del("/workspace/deep", true)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["deleted"], false);
    let (status, _) = s.get("/workspace/deep/er/one.bin").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ten_thousand_file_tree_uploads_and_downloads_as_tar() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;
    let mut b = tar::Builder::new(Vec::new());
    for i in 0..10_000u32 {
        let data = format!("file {i}\n");
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("d{}/f{i}.txt", i % 100), data.as_bytes())
            .unwrap();
    }
    let tar_bytes = b.into_inner().unwrap();
    let (status, v) = s.upload("/workspace/tree", tar_bytes).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["entries"], 10_000);
    assert_eq!(
        s.sh("find /workspace/tree -type f | wc -l").await.trim(),
        "10000"
    );

    let r = s
        .http
        .get(s.url("/files/download"))
        .query(&[("path", "/workspace/tree")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-tar");
    let bytes = r.bytes().await.unwrap();
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut files = 0;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() == tar::EntryType::Regular {
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            let i: u32 = name
                .rsplit('/')
                .next()
                .unwrap()
                .trim_start_matches('f')
                .trim_end_matches(".txt")
                .parse()
                .unwrap();
            assert_eq!(text, format!("file {i}\n"));
            files += 1;
        }
    }
    assert_eq!(files, 10_000);

    let r = s
        .http
        .get(s.url("/files/list"))
        .query(&[("path", "/workspace/tree"), ("depth", "2")])
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    // 10,100 entries, listed up to `[access] list_max_entries` (10,000).
    assert_eq!(list["items"].as_array().unwrap().len(), 10_000);
    assert_eq!(list["truncated"], true);
    let r = s
        .http
        .get(s.url("/files/list"))
        .query(&[("path", "/workspace/tree/d7")])
        .send()
        .await
        .unwrap();
    let list: Value = r.json().await.unwrap();
    assert_eq!(
        (
            list["items"].as_array().unwrap().len(),
            list["truncated"].as_bool()
        ),
        (100, Some(false))
    );
    assert_eq!(
        list["items"][0]["name"], "f1007.txt",
        "sorted by name: {}",
        list["items"][0]
    );
}

/// A tar archive with one raw entry (names and kinds a polite builder refuses).
fn raw_tar(entries: &[(&str, tar::EntryType, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(if *kind == tar::EntryType::Regular {
            2
        } else {
            0
        });
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_cksum();
        let data: &[u8] = if *kind == tar::EntryType::Regular {
            b"x\n"
        } else {
            b""
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn file_routes_never_reach_a_host_file() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = Sbx::new(&d).await;
    // A secret on the host, next to the daemon's data.
    let secret = dir.path().join("host-secret.txt");
    std::fs::write(&secret, "host secret").unwrap();
    let secret = secret.to_string_lossy().into_owned();
    let db = d
        .data_dir
        .join("sandboxer.db")
        .to_string_lossy()
        .into_owned();

    s.sh(&format!(
        "ln -s {secret} /workspace/to-secret; ln -s /etc/shadow /workspace/to-shadow; ln -s / /workspace/to-root; ln -s {db} /workspace/to-db; mkfifo /workspace/fifo"
    ))
    .await;
    for path in [
        secret.as_str(),
        "/workspace/to-secret",
        "/workspace/to-db",
        db.as_str(),
        "/workspace/../../../../root/.bashrc",
    ] {
        let (status, body) = s.get(path).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
    }
    // The host's shadow file is /dev/null in the sandbox (on a nodev mount):
    // refused as a device, or not even opened.
    let (status, body) = s.get("/workspace/to-shadow").await;
    let v: Value = serde_json::from_slice(&body).expect("a problem, not a file");
    assert!(
        matches!(
            (status.as_u16(), code(&v)),
            (409, "not_a_file") | (403, "permission_denied")
        ),
        "{v}"
    );
    // A fifo or a device would hang or never end: refused at once.
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), s.get("/workspace/fifo"))
        .await
        .expect("no hang");
    assert_eq!(
        (
            status.as_u16(),
            code(&serde_json::from_slice(&body).unwrap())
        ),
        (409, "not_a_file")
    );
    for path in ["/dev/zero", "/dev/urandom"] {
        let (status, body) = tokio::time::timeout(Duration::from_secs(20), s.get(path))
            .await
            .expect("no hang");
        let v: Value = serde_json::from_slice(&body).expect("a problem, not an endless body");
        assert!(matches!(status.as_u16(), 403 | 409), "{path}: {v}");
    }
    // Writes through a symlink to the sandbox's root hit its read-only view.
    for path in [
        "/workspace/to-root/etc/sandboxer-escape",
        "/etc/sandboxer-escape",
        "/usr/sandboxer-escape",
    ] {
        let (status, v) = s.put(path, b"x".to_vec()).await;
        assert_eq!(status, 403, "{path}: {v}");
    }
    assert!(!Path::new("/etc/sandboxer-escape").exists());
    assert!(!Path::new("/usr/sandboxer-escape").exists());
    // A write over the symlink replaces the link, not its target.
    let (status, _) = s.put("/workspace/to-secret", b"mine".to_vec()).await;
    assert_eq!(status, 201);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret");

    // Archives: every entry that would land outside, refused by name.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            raw_tar(&[("../../escape-dotdot", tar::EntryType::Regular, None)]),
        ),
        (
            "absolute",
            raw_tar(&[("/tmp/escape-absolute", tar::EntryType::Regular, None)]),
        ),
        (
            "hard link out",
            raw_tar(&[("h", tar::EntryType::Link, Some("../../../etc/passwd"))]),
        ),
        (
            "absolute hard link",
            raw_tar(&[("h", tar::EntryType::Link, Some("/etc/passwd"))]),
        ),
        ("device", raw_tar(&[("dev", tar::EntryType::Char, None)])),
        ("fifo", raw_tar(&[("f", tar::EntryType::Fifo, None)])),
        (
            "through a symlink",
            raw_tar(&[
                ("ln", tar::EntryType::Symlink, Some("/tmp")),
                ("ln/escape-link", tar::EntryType::Regular, None),
            ]),
        ),
    ];
    for (what, tar_bytes) in cases {
        let (status, v) = s.upload("/workspace/up", tar_bytes).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::UNPROCESSABLE_ENTITY, "unsafe_path"),
            "{what}: {v}"
        );
    }
    let inside = s.sh("ls /tmp /workspace").await;
    assert!(!inside.contains("escape"), "{inside}");
    assert!(!Path::new("/tmp/escape-absolute").exists());
    assert!(!dir.path().join("escape-dotdot").exists());
    assert!(!d.data_dir.join("sandboxes").join("escape-dotdot").exists());

    // setuid bits never come from a write or an archive.
    let (status, _) = s
        .http
        .put(s.url("/files"))
        .query(&[("path", "/workspace/suid"), ("mode", "4755")])
        .body("x")
        .send()
        .await
        .map(|r| (r.status(), ()))
        .unwrap();
    assert_eq!(status, 201);
    assert_eq!(s.sh("stat -c %a /workspace/suid").await.trim(), "755");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_clear_problem_never_a_500_or_a_hang() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!()
        .env("SANDBOXER_ACCESS__EXEC_OUTPUT_MAX", "1KiB")
        .env("SANDBOXER_ACCESS__FILE_MAX", "1MiB")
        .start(dir.path());
    let s = Sbx::new(&d).await;
    let post = |path: &str, body: Value| s.http.post(s.url(path)).json(&body).send();
    let expect = |r: reqwest::Response, status: u16, c: &'static str| async move {
        let got = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_eq!((got, code(&v)), (status, c), "{v}");
        v
    };

    let v = expect(
        post("/exec", json!({"cmd": []})).await.unwrap(),
        422,
        "invalid_command",
    )
    .await;
    assert_eq!(v["field"], "cmd");
    expect(
        post("/exec", json!({"cmd": ""})).await.unwrap(),
        422,
        "invalid_command",
    )
    .await;
    expect(
        post("/exec", json!({"cmd": ["/no/such/program"]}))
            .await
            .unwrap(),
        422,
        "command_not_found",
    )
    .await;
    expect(
        post("/exec", json!({"cmd": "true", "cwd": "/nowhere"}))
            .await
            .unwrap(),
        422,
        "invalid_cwd",
    )
    .await;
    expect(
        post("/exec", json!({"cmd": "true", "timeout": "soon"}))
            .await
            .unwrap(),
        422,
        "invalid_duration",
    )
    .await;
    expect(
        post("/exec", json!({"cmd": "true", "env": {"A=B": "x"}}))
            .await
            .unwrap(),
        422,
        "invalid_env",
    )
    .await;
    let r = post("/exec", json!({"cmd": "true", "surprise": 1}))
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "an unknown field is refused");

    // Output over the cap: cut, flagged, the command still ran to its end.
    let (_, v) = s
        .exec(json!({"cmd": "head -c 100000 /dev/zero | tr '\\0' a; echo done >&2"}))
        .await;
    assert_eq!(v["stdout"].as_str().unwrap().len(), 1024);
    assert_eq!(
        (v["stdout_truncated"].as_bool(), v["stderr"].as_str()),
        (Some(true), Some("done\n")),
        "{v}"
    );

    let r = s
        .http
        .get(s.url("/processes/proc_nope"))
        .send()
        .await
        .unwrap();
    expect(r, 404, "process_not_found").await;
    let r = s
        .http
        .get(s.url("/processes/proc_nope/logs"))
        .send()
        .await
        .unwrap();
    expect(r, 404, "process_not_found").await;
    expect(
        post("/processes/proc_nope/signal", json!({"signal": "STOP"}))
            .await
            .unwrap(),
        422,
        "invalid_signal",
    )
    .await;
    expect(
        post("/processes/proc_nope/signal", json!({"signal": "TERM"}))
            .await
            .unwrap(),
        404,
        "process_not_found",
    )
    .await;

    let (status, body) = s.get("").await;
    assert_eq!(
        (
            status.as_u16(),
            code(&serde_json::from_slice(&body).unwrap())
        ),
        (422, "invalid_path")
    );
    let (status, body) = s.get("/workspace").await;
    assert_eq!(
        (
            status.as_u16(),
            code(&serde_json::from_slice(&body).unwrap())
        ),
        (409, "is_a_directory")
    );
    let r = s.http.get(s.url("/files")).send().await.unwrap();
    assert_eq!(r.status(), 400, "path is required");
    let r = s
        .http
        .get(s.url("/files/list"))
        .query(&[("path", "/workspace"), ("depth", "99")])
        .send()
        .await
        .unwrap();
    expect(r, 422, "invalid_depth").await;
    let r = s
        .http
        .put(s.url("/files"))
        .query(&[("path", "/workspace/m"), ("mode", "999")])
        .body("x")
        .send()
        .await
        .unwrap();
    expect(r, 422, "invalid_mode").await;
    let (status, v) = s.put("/workspace/too-big", vec![0u8; (1 << 20) + 1]).await;
    assert_eq!((status.as_u16(), code(&v)), (413, "payload_too_large"));
    let (status, _) = s.get("/workspace/too-big").await;
    assert_eq!(status, 404, "nothing half-written is left");
    assert!(
        !s.sh("ls -a /workspace").await.contains(".part"),
        "no temporary file is left"
    );

    // A body the client breaks off leaves the file as it was.
    let (status, _) = s.put("/workspace/kept", b"original".to_vec()).await;
    assert_eq!(status, 201);
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(vec![b'x'; 1000]),
        Err(std::io::Error::other("client gone")),
    ];
    let r = s
        .http
        .put(s.url("/files"))
        .query(&[("path", "/workspace/kept")])
        .body(reqwest::Body::wrap_stream(futures::stream::iter(parts)))
        .send()
        .await;
    assert!(
        r.map(|r| r.status() != 201).unwrap_or(true),
        "a broken body is not written"
    );
    assert_eq!(s.get("/workspace/kept").await.1, b"original");
    assert!(
        !s.sh("ls -a /workspace").await.contains(".part"),
        "no temporary file is left"
    );

    let (status, v) = s
        .upload(
            "/workspace/x",
            b"this is not a tar archive, it is only text".repeat(20),
        )
        .await;
    assert_eq!((status.as_u16(), code(&v)), (422, "invalid_archive"), "{v}");
    let r = s
        .http
        .post(s.url("/files/upload"))
        .query(&[("path", "/workspace")])
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    expect(r, 415, "unsupported_media_type").await;
    let r = s.http.get(s.url("/ports/0/")).send().await.unwrap();
    expect(r, 422, "invalid_port").await;
    let r = s.http.get(s.url("/ports/http/")).send().await.unwrap();
    expect(r, 422, "invalid_port").await;

    let other = Sbx::of(&d, "sbx_01NOSUCHSANDBOX0000000000");
    expect(
        other
            .http
            .post(other.url("/exec"))
            .json(&json!({"cmd": "true"}))
            .send()
            .await
            .unwrap(),
        404,
        "sandbox_not_found",
    )
    .await;

    // Destroyed: 409, whatever the route.
    d.client.destroy(&s.id, None).await.expect("destroy");
    expect(
        post("/exec", json!({"cmd": "true"})).await.unwrap(),
        409,
        "invalid_state",
    )
    .await;
    let r = s
        .http
        .get(s.url("/files"))
        .query(&[("path", "/workspace/a")])
        .send()
        .await
        .unwrap();
    expect(r, 409, "invalid_state").await;
    let r = s.http.get(s.url("/ports")).send().await.unwrap();
    expect(r, 409, "invalid_state").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_execs_on_one_sandbox_all_answer() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let s = std::sync::Arc::new(Sbx::new(&d).await);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.exec(json!({"cmd": ["echo", i.to_string()]})).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["stdout"], format!("{i}\n"));
    }
    // Activity was recorded: a ready sandbox is now active.
    let sbx = d.client.get(&s.id, None).await.expect("get");
    assert_eq!(sbx.state, sandboxctl::api::SandboxState::Active);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_daemon_serves_every_route() {
    require_bwrap();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to start the daemon as another user");
        return;
    }
    let stage = TestDir::new();
    let (uid, gid) = (4244u32, 4244u32);
    let data = stage.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for p in [stage.path(), data.as_path()] {
        std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
    }
    let d = testkit::daemon!().user((uid, gid)).start(&data);
    let s = Sbx::new(&d).await;
    assert_eq!(s.sh("echo $((6*7))").await, "42\n");
    let (status, _) = s.put("/workspace/f", b"unprivileged".to_vec()).await;
    assert_eq!(status, 201);
    assert_eq!(s.get("/workspace/f").await.1, b"unprivileged");
    let (status, v) = s
        .upload(
            "/workspace/t",
            raw_tar(&[("a.txt", tar::EntryType::Regular, None)]),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let r = s
        .http
        .get(s.url("/files/download"))
        .query(&[("path", "/workspace/t")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .post(s.url("/processes"))
        .json(&json!({"cmd": "sleep 30"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = s.http.get(s.url("/ports")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Nothing it writes is the host's /etc.
    let (status, _) = s.put("/etc/unprivileged-escape", b"x".to_vec()).await;
    assert_eq!(status, 403);
    assert!(!Path::new("/etc/unprivileged-escape").exists());
}
