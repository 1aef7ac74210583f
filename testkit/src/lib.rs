//! Test support shared by the crates' tests. Only `[dev-dependencies]` name this crate.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failure is a failed test

pub mod snapshot;
pub mod store;
pub mod vendor;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs each named test function on SQLite and on PostgreSQL: for `f(backend: Backend)`
/// ([`store::Backend`]), `on_both_backends!(f, g)` makes the tests `sqlite::f`,
/// `postgres::f`, `sqlite::g` and `postgres::g`. Invoke it in the module that defines the
/// functions.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name($crate::store::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name($crate::store::Backend::Postgres) } )*
        }
    };
}

/// Runs aiosmtpd's debugging handler, as `python3 -m aiosmtpd -n` does, but on the port given
/// as the first argument (0: any free one, which the kernel picks as it binds) and says which
/// port it listens on, once it does, in a first line `LISTENING <port>`.
const AIOSMTPD: &str = r#"
import asyncio, sys
from aiosmtpd.handlers import Debugging
from aiosmtpd.smtp import SMTP

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Debugging(sys.stdout)), host="127.0.0.1", port=int(sys.argv[1]))
    print("LISTENING", server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"#;

/// A real SMTP server nobody here wrote: aiosmtpd's debugging handler (Debian's
/// python3-aiosmtpd), which prints every message it receives. Killed on drop.
///
/// It binds its own port and says which once it listens: no port is picked by binding and
/// releasing it (another process could take it meanwhile), and readiness is not guessed by
/// connecting.
#[derive(Debug)]
pub struct MailCatcher {
    child: Child,
    port: u16,
    received: Arc<Mutex<String>>,
}

impl MailCatcher {
    /// Listens on 127.0.0.1 on a port the kernel picks ([`MailCatcher::port`]); returns once
    /// it accepts connections.
    pub fn start() -> MailCatcher {
        MailCatcher::spawn(Command::new("/usr/bin/python3"), 0)
    }

    /// Listens on 127.0.0.1:`port` inside network namespace `ns`, for a service there (a
    /// fresh namespace has its own ports, so a fixed one is nobody else's); returns once it
    /// accepts connections.
    pub fn start_in_namespace(ns: &str, port: u16) -> MailCatcher {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, "/usr/bin/python3"]);
        MailCatcher::spawn(command, port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(mut command: Command, port: u16) -> MailCatcher {
        // Debian's python3-aiosmtpd lives beside /usr/bin/python3, whatever python3 is on PATH.
        let mut child = command
            .args(["-u", "-c", AIOSMTPD, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start aiosmtpd (Debian package python3-aiosmtpd)");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut stderr = child.stderr.take().unwrap();
        let received = Arc::new(Mutex::new(String::new()));
        let sink = received.clone();
        let (listening, port) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut first = String::new();
            let _ = stdout.read_line(&mut first);
            let _ = listening.send(first);
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        // Generous: Python starts slowly on a busy machine.
        let first = port
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_default();
        let Some(port) = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            let mut why = String::new();
            let _ = stderr.read_to_string(&mut why);
            panic!("aiosmtpd did not start (Debian package python3-aiosmtpd): {first:?} {why}");
        };
        // Nothing reads stderr from here on: drain it so a chatty aiosmtpd never blocks.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        MailCatcher {
            child,
            port,
            received,
        }
    }

    /// Everything received so far, with quoted-printable soft line breaks and escaped `=`
    /// undone, so a test can look for a phrase that a long line wrapped.
    pub fn text(&self) -> String {
        self.received
            .lock()
            .unwrap()
            .replace("=\n", "")
            .replace("=3D", "=")
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    /// Waits (60 s at most) until `needle` has arrived `n` times.
    pub fn wait_for_count(&self, needle: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "no email with {needle:?}; received:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_for(&self, needle: &str) {
        self.wait_for_count(needle, 1);
    }

    /// Waits (60 s at most) for one message to `to` that contains every one of `needles`,
    /// and returns it.
    pub fn wait_for_message(&self, to: &str, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = self.text();
            let found = all
                .split("---------- MESSAGE FOLLOWS ----------")
                .find(|m| {
                    m.contains(&format!("To: {to}")) && needles.iter().all(|n| m.contains(n))
                });
            if let Some(message) = found {
                return message.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no email to {to} with {needles:?}; received:\n{all}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A port on 127.0.0.1 where nobody listens, for as long as this lives: a TCP socket bound
/// to it but not listening, so a connection there is refused at once, and no other process
/// can bind the port meanwhile (unlike a port found free by binding and releasing it, which
/// anyone may take and then answer on). For tests of a peer that is down.
#[derive(Debug)]
pub struct ClosedPort {
    _socket: socket2::Socket,
    port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .expect("TCP socket");
        let any: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        socket.bind(&any.into()).expect("bind 127.0.0.1:0");
        let port = socket
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .map(|a| a.port())
            .expect("bound port");
        ClosedPort {
            _socket: socket,
            port,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Default for ClosedPort {
    fn default() -> ClosedPort {
        ClosedPort::new()
    }
}

impl Drop for MailCatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
