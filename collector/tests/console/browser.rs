//! A headless Chromium for the console tests, driven over the DevTools protocol: one
//! WebSocket to the browser, one page attached in flat session mode, commands answered in
//! order while the events in between are handled here (requests recorded, intercepted
//! requests continued, basic auth challenges answered, page errors kept).

use kappie_testkit::{wait_for, Netns, Proc};
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// The viewport of the page, and so of its screenshots.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 800;

pub struct Chromium {
    ws: WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    /// Basic auth credentials given when the page's requests are challenged.
    credentials: Option<(String, String)>,
    /// How often a request was challenged for credentials (the browser's prompt).
    pub auth_prompts: usize,
    /// Every URL the page requested.
    pub requests: Vec<String>,
    /// Uncaught exceptions, console errors and browser log errors (CSP violations, say).
    pub errors: Vec<String>,
    _process: Proc,
    dir: tempfile::TempDir,
}

impl Chromium {
    /// Starts Chromium (in `ns` when given, so it reaches a collector there) with an empty
    /// page of [`WIDTH`] x [`HEIGHT`]. With `credentials`, requests the server challenges
    /// for basic auth get them, as a user typing into the browser's prompt.
    pub fn launch(ns: Option<&Netns>, credentials: Option<(&str, &str)>) -> Chromium {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let mut cmd = match ns {
            Some(ns) => ns.command(Path::new("chromium")),
            None => std::process::Command::new("chromium"),
        };
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-default-apps",
            "--disable-extensions",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-port=0",
            &format!("--window-size={WIDTH},{HEIGHT}"),
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank");
        let process = Proc::spawn("chromium", cmd, &dir.path().join("chromium.log"));
        let port_file = profile.join("DevToolsActivePort");
        let (port, path) = wait_for(
            "Chromium to write DevToolsActivePort",
            Duration::from_secs(60),
            || {
                let text = std::fs::read_to_string(&port_file).ok()?;
                let mut lines = text.lines();
                let port: u16 = lines.next()?.trim().parse().ok()?;
                Some((port, lines.next()?.trim().to_owned()))
            },
        );
        let connect = || {
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to DevTools");
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let url = format!("ws://127.0.0.1:{port}{path}");
            tungstenite::client(url.as_str(), stream)
                .unwrap_or_else(|e| panic!("DevTools handshake: {e}"))
                .0
        };
        let ws = match ns {
            Some(ns) => ns.enter(connect),
            None => connect(),
        };
        let mut c = Chromium {
            ws,
            session: String::new(),
            next_id: 0,
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            auth_prompts: 0,
            requests: Vec::new(),
            errors: Vec::new(),
            _process: process,
            dir,
        };
        let target = c.browser_call("Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"].as_str().unwrap().to_owned();
        let attached = c.browser_call(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        c.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Network.enable",
            "Log.enable",
        ] {
            c.call(domain, json!({}));
        }
        c.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
        );
        if c.credentials.is_some() {
            c.call("Fetch.enable", json!({"handleAuthRequests": true}));
        }
        c
    }

    /// Chromium's own log, for failure messages.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("chromium.log")
    }

    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({"id": self.next_id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("DevTools send {method}: {e}"));
        self.next_id
    }

    fn wait_result(&mut self, id: u64, method: &str) -> Value {
        loop {
            let msg = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("DevTools, waiting for {method}: {e}"));
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"].as_u64() == Some(id) {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method}: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.on_event(&v);
            }
        }
    }

    fn browser_call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(None, method, params);
        self.wait_result(id, method)
    }

    /// A command to the page; its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        let id = self.send(Some(&session), method, params);
        self.wait_result(id, method)
    }

    fn on_event(&mut self, v: &Value) {
        let p = &v["params"];
        let session = v["sessionId"].as_str().map(str::to_owned);
        match v["method"].as_str().unwrap_or("") {
            "Network.requestWillBeSent" => {
                if let Some(url) = p["request"]["url"].as_str() {
                    self.requests.push(url.to_owned());
                }
            }
            "Fetch.requestPaused" => {
                let id = p["requestId"].clone();
                self.send(
                    session.as_deref(),
                    "Fetch.continueRequest",
                    json!({"requestId": id}),
                );
            }
            "Fetch.authRequired" => {
                self.auth_prompts += 1;
                let answer = match &self.credentials {
                    Some((u, pw)) => {
                        json!({"response": "ProvideCredentials", "username": u, "password": pw})
                    }
                    None => json!({"response": "CancelAuth"}),
                };
                let id = p["requestId"].clone();
                self.send(
                    session.as_deref(),
                    "Fetch.continueWithAuth",
                    json!({"requestId": id, "authChallengeResponse": answer}),
                );
            }
            "Runtime.exceptionThrown" => self.errors.push(format!(
                "exception: {}",
                p["exceptionDetails"]["exception"]["description"]
                    .as_str()
                    .or(p["exceptionDetails"]["text"].as_str())
                    .unwrap_or("?")
            )),
            "Runtime.consoleAPICalled" if p["type"] == "error" => {
                self.errors.push(format!("console.error: {}", p["args"]))
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                let e = &p["entry"];
                // A 401 the console answers with its sign-in form is not an error of the page.
                if e["source"] != "network" {
                    self.errors
                        .push(format!("log ({}): {}", e["source"], e["text"]));
                }
            }
            _ => {}
        }
    }

    /// Loads `url` (does not wait for it: see [`Chromium::wait_until`]).
    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigate to {url}: {r}");
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expression}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Polls `expression` until it is truthy (not null, false, 0 or ""); its value. Panics
    /// after `timeout` with the page's text, to show what the console displayed instead.
    pub fn wait_until(&mut self, what: &str, timeout: Duration, expression: &str) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let v = self.eval(expression);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > end {
                let text = self.eval("document.body ? document.body.innerText : ''");
                panic!(
                    "timed out waiting for {what}; the page shows:\n{}\nerrors: {:?}\nChromium log: {}",
                    text.as_str().unwrap_or(""),
                    self.errors,
                    self.log().display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&mut self, path: &Path) {
        use base64::Engine;
        let r = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        std::fs::write(path, png).unwrap();
    }
}
