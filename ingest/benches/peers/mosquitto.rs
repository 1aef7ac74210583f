//! Mosquitto, the peer the MQTT ingest is measured beside: started by the benchmark with a
//! TLS listener (the ingest's own certificate, so the same client trusts both) and
//! persistence on, as a broker that keeps messages across restarts would run.
//!
//! Mosquitto cannot listen on port 0 and say where, so a port is tried and, if mosquitto
//! reports it taken, another one: a port is never picked by binding and releasing it, and
//! readiness is mosquitto's own "running" line, not a guess.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Mosquitto {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start(cert: &Path, key: &Path) -> Mosquitto {
        assert!(
            Path::new("/usr/sbin/mosquitto").exists(),
            "\n*** /usr/sbin/mosquitto is missing: scripts/deps test installs mosquitto\n"
        );
        let dir = tempfile::tempdir().expect("mosquitto dir");
        for attempt in 0..20u16 {
            // Below the kernel's ephemeral range, where outgoing connections take theirs.
            let port = 20_000
                + (std::process::id() as u16)
                    .wrapping_mul(7)
                    .wrapping_add(attempt * 211)
                    % 10_000;
            let config = dir.path().join("mosquitto.conf");
            std::fs::write(
                &config,
                format!(
                    "user root\nlistener {port} 127.0.0.1\ncertfile {}\nkeyfile {}\n\
                     allow_anonymous true\npersistence true\npersistence_location {}/\n\
                     max_inflight_messages 0\nmax_queued_messages 0\n\
                     log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
                     log_type information\n",
                    cert.display(),
                    key.display(),
                    dir.path().display()
                ),
            )
            .expect("mosquitto.conf");
            let mut child = Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start mosquitto");
            let stderr = child.stderr.take().expect("mosquitto stderr");
            let (lines, said) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if lines.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut log = Vec::new();
            let running = loop {
                match said.recv_timeout(Duration::from_secs(60)) {
                    Ok(line) if line.contains(" running") => break true,
                    Ok(line) => log.push(line),
                    Err(_) => break false,
                }
            };
            if running {
                // Keep draining its log so that it never blocks on a full pipe.
                std::thread::spawn(move || while said.recv().is_ok() {});
                return Mosquitto {
                    child,
                    port,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                log.iter().any(|l| l.contains("Address already in use")),
                "mosquitto did not start: {log:#?}"
            );
        }
        panic!("no free port for mosquitto in 20 tries");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
