//! A fault-injecting TCP proxy for the link between two nodes, so that a test can partition the
//! cluster without root (no iptables) and without killing anyone.
//!
//! One proxy per ordered node pair: node X dials Y through `proxy(X→Y)`, and the nodes run with
//! `cluster.learn_peers=false` so that they never dial around it.
//!
//! * normal: every accepted connection is forwarded to the upstream, both ways, byte for byte;
//! * [`Proxy::cut`]: forwarding stops in both directions, **without closing anything**: bytes are
//!   no longer read from either socket (so, as in a real partition, they are never acknowledged
//!   past the kernel buffers and the sender eventually blocks), and connections accepted during
//!   the cut are held open and never forwarded (a dial that "hangs");
//! * [`Proxy::heal`]: new connections are forwarded again, and every connection that was cut
//!   (or accepted during the cut) is closed, so that both ends notice and redial.
//!
//! Before the upstream is known ([`Proxy::set_upstream`]) connections are closed at once, like a
//! refused dial: the nodes of a partitionable cluster are started one after the other.
//!
//! A cut is decided between reading a chunk and writing it, so once `cut()` has returned no byte
//! read afterwards is forwarded (the unit tests below rely on it).

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The state every connection of a proxy watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Link {
    /// Currently cut.
    cut: bool,
    /// How many cuts happened so far: a connection born before the latest cut is never
    /// forwarded again.
    cuts: u64,
}

pub struct Proxy {
    addr: SocketAddr,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    /// Dropping it (with the proxy) ends every connection.
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on an ephemeral port of 127.0.0.1, upstream unknown yet.
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let upstream: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (link, rx) = watch::channel(Link::default());
        let accept = tokio::spawn(accept_loop(listener, upstream.clone(), rx));
        Proxy {
            addr,
            upstream,
            link,
            accept,
        }
    }

    /// A proxy to `upstream`.
    pub async fn to(upstream: SocketAddr) -> Proxy {
        let p = Proxy::start().await;
        p.set_upstream(upstream);
        p
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.upstream.lock().unwrap_or_else(|p| p.into_inner()) = Some(upstream);
    }

    /// Stops forwarding (blackhole), keeping every socket open.
    pub fn cut(&self) {
        self.link.send_modify(|l| {
            if !l.cut {
                l.cut = true;
                l.cuts += 1;
            }
        });
    }

    /// Forwards new connections again and closes the ones that were cut.
    pub fn heal(&self) {
        self.link.send_modify(|l| l.cut = false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Arc<Mutex<Option<SocketAddr>>>,
    link: watch::Receiver<Link>,
) {
    while let Ok((inbound, _)) = listener.accept().await {
        let up = *upstream.lock().unwrap_or_else(|p| p.into_inner());
        tokio::spawn(serve(inbound, up, link.clone()));
    }
}

/// How one direction of a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Pump {
    /// The source closed its side (forwarded as a half-close).
    Eof,
    /// A read or write failed: tear the connection down.
    Failed,
    /// The link was cut: stop forwarding, keep the sockets.
    Cut,
}

async fn serve(
    mut inbound: TcpStream,
    upstream: Option<SocketAddr>,
    mut link: watch::Receiver<Link>,
) {
    let born = *link.borrow_and_update();
    if born.cut {
        // A dial during the cut: accepted by the kernel, never answered, closed on heal.
        hang(&mut link).await;
        return;
    }
    let Some(upstream) = upstream else {
        return;
    };
    let mut outbound = {
        let mut cut = link.clone();
        tokio::select! {
            r = TcpStream::connect(upstream) => match r {
                Ok(s) => s,
                Err(_) => return,
            },
            _ = until_cut(&mut cut, born.cuts) => {
                hang(&mut link).await;
                return;
            }
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let outcome = {
        let (mut ir, mut iw) = inbound.split();
        let (mut or, mut ow) = outbound.split();
        let mut there = pin!(pump(&mut ir, &mut ow, &link, born.cuts));
        let mut back = pin!(pump(&mut or, &mut iw, &link, born.cuts));
        let mut cut = link.clone();
        let mut cut = pin!(until_cut(&mut cut, born.cuts));
        let (mut there_done, mut back_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut there, if !there_done => {
                    if r != Pump::Eof { break r; }
                    there_done = true;
                }
                r = &mut back, if !back_done => {
                    if r != Pump::Eof { break r; }
                    back_done = true;
                }
                _ = &mut cut => break Pump::Cut,
            }
            if there_done && back_done {
                break Pump::Eof;
            }
        }
    };
    if outcome == Pump::Cut {
        hang(&mut link).await;
    }
    // Both sockets are dropped (closed) here.
}

/// Copies `from` to `to` until EOF, an error or a cut (checked after every read, before the
/// write, so nothing read after `cut()` returned is forwarded).
async fn pump<R, W>(from: &mut R, to: &mut W, link: &watch::Receiver<Link>, cuts: u64) -> Pump
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) => n,
            Err(_) => return Pump::Failed,
        };
        if link.borrow().cuts != cuts {
            return Pump::Cut;
        }
        if n == 0 {
            let _ = to.shutdown().await;
            return Pump::Eof;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return Pump::Failed;
        }
    }
}

/// Resolves once a cut newer than `cuts` happened, or the proxy is gone.
async fn until_cut(link: &mut watch::Receiver<Link>, cuts: u64) {
    loop {
        if link.borrow_and_update().cuts != cuts {
            return;
        }
        if link.changed().await.is_err() {
            return;
        }
    }
}

/// Resolves once the link is not cut, or the proxy is gone.
async fn hang(link: &mut watch::Receiver<Link>) {
    loop {
        if !link.borrow_and_update().cut {
            return;
        }
        if link.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    const BOUND: Duration = Duration::from_secs(5);
    /// How long "nothing arrives" is watched for.
    const QUIET: Duration = Duration::from_millis(400);

    /// An echo server that counts its connections and keeps every byte it received.
    struct Echo {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        received: Arc<Mutex<Vec<u8>>>,
        task: JoinHandle<()>,
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn echo() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let received: Arc<Mutex<Vec<u8>>> = Arc::default();
        let task = {
            let (accepted, received) = (accepted.clone(), received.clone());
            tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let received = received.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 1024];
                        loop {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    received.lock().unwrap().extend_from_slice(&buf[..n]);
                                    if s.write_all(&buf[..n]).await.is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    });
                }
            })
        };
        Echo {
            addr,
            accepted,
            received,
            task,
        }
    }

    async fn connect(p: &Proxy) -> TcpStream {
        tokio::time::timeout(BOUND, TcpStream::connect(p.addr()))
            .await
            .expect("connect in time")
            .expect("connect")
    }

    /// Writes `msg` and expects it back (writing and reading at once, so that a large `msg`
    /// cannot fill every buffer on the way).
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) {
        let mut got = vec![0u8; msg.len()];
        let (mut r, mut w) = s.split();
        let (wrote, read) = tokio::time::timeout(BOUND, async {
            tokio::join!(w.write_all(msg), r.read_exact(&mut got))
        })
        .await
        .expect("echo in time");
        wrote.expect("write");
        read.expect("read echo");
        assert!(got == msg, "the echo differs from what was sent");
    }

    /// Nothing arrives and the connection stays open for [`QUIET`].
    async fn silent_and_open(s: &mut TcpStream, what: &str) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(QUIET, s.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("{what}: closed, should hang open"),
            Ok(Ok(n)) => panic!("{what}: {n} bytes came through a cut link"),
            Ok(Err(e)) => panic!("{what}: {e}, should hang open"),
        }
    }

    /// The connection is closed (EOF or reset) within [`BOUND`], with no data before.
    async fn closed(s: &mut TcpStream, what: &str) {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(BOUND, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after heal"),
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("{what}: {n} bytes arrived instead of a close"),
        }
    }

    #[tokio::test]
    async fn proxy_forwards_both_ways() {
        let e = echo().await;
        let p = Proxy::to(e.addr).await;
        let mut a = connect(&p).await;
        let mut b = connect(&p).await;
        round_trip(&mut a, b"hello").await;
        round_trip(&mut b, b"world").await;
        // More than one buffer's worth, both ways at once.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        round_trip(&mut a, &big).await;
        assert_eq!(e.accepted.load(Ordering::SeqCst), 2);
        // A half-close travels through: the echo server sees EOF and closes.
        a.shutdown().await.expect("shutdown");
        closed(&mut a, "after half-close").await;
    }

    #[tokio::test]
    async fn proxy_cut_blackholes_and_heal_closes_and_resumes() {
        let e = echo().await;
        let p = Proxy::to(e.addr).await;
        let mut before = connect(&p).await;
        round_trip(&mut before, b"one").await;

        p.cut();
        // An established connection: writes are accepted by the kernel, nothing is forwarded,
        // nothing comes back, and it is not closed.
        before.write_all(b"two").await.expect("write into the cut");
        silent_and_open(&mut before, "established connection during the cut").await;
        // A new connection: the dial completes (kernel backlog) but never reaches upstream.
        let mut during = connect(&p).await;
        during.write_all(b"three").await.expect("write");
        silent_and_open(&mut during, "connection opened during the cut").await;
        assert_eq!(
            e.accepted.load(Ordering::SeqCst),
            1,
            "a dial during the cut reached the upstream"
        );
        // Cutting again is a no-op.
        p.cut();

        p.heal();
        closed(&mut before, "the cut connection").await;
        closed(&mut during, "the connection opened during the cut").await;
        let received = String::from_utf8(e.received.lock().unwrap().clone()).expect("utf8");
        assert_eq!(
            received, "one",
            "bytes written during the cut were forwarded"
        );

        let mut after = connect(&p).await;
        round_trip(&mut after, b"four").await;
        assert_eq!(e.accepted.load(Ordering::SeqCst), 2);

        // And a second cut/heal cycle works the same.
        p.cut();
        after.write_all(b"five").await.expect("write");
        silent_and_open(&mut after, "second cut").await;
        p.heal();
        closed(&mut after, "second cut, healed").await;
        let mut again = connect(&p).await;
        round_trip(&mut again, b"six").await;
    }

    #[tokio::test]
    async fn proxy_without_upstream_refuses_then_forwards() {
        let e = echo().await;
        let p = Proxy::start().await;
        let mut early = connect(&p).await;
        closed(&mut early, "a dial before the upstream is known").await;
        p.set_upstream(e.addr);
        let mut s = connect(&p).await;
        round_trip(&mut s, b"late").await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let e = echo().await;
        let p = Proxy::to(e.addr).await;
        let mut s = connect(&p).await;
        round_trip(&mut s, b"x").await;
        p.cut();
        let mut during = connect(&p).await;
        drop(p);
        closed(&mut s, "a cut connection of a dropped proxy").await;
        closed(&mut during, "a held connection of a dropped proxy").await;
    }
}
