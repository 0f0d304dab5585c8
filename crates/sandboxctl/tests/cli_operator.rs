//! `sandboxctl` as an operator meets it (issue 22): a short profile name,
//! a suggestion for a typo, `recreate` that waits until the sandbox is
//! ready again, and errors as problem+json on stdout with `--json`. The
//! real daemon (built beside this test) on real bubblewrap.

mod common;

use common::ctl;

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, DaemonBin, TestDir};

#[tokio::test(flavor = "multi_thread")]
async fn short_profile_names_waiting_recreate_and_json_errors() {
    require_bwrap();
    let bin = DaemonBin::beside_current_exe()
        .expect("build the daemon first: cargo build -p sandboxerd --bins");
    let dir = TestDir::new();
    let d = testkit::Daemon::builder(bin).start(&dir.path().join("data"));
    let url = d.url.as_str();

    // `local-shell` stands for `profile.local-shell`.
    let o = ctl(url, &["--json", "create", "local-shell"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let sbx: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(sbx["profile"], "profile.local-shell");
    let id = sbx["id"].as_str().expect("id").to_owned();

    // A typo is a usage error with a suggestion, and nothing is created.
    let o = ctl(url, &["create", "local-shel"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did you mean `profile.local-shell`"), "{err}");

    // recreate waits until the sandbox is ready again: `reachability` is
    // there when it returns.
    let o = ctl(url, &["--json", "recreate", &id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(again["state"], "ready", "{again}");
    assert!(again["reachability"].is_object(), "{again}");
    assert_eq!(again["generation"], 2);

    // With --json, an API error is its problem+json on stdout (and the
    // line on stderr); the exit code is as without.
    let o = ctl(url, &["--json", "get", "sbx_01NOSUCHSANDBOX0000000000"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("problem+json");
    assert_eq!(p["code"], "sandbox_not_found", "{p}");
    assert_eq!(p["status"], 404);
    assert!(!o.stderr.is_empty());
    // `--json` where there is no JSON to give is a usage error.
    for args in [
        &["--json", "completions", "bash"][..],
        &["--json", "token", "new", "--actor", "a", "--project", "p"],
    ] {
        let o = ctl(url, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
    }
    // An error of this side too.
    let o = ctl("http://127.0.0.1:9", &["--json", "list"]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).expect("problem+json");
    assert_eq!(p["code"], "unreachable", "{p}");
}

/// What bash's registration asks `sandboxctl` for when `words` are typed
/// and the cursor is on the last one (clap_complete's `COMPLETE` protocol,
/// as the script `sandboxctl completions bash` prints calls it).
fn complete(url: &str, words: &[&str]) -> Vec<String> {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sandboxctl"))
        .env("COMPLETE", "bash")
        .env("_CLAP_IFS", "\n")
        .env("_CLAP_COMPLETE_INDEX", (words.len() - 1).to_string())
        .env("_CLAP_COMPLETE_COMP_TYPE", "9")
        .env("_CLAP_COMPLETE_SPACE", "true")
        .env("SANDBOXER_URL", url)
        .arg("--")
        .args(words)
        .output()
        .expect("sandboxctl");
    assert!(o.status.success(), "{o:?}");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_offer_the_daemons_sandbox_snapshot_and_profile_ids() {
    require_bwrap();
    let bin = DaemonBin::beside_current_exe()
        .expect("build the daemon first: cargo build -p sandboxerd --bins");
    let dir = TestDir::new();
    let d = testkit::Daemon::builder(bin).start(&dir.path().join("data"));
    let url = d.url.as_str();
    let o = ctl(url, &["--json", "create", "local-shell"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let sbx: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let id = sbx["id"].as_str().expect("id").to_owned();
    let o = ctl(url, &["--json", "snapshot", "create", &id]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let snap: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let snap_id = snap["id"].as_str().expect("id").to_owned();

    // The registration script calls sandboxctl back with COMPLETE set.
    let o = ctl(url, &["completions", "bash"]);
    let script = String::from_utf8_lossy(&o.stdout);
    assert!(script.contains("COMPLETE=\"bash\""), "{script}");
    assert!(script.contains("complete -o nospace"), "{script}");

    let got = complete(url, &["sandboxctl", "destroy", ""]);
    assert!(got.iter().any(|c| c == &id), "{got:?}");
    let got = complete(url, &["sandboxctl", "pause", "sbx_"]);
    assert!(got.iter().any(|c| c == &id), "{got:?}");
    let got = complete(url, &["sandboxctl", "create", "profile.local"]);
    assert!(got.iter().any(|c| c == "profile.local-shell"), "{got:?}");
    let got = complete(url, &["sandboxctl", "create", "--from-snapshot", ""]);
    assert!(got.iter().any(|c| c == &snap_id), "{got:?}");
    // Subcommands still complete statically.
    let got = complete(url, &["sandboxctl", "paus"]);
    assert_eq!(got, vec!["pause".to_owned()]);
    // A daemon that is not there leaves ids uncompleted, quickly.
    let started = std::time::Instant::now();
    let got = complete("http://127.0.0.1:9", &["sandboxctl", "destroy", ""]);
    assert!(got.iter().all(|c| !c.starts_with("sbx_")), "{got:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}
