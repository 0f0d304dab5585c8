//! `sandboxctl` reaching into a sandbox, as an operator would type it:
//! exec (streamed, exit code passed through), start/ps/logs/kill, cp both
//! ways (a file and a directory), ls-files, ports. The real daemon (built
//! beside this test) on real bubblewrap.

mod common;

use common::ctl;
use common::text;
use std::time::Duration;

use sandboxer_testkit as testkit;
use testkit::{local_shell, require_bwrap, DaemonBin, TestDir};

#[tokio::test(flavor = "multi_thread")]
async fn exec_processes_cp_and_ports_from_the_command_line() {
    require_bwrap();
    let bin = DaemonBin::beside_current_exe()
        .expect("build the daemon first: cargo build -p sandboxerd --bins");
    let dir = TestDir::new();
    let d = testkit::Daemon::builder(bin)
        .env("SANDBOXER_SSH_GATEWAY__LISTEN", "127.0.0.1:0")
        .start(&dir.path().join("data"));
    let sbx = testkit::ready_sandbox(&d.client, &local_shell()).await;
    let id = sbx.id.as_str();
    let url = d.url.as_str();

    // exec: output streams, the exit code is sandboxctl's.
    let o = ctl(url, &["exec", id, "--", "echo out; echo err >&2; exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(text(&o), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    let o = ctl(
        url,
        &[
            "exec",
            id,
            "-e",
            "A=b",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A; pwd",
        ],
    );
    assert_eq!(
        (o.status.code(), text(&o)),
        (Some(0), "b\n/tmp\n".to_string())
    );
    let o = ctl(url, &["exec", id, "--timeout", "1s", "--", "sleep 30"]);
    assert_eq!(o.status.code(), Some(124), "a timeout is 124");
    let o = ctl(url, &["exec", id, "--json", "--", "echo j"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stdout"], "j\n");

    // Background processes.
    let o = ctl(
        url,
        &[
            "start",
            id,
            "--tag",
            "ticker",
            "--",
            "for i in 1 2 3; do echo tick $i; done; sleep 300",
        ],
    );
    assert!(o.status.success(), "{o:?}");
    let proc_id = text(&o).trim().to_string();
    assert!(proc_id.starts_with("proc_"), "{proc_id}");
    let mut log = String::new();
    for _ in 0..100 {
        log = text(&ctl(url, &["logs", id, &proc_id]));
        if log.contains("tick 3") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(log, "tick 1\ntick 2\ntick 3\n");
    assert!(text(&ctl(url, &["ps", id])).contains("ticker"));
    let o = ctl(url, &["kill", id, &proc_id, "-s", "KILL"]);
    assert!(o.status.success(), "{o:?}");
    let o = ctl(url, &["logs", id, &proc_id, "-f", "--offset", "7"]);
    assert_eq!(
        text(&o),
        "tick 2\ntick 3\n",
        "follows to the end once killed"
    );

    // cp: a file in and out, a tree in and out.
    let local = dir.path().join("local");
    std::fs::create_dir_all(local.join("tree/sub")).unwrap();
    std::fs::write(local.join("one.txt"), "one file").unwrap();
    std::fs::write(local.join("tree/a.txt"), "a").unwrap();
    std::fs::write(local.join("tree/sub/b.txt"), "b").unwrap();
    let p = |rel: &str| local.join(rel).to_string_lossy().into_owned();
    assert!(ctl(
        url,
        &["cp", &p("one.txt"), &format!("{id}:/workspace/in/one.txt")]
    )
    .status
    .success());
    assert!(
        ctl(url, &["cp", &p("tree"), &format!("{id}:/workspace/tree")])
            .status
            .success()
    );
    let o = ctl(
        url,
        &[
            "exec",
            id,
            "--",
            "cat /workspace/in/one.txt /workspace/tree/a.txt /workspace/tree/sub/b.txt",
        ],
    );
    assert_eq!(text(&o), "one fileab");
    let back = dir.path().join("back");
    std::fs::create_dir_all(&back).unwrap();
    let back_s = back.to_string_lossy().into_owned();
    assert!(ctl(
        url,
        &["cp", &format!("{id}:/workspace/in/one.txt"), &back_s]
    )
    .status
    .success());
    assert_eq!(
        std::fs::read_to_string(back.join("one.txt")).unwrap(),
        "one file"
    );
    let o = ctl(url, &["cp", &format!("{id}:/workspace/tree"), &back_s]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        std::fs::read_to_string(back.join("tree/sub/b.txt")).unwrap(),
        "b"
    );
    let o = ctl(url, &["cp", &format!("{id}:/workspace/in/one.txt"), "-"]);
    assert_eq!(text(&o), "one file");
    assert!(
        text(&ctl(url, &["ls-files", id, "/workspace", "--depth", "2"]))
            .contains("/workspace/tree/sub")
    );

    // A refusal is a problem line and exit 1.
    let o = ctl(url, &["cp", &format!("{id}:/workspace/missing"), &back_s]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("file_not_found"),
        "{o:?}"
    );
    let o = ctl(url, &["cp", "relative", "other"]);
    assert_eq!(o.status.code(), Some(2));

    // shell: through the SSH gateway with a key made for the session and removed after.
    if testkit::have("ssh") && testkit::have("ssh-keygen") {
        let o = ctl(url, &["shell", id, "--", "echo over ssh; exit 6"]);
        assert_eq!(
            (o.status.code(), text(&o)),
            (Some(6), "over ssh\n".to_string()),
            "{o:?}"
        );
        let keys = text(&ctl(url, &["ssh-key", "list", id]));
        assert!(
            !keys.contains("SHA256:"),
            "the session's key was removed: {keys}"
        );
    }

    // Ports and the proxy URL.
    let o = ctl(
        url,
        &[
            "start",
            id,
            "--",
            "cd /workspace && exec python3 -m http.server 8070 --bind 127.0.0.1",
        ],
    );
    assert!(o.status.success());
    let mut listed = String::new();
    for _ in 0..100 {
        listed = text(&ctl(url, &["ports", id]));
        if listed.contains("8070") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        listed.contains(&format!("/v1/sandboxes/{id}/ports/8070/")),
        "{listed}"
    );
    let open = text(&ctl(url, &["open", id, "8070", "in/one.txt"]));
    let body = reqwest::get(open.trim())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "one file");
}
