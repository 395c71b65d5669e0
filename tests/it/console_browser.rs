//! The ops console in a real headless browser: Debian's `chromium`, driven over the W3C
//! WebDriver protocol by `chromedriver` (a child process on a loopback port), against a
//! real daemon context and database. The page loads, the burn-down plots are drawn
//! (an SVG path with points, laid out with a size), an action sent without the console
//! token is refused and changes nothing, and a screenshot is saved.
//!
//! Skips with the reason printed when chromium or chromedriver is missing, except with
//! `CI=true`, where `.ci/run` installs both.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::console::{busy, console_config, serve};
use crate::support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The W3C name of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// `chromedriver` on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start(log: &Path) -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let started = Instant::now();
        loop {
            let ready = driver.call("GET", "/status", None).await;
            if ready.as_ref().is_ok_and(|v| v["ready"] == true) {
                return driver;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not answer within 20s: {ready:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; its `value`, or the error it answered.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
        };
        let answer = request.send().await.map_err(|e| e.to_string())?;
        let ok = answer.status().is_success();
        let text = answer.text().await.map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
        match ok {
            true => Ok(value["value"].clone()),
            false => Err(text),
        }
    }
}

/// A browser session of [`Driver`].
struct Session<'d> {
    driver: &'d Driver,
    id: String,
}

impl<'d> Session<'d> {
    async fn new(driver: &'d Driver) -> Session<'d> {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1360,1700",
                         "--hide-scrollbars", "--force-device-scale-factor=1"]
            }
        }}});
        let value = driver
            .call("POST", "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| panic!("no browser session: {e}"));
        Session {
            driver,
            id: value["sessionId"].as_str().unwrap().to_owned(),
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.id);
        self.driver
            .call(method, &path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> Vec<String> {
        let found = self
            .cmd(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
            .collect()
    }

    async fn attribute(&self, element: &str, name: &str) -> String {
        let value = self
            .cmd("GET", &format!("/element/{element}/attribute/{name}"), None)
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The text of the first element `css` selects, waiting up to 20 s for it: after a
    /// click that submits a form, the next page may still be loading, and an element
    /// found on the old page may go stale before its text is read.
    async fn text(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            let found = self.find(css).await;
            if let Some(element) = found.first() {
                let path = format!("/session/{}/element/{element}/text", self.id);
                if let Ok(value) = self.driver.call("GET", &path, None).await {
                    return value.as_str().unwrap().to_owned();
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no {css:?} with text within 20s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, to: &[PathBuf]) {
        let png = self.cmd("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        for path in to {
            std::fs::write(path, &png).unwrap();
            println!("console screenshot: {}", path.display());
        }
    }

    async fn close(self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.id), None)
            .await;
    }
}

/// Whether the browser is here; outside CI a missing one skips the test (said so).
fn browser_present() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {missing:?} missing: .ci/run installs chromium and chromium-driver");
    }
    eprintln!(
        "SKIPPED: {missing:?} not installed (apt-get install chromium chromium-driver; CI installs them)"
    );
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_draws_the_burn_down_and_an_action_without_the_token_is_refused() {
    if !browser_present() {
        return;
    }
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::ok().await;
    let ctx = busy(console_config(&db, &receiver, true)).await;
    let base = serve(&ctx).await;
    let dir = TempDir::new("browser");
    let driver = Driver::start(&dir.0.join("chromedriver.log")).await;
    let session = Session::new(&driver).await;

    session.go(&format!("{base}/")).await;
    let title = session.cmd("GET", "/title", None).await;
    assert_eq!(title, "Console · couponsd");
    let lines = session.find("svg.burn path.remaining").await;
    assert_eq!(lines.len(), 3, "one burn-down per coupon");
    for line in &lines {
        let d = session.attribute(line, "d").await;
        assert!(
            d.starts_with('M') && d.contains('L'),
            "a line of points: {d:?}"
        );
        let rect = session
            .cmd("GET", &format!("/element/{line}/rect"), None)
            .await;
        assert!(rect["width"].as_f64().unwrap() > 0.0, "laid out: {rect}");
    }
    assert_eq!(session.find("svg.burn line.rotation").await.len(), 2);
    let shots = [
        dir.0.join("console.png"),
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png"),
    ];
    session.screenshot(&shots).await;

    // `stock add` with the token left empty: refused, and nothing changed.
    let before = store(&ctx, async |c| c.coupon_stock().await).await;
    let count = session.find("#stock-add input[name=count]").await.remove(0);
    session
        .cmd("POST", &format!("/element/{count}/clear"), None)
        .await;
    session
        .cmd(
            "POST",
            &format!("/element/{count}/value"),
            Some(json!({"text": "40"})),
        )
        .await;
    let submit = session.find("#stock-add button").await.remove(0);
    session
        .cmd("POST", &format!("/element/{submit}/click"), None)
        .await;
    let said = session.text("p.message").await;
    assert!(
        said.contains("Refused: the console token is missing or wrong"),
        "{said}"
    );
    assert_eq!(
        session.cmd("GET", "/title", None).await,
        "Action refused · couponsd"
    );
    assert_eq!(store(&ctx, async |c| c.coupon_stock().await).await, before);
    session.close().await;
}
