//! A moto server (S3 + SQS) on a loopback port it picks itself, stopped when its owner is dropped
//! or the test process exits (a small wrapper watches our end of a pipe).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use super::emulator;
use super::listen::{self, Lines};

pub struct Moto {
    pub endpoint: String,
    pub addr: SocketAddr,
    child: Child,
}

/// Runs the command in its arguments with our stderr, and stops it when stdin closes: the test
/// process's end of the pipe closes when it exits, however it exits.
const WRAPPER: &str = r#"
import subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
sys.stdin.read()
p.terminate()
p.wait()
"#;

impl Moto {
    pub fn start() -> Moto {
        let (program, args) = emulator::moto_command();
        let mut child = Command::new("python3")
            .args(["-c", WRAPPER, &program])
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 with moto installed (scripts/ensure-moto.sh)");
        // moto logs every request to stderr: it is read to its end, and dropped.
        let addr = listen::follow(child.stderr.take().unwrap(), announced, Lines::Discard)
            .wait("moto_server");
        Moto {
            endpoint: format!("http://{addr}"),
            addr,
            child,
        }
    }

    /// One server for every test of this process; each test still gets its own bucket and queues.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(Moto::start)
    }
}

fn announced(line: &str) -> Option<SocketAddr> {
    emulator::announced_port(line).map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
