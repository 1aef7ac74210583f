//! Test support shared by the crates' tests. Only `[dev-dependencies]` name this crate.
#![allow(clippy::expect_used, clippy::unwrap_used)] // test support: a failure is a failed test

pub mod store;
pub mod vendor;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A real SMTP server nobody here wrote: aiosmtpd's debugging server (Debian's
/// python3-aiosmtpd), which prints every message it receives. Killed on drop.
#[derive(Debug)]
pub struct MailCatcher {
    child: Child,
    received: Arc<Mutex<String>>,
}

impl MailCatcher {
    /// Listens on 127.0.0.1:`port` here, and waits until it accepts connections.
    pub fn start(port: u16) -> MailCatcher {
        let catcher = MailCatcher::spawn(Command::new("/usr/bin/python3"), port);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        catcher
    }

    /// Listens on 127.0.0.1:`port` inside network namespace `ns`, for a service there.
    pub fn start_in_namespace(ns: &str, port: u16) -> MailCatcher {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns, "/usr/bin/python3"]);
        MailCatcher::spawn(command, port)
    }

    fn spawn(mut command: Command, port: u16) -> MailCatcher {
        // Debian's python3-aiosmtpd lives beside /usr/bin/python3, whatever python3 is on PATH.
        let mut child = command
            .args([
                "-u",
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd (Debian package python3-aiosmtpd)");
        let mut stdout = child.stdout.take().unwrap();
        let received = Arc::new(Mutex::new(String::new()));
        let sink = received.clone();
        std::thread::spawn(move || {
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
        MailCatcher { child, received }
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

impl Drop for MailCatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
