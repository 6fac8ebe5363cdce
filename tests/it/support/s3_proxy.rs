//! An HTTP proxy in front of moto that sabotages single S3 or SQS requests on the test's orders:
//! an error status for one key, a reset or a stall mid-body, a corrupted byte, a slow answer.
//!
//! The TCP proxy (`proxy.rs`) acts on whole connections; this one reads each request, so a rule
//! can fail one object's GetObject while every other request passes. Rules are checked in order
//! and the first live one acts. Every request is recorded, so a test can count what the worker
//! asked for. It runs in the test's runtime and stops when dropped (stalled answers included).
//!
//! The client side keeps connections alive as the SDK expects; upstream, each request gets its
//! own connection because moto closes after every answer. Answers are read whole from moto and
//! passed on with a `Content-Length` framing (test objects are small enough to hold).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::proxy::reset;

/// What a rule applies to; every condition set must hold (the default matches every request).
#[derive(Debug, Clone, Default)]
pub struct Match {
    /// `GET`, `HEAD`, `PUT`, `POST`, `DELETE`.
    pub method: Option<&'static str>,
    /// A substring of the decoded object key; only object requests match.
    pub key_contains: Option<String>,
    /// Bucket requests without a key (HeadBucket, ListObjects).
    pub bucket_only: bool,
    /// The SQS operation, without the `AmazonSQS.` prefix (`ReceiveMessage`).
    pub sqs_target: Option<&'static str>,
    /// `Some(true)`: only requests with a `Range` header; `Some(false)`: only those without.
    pub ranged: Option<bool>,
}

impl Match {
    /// Any request on an object whose key contains `part`.
    pub fn key(part: &str) -> Match {
        Match {
            key_contains: Some(part.to_owned()),
            ..Match::default()
        }
    }

    /// GetObject (or a ranged GET) of an object whose key contains `part`.
    pub fn get(part: &str) -> Match {
        Match {
            method: Some("GET"),
            ..Match::key(part)
        }
    }

    /// HeadBucket, the worker's S3 probe.
    pub fn head_bucket() -> Match {
        Match {
            method: Some("HEAD"),
            bucket_only: true,
            ..Match::default()
        }
    }

    /// One SQS operation (`ReceiveMessage`, `DeleteMessage`, `ChangeMessageVisibility`, ...).
    pub fn sqs(target: &'static str) -> Match {
        Match {
            sqs_target: Some(target),
            ..Match::default()
        }
    }

    pub fn matches(&self, r: &Seen) -> bool {
        self.method.is_none_or(|m| r.method.eq_ignore_ascii_case(m))
            && self
                .key_contains
                .as_ref()
                .is_none_or(|part| r.key.as_ref().is_some_and(|k| k.contains(part.as_str())))
            && (!self.bucket_only || (r.bucket.is_some() && r.key.is_none()))
            && self
                .sqs_target
                .is_none_or(|t| r.sqs_target.as_deref() == Some(t))
            && self.ranged.is_none_or(|ranged| r.ranged == ranged)
    }
}

/// What the proxy does to a matched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answers itself, without contacting moto, with an S3 XML error (an SQS JSON error for SQS
    /// requests; no body for HEAD) carrying `code`.
    Status { status: u16, code: &'static str },
    /// 403 `AccessDenied`.
    Deny,
    /// Resets the client connection without forwarding the request or answering.
    ResetBeforeAnswer,
    /// Forwards, passes the head and the first N body bytes on, then resets the connection.
    ResetAfterBodyBytes(u64),
    /// Forwards, passes the head and the first N body bytes on, then says nothing more and never
    /// closes, until the proxy is dropped.
    StallAfterBodyBytes(u64),
    /// Forwards, and flips every bit of the body byte at this offset (headers, length and
    /// checksums unchanged; no effect past the end of the body).
    CorruptBodyByte(u64),
    /// Forwards at once, and holds moto's answer back for this long.
    Delay(Duration),
    /// Forwards, and passes the answer on at no more than this many bytes per second (a server
    /// that caps each connection, as S3 does).
    Throttle(u64),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: Match,
    pub action: Action,
    /// How many more requests it acts on; `None` for every one.
    pub times: Option<usize>,
}

impl Rule {
    /// A rule for every matching request.
    pub fn new(matcher: Match, action: Action) -> Rule {
        Rule {
            matcher,
            action,
            times: None,
        }
    }

    /// The same rule, for the next `n` matching requests only.
    pub fn times(self, n: usize) -> Rule {
        Rule {
            times: Some(n),
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(u64);

/// One request as the proxy saw it, and what it did to it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path-style S3: the first path segment, decoded.
    pub bucket: Option<String>,
    /// The rest of the path, decoded.
    pub key: Option<String>,
    /// `X-Amz-Target` without the `AmazonSQS.` prefix.
    pub sqs_target: Option<String>,
    /// Whether the request asked for a byte range.
    pub ranged: bool,
    /// `None` when passed through untouched.
    pub action: Option<Action>,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    rules: Vec<(RuleId, Rule)>,
    seen: Vec<Seen>,
    next_id: u64,
}

impl State {
    /// Picks the first live rule for `request`, uses one of its turns, and records the request.
    fn decide(&mut self, mut request: Seen) -> Option<Action> {
        let hit = self
            .rules
            .iter_mut()
            .find(|(_, rule)| rule.times != Some(0) && rule.matcher.matches(&request));
        request.action = hit.map(|(_, rule)| {
            if let Some(n) = rule.times.as_mut() {
                *n -= 1;
            }
            rule.action.clone()
        });
        let action = request.action.clone();
        self.seen.push(request);
        action
    }
}

pub struct S3Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl S3Proxy {
    /// Listens on a free loopback port and forwards to moto at `target`.
    pub async fn start(target: SocketAddr) -> S3Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (st, count, token) = (state.clone(), connections.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let client = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => client,
                        Err(_) => continue,
                    },
                    _ = token.cancelled() => return,
                };
                count.fetch_add(1, Ordering::Relaxed);
                let (st, token) = (st.clone(), token.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(client, target, st) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        S3Proxy {
            addr,
            state,
            connections,
            stop,
        }
    }

    /// The `http://` endpoint for the AWS SDK.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add(&self, rule: Rule) -> RuleId {
        let mut state = self.state.lock().unwrap();
        state.next_id += 1;
        let id = RuleId(state.next_id);
        state.rules.push((id, rule));
        id
    }

    pub fn remove(&self, id: RuleId) {
        self.state.lock().unwrap().rules.retain(|(i, _)| *i != id);
    }

    /// Removes every rule: everything passes through again.
    pub fn clear(&self) {
        self.state.lock().unwrap().rules.clear();
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests so far `matcher` matches (whatever was done to them).
    pub fn count(&self, matcher: &Match) -> usize {
        let state = self.state.lock().unwrap();
        state.seen.iter().filter(|s| matcher.matches(s)).count()
    }

    /// Client connections accepted so far (fewer than requests when clients keep them alive).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves one client connection, request after request, until it closes or a rule ends it.
async fn serve(client: TcpStream, target: SocketAddr, state: Arc<Mutex<State>>) {
    let _ = client.set_nodelay(true);
    let mut client = Reader::new(client);
    loop {
        let request = match client.head().await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(_) => return reset(&client.io),
        };
        let Some((method, path)) = request.request_line() else {
            return reset(&client.io);
        };
        if request.has("expect", "100-continue")
            && client
                .io
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
        {
            return;
        }
        let Ok(body) = client.body(request.request_framing()).await else {
            return reset(&client.io);
        };
        let seen = describe(&method, &path, &request);
        let is_sqs = seen.sqs_target.is_some();
        let action = state.lock().unwrap().decide(seen);
        let (status, code) = match action {
            Some(Action::Deny) => (403, "AccessDenied"),
            Some(Action::Status { status, code }) => (status, code),
            Some(Action::ResetBeforeAnswer) => return reset(&client.io),
            _ => (0, ""),
        };
        let (head, mut answer) = if status != 0 {
            error_answer(status, code, is_sqs, method == "HEAD")
        } else {
            match forward(target, &request, &body, method == "HEAD").await {
                Ok(got) => got,
                Err(_) => return reset(&client.io),
            }
        };
        let mut sent = answer.len();
        match action {
            Some(Action::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(Action::CorruptBodyByte(at)) => {
                if let Some(byte) = usize::try_from(at).ok().and_then(|i| answer.get_mut(i)) {
                    *byte ^= 0xff;
                }
            }
            Some(Action::ResetAfterBodyBytes(n) | Action::StallAfterBodyBytes(n)) => {
                sent = sent.min(usize::try_from(n).unwrap_or(usize::MAX));
            }
            _ => {}
        }
        let mut out = head;
        out.extend_from_slice(&answer[..sent]);
        let written = match action {
            Some(Action::Throttle(rate)) => paced(&mut client.io, &out, rate).await,
            _ => client.io.write_all(&out).await,
        };
        if written.is_err() {
            return;
        }
        match action {
            Some(Action::ResetAfterBodyBytes(_)) => return reset(&client.io),
            // Silent and open until the proxy is dropped (the caller's select ends this task).
            Some(Action::StallAfterBodyBytes(_)) => std::future::pending::<()>().await,
            _ => {}
        }
        if request.has("connection", "close") {
            return;
        }
    }
}

/// Writes `bytes` at no more than `rate` bytes per second, in 64 KiB steps.
async fn paced(io: &mut TcpStream, bytes: &[u8], rate: u64) -> std::io::Result<()> {
    let started = Instant::now();
    let mut written = 0usize;
    for chunk in bytes.chunks(64 << 10) {
        io.write_all(chunk).await?;
        written += chunk.len();
        let due = Duration::from_secs_f64(written as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    Ok(())
}

/// Sends one request to moto on a fresh connection; returns the head for the client (HTTP/1.1,
/// hop-by-hop headers replaced, `Content-Length` framing) and the whole body.
async fn forward(
    target: SocketAddr,
    request: &Head,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut upstream = Reader::new(TcpStream::connect(target).await?);
    let mut out = request.to_bytes(&["expect"], body.len(), "close");
    out.extend_from_slice(body);
    upstream.io.write_all(&out).await?;
    let response = upstream
        .head()
        .await?
        .ok_or(std::io::ErrorKind::UnexpectedEof)?;
    let status = response.status().ok_or(std::io::ErrorKind::InvalidData)?;
    let answer = upstream
        .body(response.response_framing(status, head_only))
        .await?;
    let mut head = response;
    head.start = format!(
        "HTTP/1.1 {}",
        head.start.split_once(' ').map_or("", |s| s.1)
    );
    // A HEAD answer keeps moto's Content-Length: it describes the object, not this body.
    let length = match (head_only, head.get("content-length")) {
        (true, Some(n)) => n.parse().unwrap_or(0),
        _ => answer.len(),
    };
    Ok((head.to_bytes(&[], length, "keep-alive"), answer))
}

/// An error answered by the proxy itself, in the protocol the client speaks.
fn error_answer(status: u16, code: &str, sqs: bool, head_only: bool) -> (Vec<u8>, Vec<u8>) {
    let (content_type, body) = if sqs {
        let body = format!(
            r#"{{"__type":"com.amazonaws.sqs#{code}","message":"injected by the test proxy"}}"#
        );
        ("application/x-amz-json-1.0", body)
    } else {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>injected by the test proxy</Message><RequestId>s3-proxy</RequestId></Error>"
        );
        ("application/xml", body)
    };
    let body = if head_only {
        Vec::new()
    } else {
        body.into_bytes()
    };
    let head = format!(
        "HTTP/1.1 {status} Injected\r\ncontent-type: {content_type}\r\n\
         x-amz-request-id: s3-proxy\r\ncontent-length: {}\r\nconnection: keep-alive\r\n\r\n",
        body.len()
    );
    (head.into_bytes(), body)
}

/// What a request is about: path-style S3 (`/bucket/key`) or SQS (`X-Amz-Target`).
fn describe(method: &str, target: &str, head: &Head) -> Seen {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let path = path.strip_prefix('/').unwrap_or(path);
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let mut parts = path.splitn(2, '/').filter(|p| !p.is_empty()).map(decode);
    let (bucket, key) = (parts.next(), parts.next());
    let sqs_target = head.get("x-amz-target").map(|t| {
        let t = t.strip_prefix("AmazonSQS.").unwrap_or(t);
        t.to_owned()
    });
    Seen {
        method: method.to_owned(),
        bucket,
        key,
        sqs_target,
        ranged: head.get("range").is_some(),
        action: None,
        at: Instant::now(),
    }
}

/// How a message body ends.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// A request or status line and its headers.
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

/// Headers that describe one connection, not the message; replaced on the way through.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "content-length",
];

impl Head {
    fn parse(raw: &[u8]) -> Option<Head> {
        let text = std::str::from_utf8(raw).ok()?;
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let start = lines.next()?.to_owned();
        let headers = lines
            .map(|l| {
                l.split_once(':')
                    .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            })
            .collect::<Option<_>>()?;
        Some(Head { start, headers })
    }

    fn get(&self, name: &str) -> Option<&str> {
        let mut all = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name));
        all.next().map(|(_, v)| v.as_str())
    }

    /// Whether header `name` lists `token` (case-insensitive).
    fn has(&self, name: &str, token: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    fn request_line(&self) -> Option<(String, String)> {
        let mut parts = self.start.split(' ');
        Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
    }

    fn status(&self) -> Option<u16> {
        self.start.split(' ').nth(1)?.parse().ok()
    }

    fn request_framing(&self) -> Framing {
        if self.has("transfer-encoding", "chunked") {
            return Framing::Chunked;
        }
        Framing::Length(
            self.get("content-length")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        )
    }

    fn response_framing(&self, status: u16, head_only: bool) -> Framing {
        if head_only || status < 200 || status == 204 || status == 304 {
            Framing::Length(0)
        } else if self.has("transfer-encoding", "chunked") {
            Framing::Chunked
        } else if let Some(n) = self.get("content-length").and_then(|n| n.parse().ok()) {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }

    /// The head as bytes, without hop-by-hop headers and those in `drop`, framed by `length`.
    fn to_bytes(&self, drop: &[&str], length: usize, connection: &str) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start);
        for (name, value) in &self.headers {
            let lower = name.to_ascii_lowercase();
            if !HOP_BY_HOP.contains(&lower.as_str()) && !drop.contains(&lower.as_str()) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out.push_str(&format!(
            "content-length: {length}\r\nconnection: {connection}\r\n\r\n"
        ));
        out.into_bytes()
    }
}

/// A buffered reader of HTTP/1.1 messages over a stream the caller may also write to.
struct Reader<S> {
    io: S,
    buf: Vec<u8>,
}

/// Longest head accepted (the SDK's are a few KiB).
const MAX_HEAD: usize = 256 * 1024;

impl<S: AsyncRead + Unpin> Reader<S> {
    fn new(io: S) -> Self {
        Reader {
            io,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next message head, or `None` if the peer closed cleanly between messages.
    async fn head(&mut self) -> std::io::Result<Option<Head>> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Head::parse(&raw)
                    .map(Some)
                    .ok_or(std::io::ErrorKind::InvalidData.into());
            }
            if self.buf.len() > MAX_HEAD {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            if self.fill().await? == 0 {
                return match self.buf.is_empty() {
                    true => Ok(None),
                    false => Err(std::io::ErrorKind::UnexpectedEof.into()),
                };
            }
        }
    }

    async fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill().await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2).await?;
                return Ok(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if self.buf.len() > MAX_HEAD || self.fill().await? == 0 {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
        }
    }

    /// A whole body, de-chunked (trailers dropped).
    async fn body(&mut self, framing: Framing) -> std::io::Result<Vec<u8>> {
        match framing {
            Framing::Length(n) => self.take(n).await,
            Framing::UntilClose => {
                while self.fill().await? > 0 {}
                Ok(std::mem::take(&mut self.buf))
            }
            Framing::Chunked => {
                let mut body = Vec::new();
                loop {
                    let line = self.line().await?;
                    let size = line.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(size, 16)
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                    if size == 0 {
                        while !self.line().await?.is_empty() {}
                        return Ok(body);
                    }
                    body.extend(self.take(size).await?);
                    self.take(2).await?;
                }
            }
        }
    }
}
