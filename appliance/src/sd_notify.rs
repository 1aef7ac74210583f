//! `sd_notify(3)`, the service manager's readiness protocol, for every Plantgate service:
//! one datagram of `KEY=value` lines to the Unix socket named by `$NOTIFY_SOCKET` (a path,
//! or `@name` for an abstract socket). systemd sets it for a unit of `Type=notify`; a test
//! sets it to a socket of its own to learn when a service it started is ready, and on which
//! addresses, without guessing by connecting (a TCP connect succeeds before TLS is set up,
//! and may reach another process's listener).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (lines such as `READY=1`, `STATUS=...`, `WATCHDOG=1`) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset (started by hand, or by a unit not of
/// `Type=notify`): nobody is waiting, which is not an error.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.as_bytes();
    let address = match path.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(std::path::Path::new(std::ffi::OsStr::from_bytes(path)))?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &address)?;
    Ok(true)
}

/// `READY=1` with `STATUS=` `status` (for the services, the addresses they really bound,
/// space-separated `name=ip:port` fields, so a listener configured on port 0 can be found).
/// Call once every listener is bound and its TLS set up. A failure to notify is logged, not
/// fatal: the service works; only whoever waits for it will time out and say so.
pub fn ready(status: &str) {
    if let Err(err) = notify(&format!("READY=1\nSTATUS={status}\n")) {
        tracing::warn!(error = %err, "cannot notify readiness to $NOTIFY_SOCKET");
    }
}

/// The port of field `name` (such as `https`) in a `STATUS=` line that [`ready`] sent.
pub fn status_port(status: &str, name: &str) -> Option<u16> {
    status
        .lines()
        .filter_map(|line| line.strip_prefix("STATUS="))
        .flat_map(str::split_whitespace)
        .filter_map(|field| field.strip_prefix(name)?.strip_prefix('='))
        .filter_map(|address| address.parse::<std::net::SocketAddr>().ok())
        .map(|address| address.port())
        .next()
}

#[cfg(test)]
mod tests {
    use super::status_port;

    #[test]
    fn ports_are_read_from_the_status_line() {
        let status = "READY=1\nSTATUS=https=127.0.0.1:4431 http=127.0.0.1:8080\n";
        assert_eq!(status_port(status, "https"), Some(4431));
        assert_eq!(status_port(status, "http"), Some(8080));
        assert_eq!(status_port(status, "mqtt"), None);
    }
}
