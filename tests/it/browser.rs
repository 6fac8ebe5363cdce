//! A real browser uploads: Debian's headless Chromium, driven over WebDriver (chromedriver), opens
//! the example page (`examples/upload.html`, served by the example's own router), hashes a file
//! with WebCrypto, gets a presigned PUT and uploads it to moto under the bucket's CORS rule; a
//! running worker records it. A page from an origin the rule does not allow is refused.
//!
//! WebDriver is plain HTTP and JSON, so the few commands used are sent with reqwest rather than
//! through a client crate. Chromium and chromedriver come from `scripts/ensure-chromium.sh`; if
//! they cannot start, these tests fail and say so.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::db::sha256_hex;
use crate::support::listen::{self, Lines};
use crate::support::{Stack, TestWorker, setup, wait_until};

#[path = "../../examples/presign_server/router.rs"]
mod presign_server;

const DEADLINE: Duration = Duration::from_secs(60);
/// W3C WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and the Chromium it starts, in a process group of their own.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    scratch: PathBuf,
}

fn scratch_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dpw-{what}-{:x}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A temporary directory removed when dropped, also when a test panics.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Browser {
    async fn start() -> Browser {
        let scratch = scratch_dir("browser");
        let log = std::fs::File::create(scratch.join("chromedriver.log")).unwrap();
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start ({e}): the browser test needs Debian's chromium \
                     and chromium-driver (scripts/ensure-chromium.sh installs them)"
                )
            });
        // It names the port it was given by the kernel: "... started successfully on port N."
        let announced = |line: &str| {
            let (_, port) = line.split_once("started successfully on port ")?;
            let port = port.trim_end_matches('.').parse().ok()?;
            Some(SocketAddr::from(([127, 0, 0, 1], port)))
        };
        let stdout = driver.stdout.take().unwrap();
        // Owned from here on, so a failure below still ends the process group.
        let mut browser = Browser {
            driver,
            base: String::new(),
            session: String::new(),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            scratch,
        };
        let (addr, _) = listen::follow(stdout, announced, Lines::Discard)
            .wait_async("chromedriver")
            .await;
        browser.base = format!("http://{addr}");
        let status = format!("{}/status", browser.base);
        let http = browser.http.clone();
        wait_until("chromedriver to answer", Duration::from_secs(30), || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                let body = http.get(&status).send().await.ok()?.text().await.ok()?;
                body.contains("\"ready\":true").then_some(())
            }
        })
        .await;
        let chromium = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let profile = browser.scratch.join("profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--no-proxy-server",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let (ok, answer) = browser.send("POST", "/session", capabilities).await;
        if !ok {
            let log = std::fs::read_to_string(browser.scratch.join("chromedriver.log"))
                .unwrap_or_default();
            panic!(
                "Chromium could not start under chromedriver: {answer}\nchromedriver log:\n{log}\n\
                 (scripts/ensure-chromium.sh installs chromium and chromium-driver)"
            );
        }
        browser.session = answer["sessionId"]
            .as_str()
            .expect("a WebDriver session id")
            .to_owned();
        browser
    }

    /// One WebDriver command; returns whether it succeeded and its `value`.
    async fn send(&self, method: &str, path: &str, body: Value) -> (bool, Value) {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self
                .http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let response = request.send().await.expect("chromedriver answers");
        let ok = response.status().is_success();
        let text = response.text().await.unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (ok, value["value"].clone())
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let (ok, value) = self.send(method, &path, body).await;
        assert!(ok, "WebDriver {method} {path} failed: {value}");
        value
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .command(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().expect("an element").to_owned()
    }

    /// Replaces the field's text by typing `text`, as a person would.
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Chooses `file` in an `<input type=file>` (WebDriver types the path into it).
    async fn choose_file(&self, css: &str, file: &Path) {
        let id = self.element(css).await;
        let path = file.to_str().unwrap();
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": path }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.command("POST", &format!("/element/{id}/click"), json!({}))
            .await;
    }

    async fn execute(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// What the page printed to the console, and the browser's own errors (CORS refusals).
    async fn console(&self) -> Vec<String> {
        let entries = self
            .command("POST", "/se/log", json!({"type": "browser"}))
            .await;
        entries
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e["message"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for the page's outcome (`#result` leaves idle/busy) and returns it.
    async fn outcome(&self) -> (String, Value) {
        wait_until("the page's upload outcome", DEADLINE, || async {
            let state = self
                .execute("return document.getElementById('result').dataset.state;")
                .await;
            let state = state.as_str().unwrap_or_default().to_owned();
            if state == "idle" || state == "busy" {
                return None;
            }
            let text = self
                .execute("return document.getElementById('result').textContent;")
                .await;
            let outcome = serde_json::from_str(text.as_str().unwrap_or("null")).unwrap();
            Some((state, outcome))
        })
        .await
    }

    async fn quit(mut self) {
        let session = std::mem::take(&mut self.session);
        let _ = self
            .send("DELETE", &format!("/session/{session}"), Value::Null)
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver leads its own process group, Chromium's processes included: end them all.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// The example's router (the page, its script and `POST /presign`) on a free loopback port;
/// returns the page's origin.
async fn serve_page(stack: &Stack) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let router = presign_server::router(stack.s3.clone(), stack.bucket.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    origin
}

/// Writes [`CSV`] as "báo cáo.csv", then uploads it from the page at `origin`.
async fn upload_csv(browser: &Browser, origin: &str) -> (String, Value) {
    let files = Scratch(scratch_dir("upload"));
    let file = files.0.join("báo cáo.csv");
    std::fs::write(&file, CSV).unwrap();
    upload_from_page(browser, origin, &file).await
}

/// Opens the page, fills the form as a user would, chooses `file` and submits.
async fn upload_from_page(browser: &Browser, origin: &str, file: &Path) -> (String, Value) {
    browser.goto(&format!("{origin}/")).await;
    browser.type_into("#datapack", "dp-1").await;
    browser.type_into("#path", "tài liệu/2024").await;
    browser.type_into("#uploader-name", "Nguyễn Văn A").await;
    browser.type_into("#uploader-email", "a@example.com").await;
    browser.choose_file("#file", file).await;
    browser.click("#submit").await;
    browser.outcome().await
}

const CSV: &str =
    "ngày,số tiền,ghi chú\n2024-01-02,100,tiền điện\n2024-01-03,250,\"Nguyễn, Văn A\"\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_browser_upload_becomes_a_row_with_the_browsers_sha256() {
    let (stack, db) = setup("dp-1").await;
    let origin = serve_page(&stack).await;
    stack.allow_origin(&origin).await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let browser = Browser::start().await;
    let (state, outcome) = upload_csv(&browser, &origin).await;
    assert_eq!(
        state,
        "done",
        "the page's upload failed: {outcome}\nconsole: {:?}",
        browser.console().await
    );
    let browser_sha256 = outcome["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        browser_sha256,
        sha256_hex(CSV.as_bytes()),
        "WebCrypto's digest"
    );
    assert_eq!(outcome["file"], "báo cáo.csv");
    assert!(
        outcome["etag"].as_str().is_some_and(|e| e.len() > 2),
        "ETag exposed by the CORS rule: {outcome}"
    );
    browser.quit().await;

    db.wait_rows(1, DEADLINE).await;
    let rows = db.rows().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row.object_key, "dp-1/tài liệu/2024/báo cáo.csv");
    assert_eq!(row.path, "/tài liệu/2024");
    assert_eq!(row.display, "báo cáo.csv");
    assert_eq!(row.sha256, browser_sha256);
    assert_eq!(row.length, CSV.len() as i64);
    assert_eq!(row.content_type.as_deref(), Some("text/csv"));
    assert_eq!(row.submitter_name.as_deref(), Some("Nguyễn Văn A"));
    assert_eq!(row.submitter_email.as_deref(), Some("a@example.com"));
    worker.stop().await;

    // Recorded for the docs, not asserted: whether moto kept the checksum the browser sent.
    let head = stack
        .s3
        .head_object()
        .bucket(&stack.bucket)
        .key(&row.object_key)
        .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    eprintln!(
        "moto's stored checksum after a browser PUT with x-amz-checksum-sha256: {:?}",
        head.checksum_sha256
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_from_an_origin_the_cors_rule_does_not_allow_is_refused() {
    let (stack, db) = setup("dp-1").await;
    // The page is served from one origin; the rule allows another (same host, other port).
    let origin = serve_page(&stack).await;
    let allowed = "http://127.0.0.1:1";
    assert_ne!(origin, allowed);
    stack.allow_origin(allowed).await;
    let worker = TestWorker::spawn(&stack, &db, &[]).await;
    let browser = Browser::start().await;
    let (state, outcome) = upload_csv(&browser, &origin).await;
    let console = browser.console().await;
    browser.quit().await;
    // The page got a URL, then the browser refused the PUT: a fetch TypeError, no status.
    assert_eq!(state, "error", "{outcome}");
    assert_eq!(outcome["stage"], "put", "{outcome}");
    assert_eq!(outcome["status"], 0, "{outcome}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("TypeError"),
        "{outcome}"
    );
    assert!(
        console.iter().any(|line| line.contains("CORS policy")),
        "the console names the CORS refusal: {console:?}"
    );

    // Nothing reached the bucket, so nothing was announced and no row appeared.
    let listed = stack.listing().await;
    assert_eq!(listed.key_count, Some(0), "{:?}", listed.contents);
    assert_eq!(stack.depth().await, (0, 0));
    worker.stop().await;
    assert_eq!(db.count().await, 0);
}
