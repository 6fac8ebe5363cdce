//! A moto server (S3 + SQS) on a free loopback port, stopped when its owner is dropped or the
//! test process exits (a small wrapper watches our end of a pipe).

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Moto {
    pub endpoint: String,
    pub port: u16,
    child: Child,
}

const WRAPPER: &str = r#"
import subprocess, sys
p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", sys.argv[1]],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
sys.stdin.read()
p.terminate()
p.wait()
"#;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    pub fn start() -> Moto {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-c", WRAPPER, &port.to_string()])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3 with moto installed (scripts/ensure-moto.sh)");
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            child,
        };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                use std::io::Write;
                let _ = s.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return moto;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One server for every test of this process; each test still gets its own bucket and queues.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(Moto::start)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
