//! A real browser for the dashboard test: Debian's headless Chromium, driven over the W3C
//! WebDriver protocol by Debian's chromedriver, with plain HTTP requests (no npm, no
//! downloaded browser). `.ci/run` installs `chromium` and `chromium-driver`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Value};

use crate::{send, TempDir};

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium session. Call [`quit`](Self::quit) at the end; dropping it only
/// stops chromedriver.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: TempDir,
}

impl Browser {
    /// Start chromedriver on a free port and open a headless Chromium session.
    pub async fn start() -> Browser {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed (Debian's chromium and chromium-driver; .ci/run installs them)");
        let stdout = driver.stdout.take().unwrap();
        // Readiness: the line naming the port it listens on.
        let port = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            let line = lines.find(|l| l.contains("started successfully on port"))?;
            std::thread::spawn(move || lines.for_each(drop));
            line.trim_end_matches('.').rsplit(' ').next()?.parse::<u16>().ok()
        })
        .await
        .unwrap()
        .expect("chromedriver did not say its port");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let profile = TempDir::new();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.0.display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
        }}});
        let mut browser = Browser { driver, addr, session: String::new(), _profile: profile };
        let created = browser.call(Method::POST, "/session", Some(capabilities)).await;
        browser.session = created["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_owned();
        browser
    }

    /// Load `url` and wait for it (WebDriver waits for the load event).
    pub async fn goto(&self, url: &str) {
        self.session_call(Method::POST, "/url", Some(json!({ "url": url }))).await;
    }

    /// Type `text` into the element matching the CSS `selector`.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let element = self.find(selector).await;
        self.session_call(Method::POST, &format!("/element/{element}/value"), Some(json!({ "text": text }))).await;
    }

    /// Click the element matching the CSS `selector`.
    pub async fn click(&self, selector: &str) {
        let element = self.find(selector).await;
        self.session_call(Method::POST, &format!("/element/{element}/click"), Some(json!({}))).await;
    }

    /// The rendered text of the element matching the CSS `selector`.
    pub async fn text(&self, selector: &str) -> String {
        let element = self.find(selector).await;
        let text = self.session_call(Method::GET, &format!("/element/{element}/text"), None).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Poll the text of `selector` (the page refreshes itself) until `check` holds, for at
    /// most 10 s; the last text seen either way.
    pub async fn wait_for_text(&self, selector: &str, check: impl Fn(&str) -> bool) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..100 {
            last = self.text(selector).await;
            if check(&last) {
                return Ok(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// End the session and stop chromedriver, which closes Chromium first (killing
    /// chromedriver alone would leave the browser running).
    pub async fn quit(mut self) {
        self.call(Method::DELETE, &format!("/session/{}", self.session), None).await;
        self.call(Method::GET, "/shutdown", None).await;
        for _ in 0..100 {
            if self.driver.try_wait().ok().flatten().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn find(&self, selector: &str) -> String {
        let found = self
            .session_call(Method::POST, "/element", Some(json!({ "using": "css selector", "value": selector })))
            .await;
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element `{selector}`: {found}")).to_owned()
    }

    async fn session_call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body).await
    }

    /// One WebDriver command; its `value`, or a panic with WebDriver's error.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .unwrap();
        let answer = send(self.addr, req).await;
        let value = answer.json()["value"].take();
        assert!(answer.status.is_success(), "WebDriver {path}: {} {value}", answer.status);
        value
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
