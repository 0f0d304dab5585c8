//! Findings of the hostile-tenant review, each with the regression test
//! that failed before its fix: writes on a full disk (4), two daemons on
//! one data dir (9), host-path inputs (8), label filters (10), and idle,
//! slow and too many connections (11).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sandboxctl::api::CreateSandbox;
use sandboxctl::Method;

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, token_block, Daemon, TestDir};

const CONSUMER: &str = "sbt_hardening_consumer_token_for_tests_only_000000000000000000000";
const OTHER: &str = "sbt_hardening_other_token_for_tests_only_1111111111111111111111111";
const OPERATOR: &str = "sbt_hardening_operator_token_for_tests_only_22222222222222222222222";

/// Write `toml` as the config file under `dir`; answers its path.
fn config(dir: &Path, toml: &str) -> String {
    let path = dir.join("sandboxerd.toml");
    std::fs::write(&path, toml).expect("write config");
    path.to_string_lossy().into_owned()
}

/// The host (`Host:` header) of a daemon's URL.
fn addr(d: &Daemon) -> String {
    d.url.trim_start_matches("http://").to_owned()
}

/// Read from `s` until the peer closes (`Ok(bytes)`), or `Err` with what was
/// read when `limit` passes first.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(got);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200))))
            .expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Reset by the peer: closed all the same.
            Err(_) => return Ok(got),
        }
    }
}

/// Send one keep-alive `GET path` on `s` and read its whole answer (the
/// daemon answers JSON with a content-length).
fn get_on(s: &mut TcpStream, host: &str, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").expect("send");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).expect("read answer");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

// ---- Finding 10: label filters ------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn more_than_64_label_filters_are_a_400_naming_label() {
    let dir = TestDir::new();
    let d = testkit::daemon!().start(&dir.path().join("data"));
    let query = |n: usize| {
        let labels: Vec<String> = (0..n).map(|i| format!("label=k{i}%3Dv")).collect();
        format!("/v1/sandboxes?{}", labels.join("&"))
    };
    let (status, body) = d
        .client
        .request_json(Method::GET, &query(65), None)
        .await
        .expect("call");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_query", "{body}");
    assert_eq!(body["field"], "label", "{body}");
    let (status, body) = d
        .client
        .request_json(Method::GET, &query(64), None)
        .await
        .expect("call");
    assert_eq!(status, 200, "{body}");
    let (status, body) = d
        .client
        .request_json(Method::GET, &query(1000), None)
        .await
        .expect("call");
    assert_eq!(status, 400, "1,000 filters were a 500 before: {body}");
}

// ---- Finding 9: one daemon per data dir ----------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_second_daemon_on_the_same_data_dir_refuses_to_start() {
    let dir = TestDir::new();
    let data = dir.path().join("data");
    let first = testkit::daemon!().start(&data);
    let first_pid = first.child.id();
    let out = testkit::daemon_bin!()
        .command()
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second daemon");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(out.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the second daemon must exit at once, not serve")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second daemon exited 0: {stderr}");
    assert!(
        stderr.contains(&data.display().to_string()),
        "the error names the data dir: {stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {first_pid}")),
        "the error names the first daemon's pid {first_pid}: {stderr}"
    );
    // The first one is unaffected.
    assert_eq!(first.client.ready().await.expect("readyz").status, "ok");
    let (status, _) = first
        .client
        .create(&testkit::local_shell(), None, None)
        .await
        .expect("the first daemon still creates");
    assert_eq!(status, 202);
}

// ---- Finding 11: connection limits ---------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_request_header_is_cut_after_the_header_timeout() {
    let dir = TestDir::new();
    let cfg = config(
        dir.path(),
        "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"60s\"\n",
    );
    let d = testkit::daemon!()
        .args(["--config", &cfg])
        .start(&dir.path().join("data"));
    let host = addr(&d);
    let mut s = TcpStream::connect(&host).expect("connect");
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").expect("send");
    let started = Instant::now();
    let closed = read_until_closed(&mut s, Duration::from_secs(8));
    assert!(
        closed.is_ok(),
        "a connection with half a header was still open after 8s"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
    // A whole request on a fresh connection is served as before.
    let mut s = TcpStream::connect(&host).expect("connect");
    assert!(get_on(&mut s, &host, "/healthz").starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_but_a_long_poll_is_not() {
    require_bwrap();
    let dir = TestDir::new();
    let cfg = config(
        dir.path(),
        "[limits]\nheader_read_timeout = \"30s\"\nidle_timeout = \"1s\"\n",
    );
    let d = testkit::daemon!()
        .args(["--config", &cfg])
        .start(&dir.path().join("data"));
    let host = addr(&d);
    let mut s = TcpStream::connect(&host).expect("connect");
    assert!(get_on(&mut s, &host, "/healthz").starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    assert!(
        read_until_closed(&mut s, Duration::from_secs(8)).is_ok(),
        "an idle keep-alive connection was still open after 8s"
    );
    assert!(started.elapsed() >= Duration::from_millis(800));

    // A request in flight for longer than the idle timeout is not cut.
    let (_, sbx) = d
        .client
        .create(&testkit::local_shell(), Some(Duration::from_secs(30)), None)
        .await
        .expect("create");
    let mut s = TcpStream::connect(&host).expect("connect");
    let started = Instant::now();
    let answer = get_on(
        &mut s,
        &host,
        &format!("/v1/sandboxes/{}?wait_for=destroyed&timeout=3s", sbx.id),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the long-poll should have waited its 3s"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_per_client_cap_are_refused_and_the_others_keep_working() {
    let dir = TestDir::new();
    let cfg = config(dir.path(), "[limits]\nmax_connections_per_client = 5\n");
    let d = testkit::daemon!()
        .args(["--config", &cfg])
        .start(&dir.path().join("data"));
    let host = addr(&d);
    let mut open: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(&host).expect("connect"))
        .collect();
    // Each of the five is accepted and served.
    for s in &mut open {
        assert!(get_on(s, &host, "/healthz").starts_with("HTTP/1.1 200"));
    }
    let mut sixth = TcpStream::connect(&host).expect("the kernel accepts the TCP handshake");
    let _ = write!(sixth, "GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let answer = read_until_closed(&mut sixth, Duration::from_secs(5))
        .expect("the sixth connection is closed at once");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 429"),
        "{answer}"
    );
    assert!(answer.contains("too_many_connections"), "{answer}");
    // The first five still work.
    for s in &mut open {
        assert!(get_on(s, &host, "/healthz").starts_with("HTTP/1.1 200"));
    }
    // Once one closes, a new one is taken.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = TcpStream::connect(&host).expect("connect");
    assert!(get_on(&mut again, &host, "/healthz").starts_with("HTTP/1.1 200"));
}

// ---- Finding 8: host-path inputs -----------------------------------------

/// A profiles dir with `profile.copy-shell`: local-shell whose workspace is
/// a copy of input `repo`.
fn copy_profile(dir: &Path) -> String {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = std::fs::read_to_string(testkit::repo_root().join("profiles/local-shell.yaml"))
        .expect("profile");
    std::fs::write(profiles.join("local-shell.yaml"), &text).expect("write");
    let copy = text
        .replace("profile.local-shell", "profile.copy-shell")
        .replace(
            "workspace:\n  mode: empty\n",
            "workspace:\n  mode: copy\n  from_input: repo\ninputs:\n  repo:\n    required: true\n",
        );
    assert!(
        copy.contains("from_input: repo"),
        "local-shell.yaml changed shape"
    );
    std::fs::write(profiles.join("copy-shell.yaml"), copy).expect("write");
    profiles.to_string_lossy().into_owned()
}

fn copy_of(repo: &str) -> CreateSandbox {
    CreateSandbox {
        profile: "profile.copy-shell".into(),
        inputs: BTreeMap::from([("repo".to_owned(), repo.to_owned())]),
        ..CreateSandbox::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_paths_resolve_only_under_input_roots_and_never_reveal_the_host() {
    require_bwrap();
    let dir = TestDir::new();
    let root = dir.path().canonicalize().expect("canonical");
    let repo = root.join("repos/a");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("hello.txt"), "hi").expect("write");
    std::os::unix::fs::symlink("/etc", root.join("repos/etc-link")).expect("symlink");
    let profiles = copy_profile(&root);
    let data = root.join("data");
    // The root holds the data dir too: paths inside it are refused all the same.
    let mut toml = format!("input_roots = [\"{}\"]\n\n", root.display());
    toml.push_str(&token_block(CONSUMER, "a-agent", "a", "consumer"));
    toml.push_str(&token_block(OTHER, "b-agent", "b", "consumer"));
    let cfg = config(&root, &toml);
    let d = testkit::daemon!()
        .args(["--config", &cfg, "--profiles", &profiles])
        .start(&data);
    let a = d.client_with(CONSUMER);
    let b = d.client_with(OTHER);

    // Under the root: accepted and stored as its canonical path.
    let (_, sbx) = a
        .create(
            &copy_of(&format!("{}/repos/./a/../a", root.display())),
            Some(Duration::from_secs(30)),
            None,
        )
        .await
        .expect("a path under a root");
    assert_eq!(sbx.inputs["repo"], repo.display().to_string());
    assert_eq!(sbx.state, sandboxctl::api::SandboxState::Ready, "{sbx:?}");

    let refusal = |e: sandboxctl::ClientError| -> String {
        assert_eq!(
            (e.status(), e.code()),
            (Some(422), Some("invalid_input")),
            "{e}"
        );
        e.to_string()
    };
    let missing = refusal(
        a.create(&copy_of("/nonexistent/path/for/sure"), None, None)
            .await
            .expect_err("nonexistent"),
    );
    // The workspace of A's sandbox lives in the data dir.
    let in_data = data.join("sandboxes");
    for path in [
        "../../../../../etc".to_owned(),
        "../../etc".to_owned(),
        "/etc".to_owned(),
        "/root/.ssh".to_owned(),
        format!("{}/repos/../../../../etc", root.display()),
        format!("{}/repos/etc-link", root.display()),
        data.display().to_string(),
        in_data.display().to_string(),
        "repos/a".to_owned(),
    ] {
        let err = b
            .create(&copy_of(&path), None, None)
            .await
            .expect_err(&path);
        assert_eq!(
            refusal(err),
            missing,
            "`{path}` must be refused exactly like a path that does not exist"
        );
    }
    // Nothing was provisioned for the refused creates.
    let listed = b.list(&Default::default()).await.expect("list");
    assert!(listed.items.is_empty(), "{:?}", listed.items);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_input_roots_only_operators_pass_host_paths() {
    require_bwrap();
    let dir = TestDir::new();
    let root = dir.path().canonicalize().expect("canonical");
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("hello.txt"), "hi").expect("write");
    let profiles = copy_profile(&root);
    let mut toml = token_block(CONSUMER, "a-agent", "a", "consumer");
    toml.push_str(&token_block(OPERATOR, "ops", "ops", "operator"));
    let cfg = config(&root, &toml);
    let d = testkit::daemon!()
        .args(["--config", &cfg, "--profiles", &profiles])
        .start(&root.join("data"));
    let err = d
        .client_with(CONSUMER)
        .create(&copy_of(&repo.display().to_string()), None, None)
        .await
        .expect_err("a consumer's path without roots");
    assert_eq!(
        (err.status(), err.code()),
        (Some(422), Some("invalid_input"))
    );
    let (_, sbx) = d
        .client_with(OPERATOR)
        .create(
            &copy_of(&repo.display().to_string()),
            Some(Duration::from_secs(30)),
            None,
        )
        .await
        .expect("an operator keeps today's behaviour");
    assert_eq!(sbx.state, sandboxctl::api::SandboxState::Ready, "{sbx:?}");
    let workdir = sbx.reachability.as_ref().expect("reachability")["workdir"]
        .as_str()
        .expect("workdir")
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(PathBuf::from(workdir).join("hello.txt")).expect("copied"),
        "hi"
    );
}

// ---- Finding 4: a full disk ------------------------------------------------

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mkdir");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(st.success(), "mount -t tmpfs failed at {}", at.display());
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the file system of `path` with one file; answers its path.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    for chunk in [1 << 20, 4096, 512, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    filler
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_full_disk_no_answer_claims_a_write_that_was_not_committed() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: mounting a tmpfs for the full-disk test needs root");
        return;
    }
    let dir = TestDir::new();
    let mnt = dir.path().join("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "50m");
    let data = mnt.join("data");
    let d = testkit::daemon!().start(&data);
    let c = &d.client;
    let req = testkit::local_shell();
    let mut answered = Vec::new();
    let (status, s) = c
        .create(&req, None, None)
        .await
        .expect("create on a roomy disk");
    assert_eq!(status, 202);
    answered.push(s.id);

    let filler = fill(&mnt);
    let mut failed = 0;
    for _ in 0..12 {
        match c.create(&req, None, None).await {
            Ok((status, s)) => {
                assert!(matches!(status, 201 | 202), "{status}");
                answered.push(s.id);
            }
            Err(e) => {
                let status = e.status().unwrap_or(0);
                assert!(status >= 500, "a failed write answers 5xx: {e}");
                assert!(e.code().is_some(), "problem+json with a code: {e}");
                failed += 1;
            }
        }
        // Every id answered is there, full disk or not.
        for id in &answered {
            c.get(id, None)
                .await
                .unwrap_or_else(|e| panic!("{id} was answered 2xx but GET says: {e}"));
        }
    }
    assert!(
        failed >= 2,
        "the full disk made no create fail; the test did not bite"
    );
    let err = c.ready().await.expect_err("/readyz while the disk is full");
    assert_eq!(err.status(), Some(503), "{err}");
    let (status, body) = c
        .request_json(
            Method::POST,
            "/v1/sandboxes",
            Some(serde_json::json!({"profile": "profile.local-shell"})),
        )
        .await
        .expect("call");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "storage_unavailable", "{body}");

    // Room again: readiness comes back without any traffic (its probe
    // write commits), and creates work, all without a restart.
    std::fs::remove_file(&filler).expect("remove the filler");
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = c.ready().await {
        assert!(
            Instant::now() < deadline,
            "/readyz still 503 with room again: {e}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ok = 0;
    for _ in 0..5 {
        let (status, s) = c
            .create(&req, None, None)
            .await
            .expect("create after freeing");
        assert!(matches!(status, 201 | 202), "{status}");
        answered.push(s.id);
        ok += 1;
    }
    assert_eq!(ok, 5);
    c.ready().await.expect("/readyz once writes commit again");
    for id in &answered {
        c.get(id, None)
            .await
            .unwrap_or_else(|e| panic!("{id} was answered 2xx but GET says: {e}"));
    }
    // A destroy answered is carried out.
    let id = answered.last().expect("an id").clone();
    c.destroy(&id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    let s = c.get(&id, None).await.expect("get");
    assert_eq!(s.state, sandboxctl::api::SandboxState::Destroyed, "{s:?}");
}

/// Issue 22: the start logs where the configuration and data are, the
/// catalog, the auth mode and each backend's availability; then one log
/// line per request, with a request id echoed (or made) in `X-Request-Id`.
#[tokio::test(flavor = "multi_thread")]
async fn the_start_and_each_request_are_logged() {
    let dir = TestDir::new();
    let d = testkit::daemon!().start(dir.path());
    let http = reqwest::Client::new();
    let r = http
        .get(format!(
            "{}/v1/sandboxes/sbx_01NOSUCHSANDBOX0000000000",
            d.url
        ))
        .header("X-Request-Id", "trace-4242")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("trace-4242")
    );
    // Without one (or with an unusable one), the daemon makes one.
    let r = http
        .get(format!("{}/healthz", d.url))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .expect("healthz");
    let made = r
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("an id")
        .to_owned();
    assert!(made.starts_with("req_"), "{made}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = d.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"message\":\"request\"") && l.contains("trace-4242"))
        .collect();
    assert_eq!(lines.len(), 1, "one line per request: {log}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).expect("json log line");
    assert_eq!(line["route"], "/v1/sandboxes/{id}", "{line}");
    assert_eq!(line["status"], 404, "{line}");
    assert_eq!(line["code"], "sandbox_not_found", "{line}");
    assert_eq!(line["project"], "default", "{line}");
    assert!(log.contains(&made), "the made id is logged");
    // The start said where things are and what can serve.
    let line = |msg: &str| -> Vec<serde_json::Value> {
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == msg)
            .collect()
    };
    let config = line("configuration");
    assert_eq!(config.len(), 1, "{log}");
    assert!(
        config[0]["data_dir"]
            .as_str()
            .unwrap_or_default()
            .ends_with(&dir.path().display().to_string()),
        "{}",
        config[0]
    );
    assert!(config[0]["profiles"]
        .as_str()
        .unwrap_or_default()
        .contains("profile.local-shell"));
    assert!(config[0]["auth"]
        .as_str()
        .unwrap_or_default()
        .contains("loopback only"));
    let backends = line("backend");
    assert!(
        backends
            .iter()
            .any(|b| b["extension"] == "ext.local" && b["available"] == true),
        "{backends:?}"
    );
    assert!(
        backends
            .iter()
            .any(|b| b["extension"] == "ext.compose-ssh" && b["available"] == false),
        "{backends:?}"
    );
}
