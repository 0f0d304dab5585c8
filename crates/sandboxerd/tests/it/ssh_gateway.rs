//! The SSH gateway with OpenSSH's own `ssh` and `sftp` as clients, on
//! loopback: keys per sandbox, exec with exit status, a terminal, SFTP
//! confined to the sandbox, `-L` to a port inside; refusals of wrong keys,
//! other sandboxes and destroyed ones; sessions audited.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use sandboxer_testkit as testkit;
use testkit::{keygen, local_shell, require_bwrap, Daemon, TestDir};

/// `ssh` against the gateway, pinned to its host key, no config, no agent.
struct Ssh {
    port: u16,
    known_hosts: PathBuf,
    identity: PathBuf,
}

impl Ssh {
    fn new(dir: &Path, reach: &Value, identity: PathBuf) -> Ssh {
        let port = reach["port"].as_u64().expect("reachability.ssh.port") as u16;
        let host_key = reach["host_key"]
            .as_str()
            .expect("reachability.ssh.host_key");
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n")).unwrap();
        Ssh {
            port,
            known_hosts,
            identity,
        }
    }

    fn base(&self, program: &str, port_flag: &str) -> Command {
        let mut c = Command::new(program);
        c.args([port_flag, &self.port.to_string()])
            .arg("-F")
            .arg("/dev/null")
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "ConnectTimeout=20",
            ])
            .arg("-i")
            .arg(&self.identity)
            .stdin(Stdio::null());
        c
    }

    /// `ssh user@127.0.0.1 cmd`: (exit status, stdout, stderr).
    fn run(&self, user: &str, cmd: &str) -> (i32, String, String) {
        let out = self
            .base("ssh", "-p")
            .arg(format!("{user}@127.0.0.1"))
            .arg(cmd)
            .output()
            .expect("ssh");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

async fn gateway_daemon(dir: &Path) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    testkit::daemon!()
        .env("SANDBOXER_SSH_GATEWAY__LISTEN", "127.0.0.1:0")
        .start(dir)
}

async fn ready_with_key(d: &Daemon, key_pub: &str) -> (String, Value) {
    let sbx = testkit::ready_sandbox(&d.client, &local_shell()).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/sandboxes/{}/ssh-keys", d.url, sbx.id))
        .json(&json!({ "public_key": key_pub }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let again = http
        .post(format!("{}/v1/sandboxes/{}/ssh-keys", d.url, sbx.id))
        .json(&json!({ "public_key": key_pub }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200, "registering twice is idempotent");
    let sbx = d.client.get(&sbx.id, None).await.expect("get");
    let reach = sbx.reachability.expect("reachability")["ssh"].clone();
    assert_eq!(reach["user"], sbx.id.as_str(), "{reach}");
    (sbx.id, reach)
}

#[tokio::test(flavor = "multi_thread")]
async fn ssh_exec_shell_sftp_and_port_forwarding_run_inside_the_sandbox() {
    require_bwrap();
    if !testkit::have("ssh") || !testkit::have("sftp") {
        panic!("OpenSSH's client is missing: apt-get install -y openssh-client");
    }
    let dir = TestDir::new();
    let d = gateway_daemon(&dir.path().join("data")).await;
    let key = dir.path().join("id");
    let key_pub = keygen(&key).unwrap();
    let (id, reach) = ready_with_key(&d, &key_pub).await;
    let ssh = Ssh::new(dir.path(), &reach, key);

    // exec: output, stderr and the exit status pass through; it is inside.
    let (code, out, err) = ssh.run(&id, "echo $SANDBOX_ID; id -u; echo oops >&2; exit 7");
    assert_eq!(code, 7, "{err}");
    assert_eq!(out, format!("{id}\n0\n"));
    assert!(err.contains("oops"), "{err}");
    let (_, out, _) = ssh.run(&id, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status");
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("NoNewPrivs:\t1"),
        "{out}"
    );

    // Input streams through (a binary-safe round trip).
    let mut child = ssh
        .base("ssh", "-p")
        .arg(format!("{id}@127.0.0.1"))
        .arg("cat > /workspace/piped && sha256sum /workspace/piped")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&data).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&digest));

    // A terminal: `-tt` forces one; the program sees a tty.
    let out = ssh
        .base("ssh", "-p")
        .arg("-tt")
        .arg(format!("{id}@127.0.0.1"))
        .arg("tty; stty size")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/dev/pts/"), "{text}");

    // SFTP: put and get; paths are the sandbox's own view.
    std::fs::write(dir.path().join("local.txt"), "over sftp").unwrap();
    let batch = dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} /workspace/sftp.txt\nget /etc/hostname {}\nls /workspace\n",
            dir.path().join("local.txt").display(),
            dir.path().join("hostname").display()
        ),
    )
    .unwrap();
    let out = ssh
        .base("sftp", "-P")
        .arg("-b")
        .arg(&batch)
        .arg(format!("{id}@127.0.0.1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ssh.run(&id, "cat /workspace/sftp.txt").1, "over sftp");
    // An SFTP path to the host's secrets reaches the sandbox's empty stand-in.
    let batch2 = dir.path().join("batch2");
    std::fs::write(
        &batch2,
        format!("get /etc/shadow {}\n", dir.path().join("shadow").display()),
    )
    .unwrap();
    let _ = ssh
        .base("sftp", "-P")
        .arg("-b")
        .arg(&batch2)
        .arg(format!("{id}@127.0.0.1"))
        .output()
        .unwrap();
    let got = std::fs::read(dir.path().join("shadow")).unwrap_or_default();
    assert!(got.is_empty(), "the host's /etc/shadow came out over SFTP");

    // -L: a server inside, reached on this machine.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/sandboxes/{id}/processes", d.url))
        .json(&json!({"cmd": "echo forwarded > /workspace/f.txt; cd /workspace && exec python3 -m http.server 8090 --bind 127.0.0.1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let local_port = testkit::free_port();
    let mut tunnel = ssh
        .base("ssh", "-p")
        .args(["-N", "-L", &format!("{local_port}:localhost:8090")])
        .arg(format!("{id}@127.0.0.1"))
        .spawn()
        .unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{local_port}/f.txt"))
            .send()
            .await
        {
            body = r.text().await.unwrap_or_default();
            if body == "forwarded\n" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert_eq!(body, "forwarded\n");

    // Audited, with the key's fingerprint.
    let audit: Value = http
        .get(format!("{}/v1/audit?sandbox_id={id}", d.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    assert!(
        text.contains("\"SSH\"") && text.contains("SHA256:") && text.contains("sftp"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_keys_other_sandboxes_and_destroyed_ones_are_refused() {
    require_bwrap();
    let dir = TestDir::new();
    let d = gateway_daemon(&dir.path().join("data")).await;
    let key_a = dir.path().join("a");
    let key_b = dir.path().join("b");
    let pub_a = keygen(&key_a).unwrap();
    let pub_b = keygen(&key_b).unwrap();
    let (a, reach) = ready_with_key(&d, &pub_a).await;
    let (b, _) = ready_with_key(&d, &pub_b).await;
    let as_a = Ssh::new(dir.path(), &reach, key_a.clone());
    let as_b = Ssh::new(dir.path(), &reach, key_b);

    assert_eq!(as_a.run(&a, "true").0, 0);
    // Key B opens B, not A; key A opens A, not B.
    assert_eq!(as_b.run(&a, "true").0, 255);
    assert_eq!(as_a.run(&b, "true").0, 255);
    // Nobody, root, an unknown id.
    assert_eq!(as_a.run("root", "true").0, 255);
    assert_eq!(as_a.run("sbx_01NOSUCHSANDBOX0000000000", "true").0, 255);
    // direct-tcpip to anything but the sandbox's loopback is refused.
    let out = as_a
        .base("ssh", "-p")
        .args(["-W", "10.1.2.3:80"])
        .arg(format!("{a}@127.0.0.1"))
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Removed key: refused again.
    let http = reqwest::Client::new();
    let keys: Value = http
        .get(format!("{}/v1/sandboxes/{a}/ssh-keys", d.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Percent-encoded: a fingerprint's base64 holds `/` and `+`.
    let fp = keys["items"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace(':', "%3A");
    let r = http
        .delete(format!("{}/v1/sandboxes/{a}/ssh-keys/{fp}", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(as_a.run(&a, "true").0, 255);
    let r = http
        .post(format!("{}/v1/sandboxes/{a}/ssh-keys", d.url))
        .json(&json!({"public_key": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7 short"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // Destroyed: refused.
    d.client.destroy(&b, None).await.expect("destroy");
    let as_b = Ssh::new(dir.path(), &reach, dir.path().join("b"));
    assert_eq!(as_b.run(&b, "true").0, 255);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_given_at_create_open_the_sandbox() {
    require_bwrap();
    let dir = TestDir::new();
    let d = gateway_daemon(&dir.path().join("data")).await;
    let key = dir.path().join("k");
    let key_pub = keygen(&key).unwrap();
    let mut req = local_shell();
    req.ssh_keys = vec![key_pub.clone()];
    let sbx = testkit::ready_sandbox(&d.client, &req).await;
    let reach = sbx.reachability.clone().expect("reachability")["ssh"].clone();
    let ssh = Ssh::new(dir.path(), &reach, key);
    let (code, out, err) = ssh.run(&sbx.id, "echo in");
    assert_eq!((code, out.as_str()), (0, "in\n"), "{err}");
    // A bad key in the body is refused before anything is made.
    let mut bad = local_shell();
    bad.ssh_keys = vec![key_pub, "ssh-ed25519 nope".into()];
    let err = d.client.create(&bad, None, None).await.expect_err("422");
    assert_eq!(err.status(), Some(422));
    let sandboxctl::ClientError::Api { problem, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(problem.field.as_deref(), Some("ssh_keys[1]"), "{problem:?}");
}
