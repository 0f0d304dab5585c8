//! Issue 15, network egress: a `network: {mode: egress}` sandbox on real
//! bubblewrap reaches what its allow-list names, through the daemon's
//! filtering proxy, and nothing else; tried the way hostile code would
//! (raw addresses, a direct connection past the proxy, the daemon's own
//! port by address and by an allowed name, a TLS server name other than the
//! CONNECT host, a flood of idle connections), with every decision in the
//! network log. The destinations are a test server on loopback that the
//! operator's `[egress] resolve` table publishes as `allowed.test` and
//! friends; nothing leaves this machine.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sandboxer_api::{CreateSandbox, NetworkLog, NetworkVerdict};
use serde_json::{json, Value};

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Daemon, TestDir};

/// A daemon whose only profile is `profile.egress` (local-shell with
/// `network` set to `network`), with `extra` appended to its config.
fn daemon(dir: &Path, network: &str, extra: &str, user: Option<(u32, u32)>) -> Daemon {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = testkit::repo_file("profiles/local-shell.yaml");
    assert!(
        text.contains("network:\n  mode: none\n"),
        "the template changed"
    );
    let text = text
        .replace("profile.local-shell", "profile.egress")
        .replace(
            "network:\n  mode: none\n",
            &format!("network:\n{network}\n"),
        );
    std::fs::write(profiles.join("egress.yaml"), text).expect("write");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[egress]\n{extra}\n[egress.resolve]\n\"allowed.test\" = \"127.0.0.1\"\n\"denied.test\" = \"127.0.0.1\"\n\"a.wild.test\" = \"127.0.0.1\"\n\"bad.wild.test\" = \"127.0.0.1\"\n"
        ),
    )
    .expect("write");
    let data = dir.join("data");
    let mut b = testkit::daemon!().args([
        "--profiles",
        profiles.to_str().expect("utf-8"),
        "--config",
        config.to_str().expect("utf-8"),
    ]);
    if let Some((uid, gid)) = user {
        std::fs::create_dir_all(&data).expect("mkdir");
        for p in [
            dir.to_path_buf(),
            profiles.clone(),
            profiles.join("egress.yaml"),
            config.clone(),
            data.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
        }
        b = b.user((uid, gid));
    }
    b.start(&data)
}

const NETWORK: &str =
    "  mode: egress\n  allow: [allowed.test, \"*.wild.test\"]\n  deny: [bad.wild.test]";

async fn egress_sandbox(d: &Daemon) -> String {
    let req = CreateSandbox {
        profile: "profile.egress".into(),
        ..CreateSandbox::default()
    };
    testkit::ready_sandbox(&d.client, &req).await.id
}

/// Runs `bash -c cmd` in the sandbox (bash for its `/dev/tcp`): `(exit
/// code, stdout, stderr)`.
async fn sh(d: &Daemon, id: &str, cmd: &str) -> (i64, String, String) {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/sandboxes/{id}/exec", d.url))
        .json(&json!({"cmd": ["bash", "-c", cmd], "timeout": "60s"}))
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .expect("exec");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert!(status.is_success(), "{status}: {v}");
    (
        v["exit_code"].as_i64().unwrap_or(-1),
        v["stdout"].as_str().unwrap_or_default().to_owned(),
        v["stderr"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn network_log(d: &Daemon, id: &str) -> NetworkLog {
    let r = reqwest::get(format!("{}/v1/sandboxes/{id}/network-log", d.url))
        .await
        .expect("network-log");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

fn api_port(d: &Daemon) -> u16 {
    d.url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

fn has(log: &NetworkLog, verdict: NetworkVerdict, host: &str, why: &str) -> bool {
    log.items
        .iter()
        .any(|e| e.decision == verdict && e.host == host && e.reason.contains(why))
}

#[tokio::test(flavor = "multi_thread")]
async fn only_what_the_allow_list_names_is_reached_and_every_decision_is_logged() {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon(dir.path(), NETWORK, "", None);
    only_what_the_allow_list_names_is_reached(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_what_the_allow_list_names_is_reached_and_every_decision_is_logged_unprivileged() {
    require_bwrap();
    let Some(user) = super::limits::unprivileged() else {
        return;
    };
    let dir = TestDir::new();
    let d = daemon(dir.path(), NETWORK, "", Some(user));
    only_what_the_allow_list_names_is_reached(&d).await;
}

async fn only_what_the_allow_list_names_is_reached(d: &Daemon) {
    let o = testkit::Origin::start().await;
    let port = o.port;
    let id = egress_sandbox(d).await;
    let curl = "curl -sS -m 20";

    // Allowed: plain HTTP (an absolute URL to the proxy) and a CONNECT
    // tunnel, by name and by a wildcard.
    for (cmd, want) in [
        (
            format!("{curl} http://allowed.test:{port}/plain"),
            "hello /plain",
        ),
        (
            format!("{curl} -p http://allowed.test:{port}/tunnel"),
            "hello /tunnel",
        ),
        (
            format!("{curl} -p http://A.Wild.Test:{port}/wild"),
            "hello /wild",
        ),
    ] {
        let (code, out, err) = sh(d, &id, &cmd).await;
        assert_eq!((code, out.as_str()), (0, want), "{cmd}: {err}");
    }
    let served = o.requests();
    assert_eq!(served, 3);

    // Refused: a name not listed, a name the deny list names, a raw IP
    // (through the proxy), and a direct connection that skips the proxy.
    let refused = [
        format!("{curl} -o /dev/null -w '%{{http_code}}' http://denied.test:{port}/"),
        format!("{curl} -o /dev/null -w '%{{http_code}}' http://bad.wild.test:{port}/"),
        format!(
            "{curl} --noproxy '' -x http://127.0.0.1:3128 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/"
        ),
    ];
    for cmd in &refused {
        let (code, out, err) = sh(d, &id, cmd).await;
        assert_eq!((code, out.as_str()), (0, "403"), "{cmd}: {err}");
    }
    let (code, _, err) = sh(d, &id, &format!("{curl} -p http://denied.test:{port}/")).await;
    assert_ne!(code, 0, "a refused CONNECT must fail");
    assert!(err.contains("403"), "{err}");
    let (code, _, _) = sh(
        d,
        &id,
        &format!("{curl} --noproxy '*' http://127.0.0.1:{port}/direct"),
    )
    .await;
    assert_ne!(code, 0, "a direct connection must not leave the sandbox");
    // No DNS inside: names resolve in the proxy only.
    let (code, _, _) = sh(d, &id, "getent hosts allowed.test").await;
    assert_ne!(code, 0, "a sandbox has no resolver of its own");
    assert_eq!(o.requests(), served, "a refused request got through");

    // The daemon's own port: not directly, not through the proxy by
    // address, not by an allowed name that resolves to it.
    let api = api_port(d);
    for cmd in [
        format!("{curl} --noproxy '*' http://127.0.0.1:{api}/healthz"),
        format!("{curl} -f --noproxy '' -x http://127.0.0.1:3128 http://127.0.0.1:{api}/healthz"),
        format!("{curl} -f http://allowed.test:{api}/healthz"),
        format!("{curl} -f -p http://allowed.test:{api}/healthz"),
    ] {
        let (code, out, _) = sh(d, &id, &cmd).await;
        assert!(
            code != 0 && !out.contains("ok"),
            "{cmd} reached the API: {out}"
        );
    }

    // A TLS server name other than the CONNECT host is refused before a
    // byte reaches the destination (domain fronting).
    let hello = client_hello("evil.test");
    let r = reqwest::Client::new()
        .put(format!(
            "{}/v1/sandboxes/{id}/files?path=/workspace/hello.bin",
            d.url
        ))
        .body(hello.clone())
        .send()
        .await
        .expect("put");
    assert!(
        r.status().is_success(),
        "{}",
        r.text().await.unwrap_or_default()
    );
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT allowed.test:{port} HTTP/1.1\\r\\n\\r\\n' >&3; \
         head -c 39 <&3; cat /workspace/hello.bin >&3; timeout 10 cat <&3 | wc -c"
    );
    let (_, out, err) = sh(d, &id, &script).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out} {err}");
    assert_eq!(o.tls_seen(), 0, "the ClientHello reached the destination");
    // The same hello naming the CONNECT host goes through.
    let same = client_hello("allowed.test");
    let r = reqwest::Client::new()
        .put(format!(
            "{}/v1/sandboxes/{id}/files?path=/workspace/same.bin",
            d.url
        ))
        .body(same)
        .send()
        .await
        .expect("put");
    assert!(r.status().is_success());
    let (_, out, err) = sh(d, &id, &script.replace("hello.bin", "same.bin")).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out} {err}");
    for _ in 0..100 {
        if o.tls_seen() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(o.tls_seen(), 1, "an allowed ClientHello was not passed on");

    // Every decision is in the log, with why.
    let log = network_log(d, &id).await;
    let text = serde_json::to_string_pretty(&log).unwrap_or_default();
    for (verdict, host, why) in [
        (
            NetworkVerdict::Allowed,
            "allowed.test",
            "allowed by `allowed.test`",
        ),
        (
            NetworkVerdict::Allowed,
            "a.wild.test",
            "allowed by `*.wild.test`",
        ),
        (
            NetworkVerdict::Denied,
            "denied.test",
            "not in the allow list",
        ),
        (
            NetworkVerdict::Denied,
            "bad.wild.test",
            "denied by `bad.wild.test`",
        ),
        (
            NetworkVerdict::Denied,
            "127.0.0.1",
            "not in an allowed range",
        ),
        (NetworkVerdict::Denied, "allowed.test", "own endpoint"),
        (NetworkVerdict::Denied, "evil.test", "TLS server name"),
    ] {
        assert!(
            has(&log, verdict, host, why),
            "{verdict:?} {host} ({why}) missing from {text}"
        );
    }
    assert!(log.items.iter().any(|e| e.method == "GET"), "{text}");
    assert!(log.items.iter().any(|e| e.method == "CONNECT"), "{text}");
    assert_eq!(
        log.allowed + log.denied,
        log.items.len() as u64 + log.dropped,
        "{text}"
    );
    let metrics = reqwest::get(format!("{}/metrics", d.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("sandboxer_egress_decisions_total{decision=\"denied\"}"),
        "{metrics}"
    );

    // Destroyed: the proxy is gone with it, and the log stays readable.
    let _ = d.client.destroy(&id, None).await.expect("destroy");
    assert!(!network_log(d, &id).await.items.is_empty());
}

/// The ClientHello a real TLS client (rustls) sends for `name`.
fn client_hello(name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from(name.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("hello");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_bounded_and_cut_and_the_proxy_survives_a_restart() {
    require_bwrap();
    let dir = TestDir::new();
    let extra = "max_connections = 8\nhead_timeout = \"2s\"";
    let mut d = daemon(dir.path(), NETWORK, extra, None);
    let o = testkit::Origin::start().await;
    let port = o.port;
    let id = egress_sandbox(&d).await;
    // 20 connections that never send a head hold every slot...
    let (code, out, err) = sh(
        &d,
        &id,
        &format!(
            "for i in $(seq 20); do (exec 3<>/dev/tcp/127.0.0.1/3128; sleep 4) & done; sleep 0.5; \
             curl -sS -m 10 -o /dev/null -w '%{{http_code}}' http://allowed.test:{port}/; wait"
        ),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "503"), "{err}");
    // ... until the head timeout cuts them.
    let (code, out, err) = sh(
        &d,
        &id,
        &format!("sleep 2.5; curl -sS -m 10 http://allowed.test:{port}/after"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "hello /after"), "{err}");
    let log = network_log(&d, &id).await;
    assert!(
        log.items
            .iter()
            .any(|e| e.reason.contains("more than 8 connections")),
        "{log:?}"
    );

    // A 10 MB download goes through whole.
    let (code, out, err) = sh(
        &d,
        &id,
        &format!("curl -sS -m 30 http://allowed.test:{port}/big | wc -c"),
    )
    .await;
    assert_eq!((code, out.trim()), (0, "10000000"), "{err}");

    // The daemon is killed and started again: the sandbox's proxy is
    // served again, with the same rules.
    d.kill9();
    let d = testkit::daemon!()
        .args([
            "--profiles",
            dir.path().join("profiles").to_str().expect("utf-8"),
            "--config",
            dir.path().join("config.toml").to_str().expect("utf-8"),
        ])
        .start(&dir.path().join("data"));
    let (code, out, err) = sh(
        &d,
        &id,
        &format!("curl -sS -m 10 http://allowed.test:{port}/again"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "hello /again"), "{err}");
    let (_, out, _) = sh(
        &d,
        &id,
        &format!("curl -sS -m 10 -o /dev/null -w '%{{http_code}}' http://denied.test:{port}/"),
    )
    .await;
    assert_eq!(out, "403");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_that_does_not_parse_names_its_profile_and_entry() {
    require_bwrap();
    let dir = TestDir::new();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir_all(&profiles).expect("mkdir");
    let text = testkit::repo_file("profiles/local-shell.yaml");
    std::fs::write(
        profiles.join("bad.yaml"),
        text.replace("profile.local-shell", "profile.bad").replace(
            "network:\n  mode: none\n",
            "network:\n  mode: egress\n  allow: [pypi.org, \"10.0.0.1/8\"]\n",
        ),
    )
    .expect("write");
    let err = testkit::daemon!()
        .args(["--profiles", profiles.to_str().expect("utf-8")])
        .try_start(&dir.path().join("data"))
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        err.contains("bad.yaml") && err.contains("network.allow[1]") && err.contains("host bits"),
        "{err}"
    );
}
