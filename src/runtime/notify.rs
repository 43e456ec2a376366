//! The systemd notification protocol (`sd_notify`): `READY=1`, `STATUS=…`,
//! `WATCHDOG=1`, `RELOADING=1` and `STOPPING=1`, sent as datagrams to the socket
//! named by `$NOTIFY_SOCKET`.
//!
//! The protocol is one datagram of `KEY=value` lines per message, so it is written
//! here over a `UnixDatagram` (about thirty lines) rather than pulled in as a crate.
//! Sending never blocks: the socket is non-blocking and a message that does not fit
//! is dropped, which systemd tolerates (the next status or ping replaces it).
//!
//! **Invariant:** without `$NOTIFY_SOCKET` every call is a no-op, so the daemon
//! behaves the same outside systemd. The environment is read once, by
//! [`Notifier::from_env`] in `cli`; the library never reads it on its own.
//! Checked by `a_disabled_notifier_sends_nothing_and_has_no_watchdog` below and
//! `tests/integration/invariants.rs::only_cli_reads_the_systemd_environment`.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::Duration;

/// A handle for sending notifications; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Socket>>,
    /// `$WATCHDOG_USEC` when it is meant for this process: systemd restarts the
    /// service when no `WATCHDOG=1` arrives within it.
    watchdog: Option<Duration>,
}

struct Socket {
    socket: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

impl Notifier {
    /// A notifier that sends nothing (outside systemd, in tests, for the demo).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. A socket that
    /// cannot be used is logged and gives a disabled notifier.
    pub fn from_env() -> Notifier {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .filter(|_| {
                // systemd sets WATCHDOG_PID to the main process; a child that
                // inherited the variable must not ping on the parent's behalf.
                var("WATCHDOG_PID").is_none_or(|pid| pid == std::process::id().to_string())
            })
            .map(Duration::from_micros);
        let Some(path) = var("NOTIFY_SOCKET") else {
            return Notifier::disabled();
        };
        match Socket::open(&path) {
            Ok(socket) => Notifier {
                inner: Some(Arc::new(socket)),
                watchdog,
            },
            Err(error) => {
                tracing::warn!(socket = path, %error,
                    "Cannot use NOTIFY_SOCKET; systemd will not hear from this daemon");
                Notifier::disabled()
            }
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The watchdog timeout systemd enforces, if any. Ping at half of it.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.inner.as_ref().and(self.watchdog)
    }

    /// The services answer and the schema is current: start-up is complete.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line summary `systemctl status` shows.
    pub fn status(&self, text: &str) {
        // A newline would end the STATUS field and start a bogus one.
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    /// "Still alive and healthy": systemd restarts the service when these stop.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// A reload began; send [`Notifier::ready`] when it is over. systemd 253 and
    /// later want the monotonic clock with it to tell this reload from an older one.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    /// The drain began.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, message: &str) {
        let Some(s) = &self.inner else { return };
        if let Err(error) = s.socket.send_to_addr(message.as_bytes(), &s.addr) {
            tracing::debug!(%error, message, "A systemd notification was not sent");
        }
    }
}

impl Socket {
    /// A path, or `@name` for a socket in the abstract namespace.
    fn open(path: &str) -> std::io::Result<Socket> {
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None => std::os::unix::net::SocketAddr::from_pathname(path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Socket { socket, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disabled_notifier_sends_nothing_and_has_no_watchdog() {
        let n = Notifier::disabled();
        n.ready();
        n.status("x");
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_timeout(), None);
    }

    #[test]
    fn messages_arrive_as_one_datagram_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            inner: Some(Arc::new(Socket::open(path.to_str().unwrap()).unwrap())),
            watchdog: None,
        };
        n.status("running 2 jobs\nand a second line");
        n.reloading();
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=running 2 jobs and a second line");
        let len = server.recv(&mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text}");
    }
}
