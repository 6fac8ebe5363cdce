//! Servers the tests start on a port they pick themselves (port 0) and then announce in their
//! output: the worker, moto, s3s-fs, Prometheus, chromedriver. Nothing reserves a port first and
//! hands it to a process that binds it later, when another process may have taken it.

use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Time for a server to announce its address after it is started.
pub const STARTUP: Duration = Duration::from_secs(30);

/// Where a server's lines go once read.
pub enum Lines {
    /// Nowhere (a server that logs every request).
    Discard,
    /// To the test's stderr, as an inherited stderr would.
    Forward,
    /// Into a buffer the test reads.
    Keep(Arc<Mutex<String>>),
}

/// The address a server announces, once it has.
pub struct Announcement {
    said: mpsc::Receiver<Result<SocketAddr, String>>,
    /// Reads the stream until the server (and so its end of the pipe) is gone.
    reader: JoinHandle<()>,
}

/// Reads `stream` to its end on a thread of its own, so the server never blocks on a full pipe:
/// reports the first address `announced` finds in a line, and passes every line to `lines`.
pub fn follow(
    stream: impl Read + Send + 'static,
    announced: fn(&str) -> Option<SocketAddr>,
    lines: Lines,
) -> Announcement {
    let (tx, said) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        // What the server said before announcing, for the error if it never does.
        let mut before = Some(String::new());
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Some(text) = &mut before {
                match announced(&line) {
                    Some(addr) => {
                        before = None;
                        let _ = tx.send(Ok(addr));
                    }
                    None => {
                        text.push_str(&line);
                        text.push('\n');
                    }
                }
            }
            match &lines {
                Lines::Discard => {}
                Lines::Forward => {
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
                Lines::Keep(kept) => {
                    let mut kept = kept.lock().unwrap();
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
        }
        if let Some(text) = before {
            let _ = tx.send(Err(text));
        }
    });
    Announcement { said, reader }
}

impl Announcement {
    /// The announced address; panics, naming `what` and quoting it, if the server ends its output
    /// (exits) first or stays silent for [`STARTUP`].
    pub fn wait(&self, what: &str) -> SocketAddr {
        Announcement::wait_on(&self.said, what)
    }

    /// The same, without blocking the runtime.
    pub async fn wait_async(self, what: &str) -> (SocketAddr, JoinHandle<()>) {
        let what = what.to_owned();
        let Announcement { said, reader } = self;
        let addr = tokio::task::spawn_blocking(move || Announcement::wait_on(&said, &what))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        (addr, reader)
    }

    fn wait_on(said: &mpsc::Receiver<Result<SocketAddr, String>>, what: &str) -> SocketAddr {
        match said.recv_timeout(STARTUP) {
            Ok(Ok(addr)) => addr,
            Ok(Err(said)) => panic!("{what} exited before it listened:\n{said}"),
            Err(_) => panic!("{what} did not say where it listens within {STARTUP:?}"),
        }
    }
}

/// The address after `marker` in `line`, up to a space, a quote or a colour code.
pub fn after(line: &str, marker: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == '/' || c == '\u{1b}')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
