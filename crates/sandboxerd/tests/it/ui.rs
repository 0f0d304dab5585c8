//! Issue 22, the status page: in headless Chromium (Debian's `chromium`,
//! driven over the DevTools protocol) against the real daemon, a created
//! sandbox appears on the open page by itself (the live refresh) with its
//! TTL counting down, and moves to "Recently ended" with its reason when it
//! is destroyed; a screenshot is kept as `target/ui-status.png`. Over HTTP:
//! the login cookie, its limits, and a consumer seeing only its project.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use sandboxer_testkit as testkit;
use testkit::{require_bwrap, Daemon, TestDir};

/// Debian's Chromium, or a clear failure naming the package.
fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("Chromium is not installed: the status page test drives it headless; install it with `apt-get install -y chromium`");
}

/// A headless Chromium with a DevTools endpoint on a loopback port.
struct Browser {
    child: Child,
    port: u16,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1400,1000",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    let port = rest.split('/').next().and_then(|p| p.parse::<u16>().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .ok()
            .flatten()
            .expect("chromium printed no DevTools address");
        Browser { child, port }
    }

    /// A new tab at `url`, driven over its DevTools websocket.
    async fn open(&self, url: &str) -> Tab {
        let r = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}/json/new?{url}", self.port))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("json/new");
        let target: Value = r.json().await.expect("target");
        let ws = target["webSocketDebuggerUrl"]
            .as_str()
            .expect("webSocketDebuggerUrl")
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(ws)
            .await
            .expect("devtools websocket");
        Tab { socket, next: 0 }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Tab {
    socket: Socket,
    next: u64,
}

impl Tab {
    /// One DevTools command; its `result`.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket
            .send(Message::Text(msg.into()))
            .await
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.socket.next())
                .await
                .expect("devtools answered in time")
                .expect("devtools socket open")
                .expect("frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of `expr` in the page.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true` (at most `limit`).
    async fn until(&mut self, expr: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.eval(expr).await == Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not true in {limit:?}: {expr}\npage: {}",
                self.eval("document.body ? document.body.innerText : ''")
                    .await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn in_section(section: &str, id: &str) -> String {
    format!(
        "(function(){{var s=document.getElementById('{section}');return !!s && s.innerText.indexOf('{id}')>=0;}})()"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_a_sandbox_come_and_go_in_chromium() {
    require_bwrap();
    let dir = TestDir::new();
    let d = testkit::daemon!().start(&dir.path().join("data"));
    let browser = Browser::start(&dir.path().join("chromium"));
    let mut tab = browser.open(&format!("{}/ui", d.url)).await;
    // Loaded, its script running and listening for changes.
    tab.until(
        "document.body && document.body.getAttribute('data-live') === 'on'",
        Duration::from_secs(30),
    )
    .await;

    // Created after the page loaded: it shows up without a reload. Its
    // label is markup a tenant chose: it must stay text.
    let req = sandboxer_api::CreateSandbox {
        labels: [("note".to_owned(), HOSTILE.to_owned())]
            .into_iter()
            .collect(),
        ..testkit::local_shell()
    };
    let sbx = testkit::ready_sandbox(&d.client, &req).await;
    tab.until(&in_section("live", &sbx.id), Duration::from_secs(20))
        .await;
    // Its TTL counts down (an hour by default: `59m 58s`, not a date).
    let ttl = tab
        .eval(&format!(
            "document.querySelector('#live tr[data-id=\"{}\"] .ttl').textContent",
            sbx.id
        ))
        .await;
    let ttl = ttl.as_str().unwrap_or_default().to_owned();
    assert!(ttl.starts_with("59m ") || ttl.starts_with("1h "), "{ttl}");
    assert_eq!(
        tab.eval("document.querySelectorAll('#live tbody tr').length")
            .await,
        json!(1)
    );

    // The screenshot operators see in the README.
    let shot = tab
        .call("Page.captureScreenshot", json!({"format": "png"}))
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().expect("png data"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    std::fs::write(target.join("ui-status.png"), &png).expect("keep the screenshot");

    // Destroyed: it leaves the live table for "Recently ended", with why.
    d.client
        .destroy(&sbx.id, Some(Duration::from_secs(30)))
        .await
        .expect("destroy");
    tab.until(
        &format!("!{}", in_section("live", &sbx.id)),
        Duration::from_secs(20),
    )
    .await;
    tab.until(&in_section("ended", &sbx.id), Duration::from_secs(20))
        .await;
    assert_eq!(
        tab.eval(&format!(
            "document.querySelector('#ended tr[data-id=\"{}\"] .reason').textContent",
            sbx.id
        ))
        .await,
        json!("destroyed")
    );

    // Its own page: events and a link to its snapshots.
    tab.call(
        "Page.navigate",
        json!({"url": format!("{}/ui/sandboxes/{}", d.url, sbx.id)}),
    )
    .await;
    tab.until(
        "!!document.getElementById('sandbox-events') && document.getElementById('sandbox-events').innerText.indexOf('destroy requested') >= 0",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        tab.eval("!!document.querySelector('a[href^=\"/v1/snapshots?sandbox=\"]')")
            .await,
        json!(true)
    );
    // The hostile label is shown as the text it is; nothing of it ran.
    assert_eq!(
        tab.eval(&format!(
            "document.getElementById('sandbox').innerText.indexOf({}) >= 0",
            json!(HOSTILE)
        ))
        .await,
        json!(true)
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('img').length").await,
        json!(0)
    );
    assert_eq!(
        tab.eval("document.body.hasAttribute('data-pwned')").await,
        json!(false)
    );
}

/// A label value that would run script if it were rendered as markup.
const HOSTILE: &str = "<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\"><script>document.body.setAttribute('data-pwned','2')</script>";

const OPERATOR: &str = "ui-operator-token";
const ALPHA: &str = "ui-alpha-token";
const BETA: &str = "ui-beta-token";

fn daemon_with_tokens(dir: &Path) -> Daemon {
    let config = dir.join("tokens.toml");
    std::fs::write(
        &config,
        testkit::token_block(OPERATOR, "ops", "ops", "operator")
            + &testkit::token_block(ALPHA, "a", "alpha", "consumer")
            + &testkit::token_block(BETA, "b", "beta", "consumer"),
    )
    .expect("write");
    testkit::daemon!()
        .args(["--config", config.to_str().expect("utf-8")])
        .start(&dir.join("data"))
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_takes_the_api_tokens_and_scopes_a_consumer() {
    require_bwrap();
    let dir = TestDir::new();
    let d = daemon_with_tokens(dir.path());
    let alpha = testkit::ready_sandbox(&d.client_with(ALPHA), &testkit::local_shell()).await;
    let beta = testkit::ready_sandbox(&d.client_with(BETA), &testkit::local_shell()).await;
    let http = no_redirects();

    // No token: to the login form, not a 401 problem.
    let r = http.get(format!("{}/ui", d.url)).send().await.expect("ui");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");
    let r = http
        .get(format!("{}/ui/login", d.url))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("text").contains("name=\"token\""));

    let login = |token: &'static str, origin: &'static str| {
        let (http, url) = (http.clone(), d.url.clone());
        async move {
            http.post(format!("{url}/ui/login"))
                .header("origin", origin)
                .form(&[("token", token)])
                .send()
                .await
                .expect("post login")
        }
    };
    let host = d.url.trim_start_matches("http://").to_owned();
    let same: &'static str = Box::leak(format!("http://{host}").into_boxed_str());
    // A wrong token, and a form posted from another site, are refused.
    assert_eq!(login("not-a-token", same).await.status(), 401);
    assert_eq!(login(ALPHA, "http://evil.example").await.status(), 403);
    let r = login(ALPHA, same).await;
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    for part in ["sandboxer_ui=", "HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    // A session id, never the token itself.
    assert!(!cookie.contains(ALPHA), "{cookie}");
    let jar = cookie.split(';').next().expect("pair").to_owned();

    // The consumer sees its project's sandbox, not the other's, and no hosts.
    let page = http
        .get(format!("{}/ui", d.url))
        .header("cookie", &jar)
        .send()
        .await
        .expect("ui");
    assert_eq!(page.status(), 200);
    let text = page.text().await.expect("text");
    assert!(text.contains(&alpha.id), "its own sandbox");
    assert!(!text.contains(&beta.id), "another project's sandbox");
    assert!(!text.contains("id=\"hosts\""), "hosts are for operators");
    let r = http
        .get(format!("{}/ui/sandboxes/{}", d.url, beta.id))
        .header("cookie", &jar)
        .send()
        .await
        .expect("other");
    assert_eq!(r.status(), 404);
    // The cookie is the page's only: the API still wants the header.
    let r = http
        .get(format!("{}/v1/sandboxes", d.url))
        .header("cookie", &jar)
        .send()
        .await
        .expect("api");
    assert_eq!(r.status(), 401);
    // A forged cookie is sent to the login form again; the live stream,
    // read by a script, is answered 401.
    let r = http
        .get(format!("{}/ui", d.url))
        .header("cookie", "sandboxer_ui=forged")
        .send()
        .await
        .expect("forged");
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{}/ui/live", d.url))
        .send()
        .await
        .expect("live");
    assert_eq!(r.status(), 401);
    // Logging out ends the session on the daemon, not only in the browser.
    let r = http
        .post(format!("{}/ui/logout", d.url))
        .header("cookie", &jar)
        .header("origin", same)
        .send()
        .await
        .expect("logout");
    assert_eq!(r.status(), 303);
    let r = http
        .get(format!("{}/ui", d.url))
        .header("cookie", &jar)
        .send()
        .await
        .expect("after logout");
    assert_eq!(r.status(), 303, "the old cookie is dead");
    // Logins, refused or not, are in the audit trail.
    let audit = d
        .client_with(OPERATOR)
        .request_json(sandboxctl::Method::GET, "/v1/audit?limit=100", None)
        .await
        .expect("audit")
        .1;
    let logins: Vec<u64> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["path"] == "/ui/login")
        .filter_map(|e| e["status"].as_u64())
        .collect();
    assert!(logins.contains(&401) && logins.contains(&303), "{logins:?}");

    // The operator sees both, and the hosts.
    let r = login(OPERATOR, same).await;
    let jar = r.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let text = http
        .get(format!("{}/ui", d.url))
        .header("cookie", &jar)
        .send()
        .await
        .expect("ui")
        .text()
        .await
        .expect("text");
    assert!(text.contains(&alpha.id) && text.contains(&beta.id));
    assert!(text.contains("id=\"hosts\""));
}
