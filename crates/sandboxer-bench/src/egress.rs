//! The egress proxy's cost: a 10 MB download from a loopback origin, by
//! curl inside an `egress` sandbox (through the agent's relay and the
//! daemon's proxy, plain HTTP and a CONNECT tunnel) against the same curl
//! on the host straight to the origin. curl's own `time_total` is what is
//! compared, so starting a command in the sandbox is not counted.
use std::collections::BTreeMap;

use sandboxer_api::{Command, ExecRequest};
use sandboxer_testkit::origin::{Origin, BIG, PACED_RATE};

use super::*;

/// How many downloads each way, in alternating rounds.
fn rounds(plan: &Plan) -> (usize, usize) {
    if plan.creates < 50 {
        (1, 3)
    } else {
        (8, 5)
    }
}

/// A bash loop of `n` curls of `url` (with `extra` flags), one `time_total`
/// per line.
fn curls(n: usize, flags: &str, url: &str) -> String {
    format!(
        "for i in $(seq {n}); do curl -sS -m 60 {flags} -o /dev/null -w '%{{time_total}}\\n' {url} || exit 1; done"
    )
}

fn parse_times(out: &str) -> anyhow::Result<Vec<Duration>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let secs: f64 = l
                .trim()
                .replace(',', ".")
                .parse()
                .with_context(|| format!("curl's time_total `{l}`"))?;
            Ok(Duration::from_secs_f64(secs))
        })
        .collect()
}

pub(crate) async fn egress_section(
    plan: &Plan,
    repo: &Path,
    bin: &DaemonBin,
    scratch: &Path,
) -> anyhow::Result<Section> {
    let dir = scratch.join("egress");
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles)?;
    let text = std::fs::read_to_string(repo.join("profiles/local-shell.yaml"))?;
    ensure!(
        text.contains("network:\n  mode: none\n"),
        "profiles/local-shell.yaml changed: cannot derive the egress profile"
    );
    std::fs::write(
        profiles.join("egress.yaml"),
        text.replace("profile.local-shell", "profile.bench-egress")
            .replace(
                "network:\n  mode: none\n",
                "network:\n  mode: egress\n  allow: [origin.test]\n",
            ),
    )?;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[egress.resolve]\n\"origin.test\" = \"127.0.0.1\"\n",
    )?;
    let daemon = Daemon::builder(bin.clone())
        .repo(repo)
        .profiles(&profiles)
        .args(["--config".as_ref(), config.as_os_str()])
        .log_file(dir.join("sandboxerd.log"))
        .try_start(&dir.join("data"))?;
    let origin = Origin::start().await;
    let result = measure_egress(plan, &daemon, origin.port).await;
    let stopped = daemon.stop(Duration::from_secs(20));
    let section = result?;
    stopped?;
    Ok(section)
}

async fn measure_egress(plan: &Plan, daemon: &Daemon, port: u16) -> anyhow::Result<Section> {
    let client = &daemon.client;
    let req = CreateSandbox {
        profile: "profile.bench-egress".into(),
        ..CreateSandbox::default()
    };
    let (_, sbx) = client.create(&req, Some(WAIT), None).await?;
    ensure!(
        sbx.state == SandboxState::Ready,
        "the egress sandbox is {:?}",
        sbx.state
    );
    let inside = |script: String| {
        let client = client.clone();
        let id = sbx.id.clone();
        async move {
            let r = client
                .exec(
                    &id,
                    &ExecRequest {
                        cmd: Command::Argv(vec!["bash".into(), "-c".into(), script]),
                        cwd: None,
                        env: BTreeMap::new(),
                        stdin: None,
                        timeout: Some("10m".into()),
                        service: None,
                    },
                )
                .await?;
            ensure!(r.exit_code == Some(0), "curl in the sandbox: {}", r.stderr);
            parse_times(&r.stdout)
        }
    };
    let host = |script: String| async move {
        let out = tokio::process::Command::new("bash")
            .args(["-c", &script])
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "curl on the host: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        parse_times(&String::from_utf8_lossy(&out.stdout))
    };
    let (rounds, per) = rounds(plan);
    let fast = measure_path(&host, &inside, port, "/big", rounds, per).await?;
    let paced = measure_path(&host, &inside, port, "/big-paced", rounds, per).await?;
    let _ = client.destroy(&sbx.id, Some(WAIT)).await;
    let mut rows = paced.rows("1 Gbit/s origin", true);
    rows.extend(fast.rows("loopback at full speed", false));
    Ok(Section {
        title: "8. Egress proxy overhead".into(),
        note: format!(
            "A {mb} MB download from an HTTP server on loopback, {n} times each way in {rounds} \
             alternating rounds: curl on the host straight to the server, and curl inside a \
             `network: {{mode: egress}}` sandbox (`cpus: 1`) through the agent's relay and the \
             daemon's proxy (plain HTTP, and a CONNECT tunnel as HTTPS uses), both relaying \
             with splice(2). curl's own `time_total` is compared (median), so starting the \
             command in the sandbox is not counted. Judged: the server paced at {rate} MB/s \
             (a 1 Gbit/s link, as a download from outside comes). Shown too: the server at \
             loopback's full speed, the proxy's worst case, where its two extra hops are the \
             whole cost (a few ms per 10 MB) and the ratio swings with scheduling on 2 cores.",
            mb = BIG / 1_000_000,
            n = rounds * per,
            rate = PACED_RATE / 1_000_000,
        ),
        rows,
    })
}

/// The downloads of one path, each way.
struct Measured {
    direct: Samples,
    plain: Samples,
    tunnel: Samples,
}

impl Measured {
    fn rows(&self, what: &str, judged: bool) -> Vec<Row> {
        let mbps = |s: &Samples| (BIG as f64 / 1e6) / s.p50().as_secs_f64().max(1e-9);
        let overhead = |s: &Samples| {
            let base = self.direct.p50().as_secs_f64().max(1e-9);
            (s.p50().as_secs_f64() / base - 1.0) * 100.0
        };
        let mut rows = Vec::new();
        for (how, s) in [
            ("direct, host → origin", &self.direct),
            ("through the proxy, plain HTTP", &self.plain),
            ("through the proxy, CONNECT tunnel", &self.tunnel),
        ] {
            rows.push(Row::info(
                format!("{what}: {how} (p50 / p95 / p99)"),
                format!("{} ({:.0} MB/s)", s.triple(), mbps(s)),
            ));
        }
        for (how, s) in [
            ("plain HTTP", &self.plain),
            ("CONNECT tunnel", &self.tunnel),
        ] {
            let o = overhead(s);
            let figure = format!("{what}: overhead, {how} (p50)");
            rows.push(if judged {
                Row::judged(figure, format!("{o:+.1}%"), "≤ 10%", o <= 10.0)
            } else {
                Row::info(figure, format!("{o:+.1}%"))
            });
        }
        rows
    }
}

async fn measure_path<H, HF, I, IF>(
    host: &H,
    inside: &I,
    port: u16,
    path: &str,
    rounds: usize,
    per: usize,
) -> anyhow::Result<Measured>
where
    H: Fn(String) -> HF,
    HF: std::future::Future<Output = anyhow::Result<Vec<Duration>>>,
    I: Fn(String) -> IF,
    IF: std::future::Future<Output = anyhow::Result<Vec<Duration>>>,
{
    let (direct_url, proxied_url) = (
        format!("http://127.0.0.1:{port}{path}"),
        format!("http://origin.test:{port}{path}"),
    );
    // Warm-up: page cache, the origin's buffer, the proxy's first connection.
    host(curls(1, "", &direct_url)).await?;
    inside(curls(1, "", &proxied_url)).await?;
    let (mut direct, mut plain, mut tunnel) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        direct.extend(host(curls(per, "", &direct_url)).await?);
        plain.extend(inside(curls(per, "", &proxied_url)).await?);
        tunnel.extend(inside(curls(per, "-p", &proxied_url)).await?);
    }
    Ok(Measured {
        direct: Samples::new(direct),
        plain: Samples::new(plain),
        tunnel: Samples::new(tunnel),
    })
}
