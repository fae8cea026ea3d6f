//! A last-resort kill switch for a connection whose session actor is frozen.
//!
//! actix-web polls a WebSocket actor only while it can write to the socket (actix-web #2441):
//! when a client stops reading, the actor's timers stop and a graceful close can never be
//! sent. `TCP_USER_TIMEOUT` is meant to make the kernel give up on such a socket, but with a
//! peer that keeps acknowledging zero-window probes it did not fire within 20 s in our tests.
//! So when a slow consumer is evicted and its actor has not stopped within a grace period, the
//! node shuts the socket down itself; the HTTP dispatcher then sees EOF, drops the connection
//! and the actor is stopped.
//!
//! The socket is remembered by file descriptor (a `dup` would double the descriptors per
//! connection against a 20,000-per-process limit). Descriptors are reused after close, so the
//! switch re-checks both socket addresses before acting and is disarmed when the session stops.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `HttpServer::on_connect` records about an accepted socket.
#[derive(Debug, Clone, Copy)]
pub struct ConnSocket {
    pub fd: RawFd,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl ConnSocket {
    /// Reads the identity of an accepted TCP socket.
    pub fn of(tcp: &(impl AsRawFd + ?Sized)) -> Option<ConnSocket> {
        let fd = tcp.as_raw_fd();
        // SAFETY: `tcp` is a live socket for the duration of this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let sock = socket2::SockRef::from(&fd);
        Some(ConnSocket {
            fd: fd.as_raw_fd(),
            local: sock.local_addr().ok()?.as_socket()?,
            peer: sock.peer_addr().ok()?.as_socket()?,
        })
    }
}

/// Armed while the session lives.
#[derive(Debug, Default)]
pub struct KillSwitch(Mutex<Option<ConnSocket>>);

impl KillSwitch {
    pub fn new(sock: Option<ConnSocket>) -> Self {
        KillSwitch(Mutex::new(sock))
    }

    /// The session stopped: never touch the descriptor again.
    pub fn disarm(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Shuts the socket down if it is still the one recorded. True if it acted.
    pub fn fire(&self) -> bool {
        let guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = *guard else {
            return false;
        };
        // Holding the lock: `disarm` (run before the dispatcher closes the descriptor) waits.
        // SAFETY: the descriptor is open while armed; if it was reused, the address check
        // below refuses to act.
        let fd = unsafe { BorrowedFd::borrow_raw(s.fd) };
        let sock = socket2::SockRef::from(&fd);
        let same = sock.local_addr().ok().and_then(|a| a.as_socket()) == Some(s.local)
            && sock.peer_addr().ok().and_then(|a| a.as_socket()) == Some(s.peer);
        same && sock.shutdown(std::net::Shutdown::Both).is_ok()
    }

    /// Fires `grace` from now unless disarmed meanwhile (at once outside a tokio runtime).
    pub fn fire_after(self: Arc<Self>, grace: Duration) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(grace).await;
                if self.fire() {
                    tracing::debug!("shut down the socket of a frozen session");
                }
            });
        } else {
            self.fire();
        }
    }
}
