//! Opening authenticated WebSocket connections to loopback targets, with source addresses
//! spread over 127.0.0.2..=127.0.0.254 so more than one ephemeral port range is usable.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::proto::Protocol;

pub use crate::ws::WsConn as Ws;

/// Number of source addresses used: 127.0.0.2 ..= 127.0.0.254.
const SOURCES: u64 = 253;

/// A server endpoint: the URL as given and its loopback socket address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddrV4,
    /// `Host` header value and request path (with query) of the upgrade.
    pub host: String,
    pub path: String,
}

/// Parses a `ws://` URL and refuses anything outside 127.0.0.0/8.
pub fn parse_target(url: &str) -> Result<Target> {
    let uri: Uri = url.parse().with_context(|| format!("bad URL {url:?}"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("{url}: only ws:// URLs are supported (loopback, no TLS)");
    }
    let host = uri.host().context("URL without host")?;
    let ip: Ipv4Addr = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .with_context(|| format!("{url}: host must be an IPv4 loopback address"))?
    };
    if !ip.is_loopback() {
        bail!("{url}: refusing to target {ip}: only 127.0.0.0/8 is allowed");
    }
    let port = uri.port_u16().unwrap_or(80);
    Ok(Target {
        url: url.to_string(),
        addr: SocketAddrV4::new(ip, port),
        host: uri.authority().map_or(host, |a| a.as_str()).to_string(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

/// Parses a list of URLs (each may itself be comma-separated).
pub fn parse_targets(urls: &[String]) -> Result<Vec<Target>> {
    let t: Vec<Target> = urls
        .iter()
        .flat_map(|u| u.split(','))
        .filter(|u| !u.trim().is_empty())
        .map(|u| parse_target(u.trim()))
        .collect::<Result<_>>()?;
    if t.is_empty() {
        bail!("no --url given");
    }
    Ok(t)
}

/// The source address of connection number `index`.
pub fn source_ip(index: u64) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (index % SOURCES) as u8)
}

/// Connection settings shared by every connection of a run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ConnOpts {
    /// Bind to [`source_ip`] instead of letting the kernel choose 127.0.0.1.
    pub spread_sources: bool,
    /// Read buffer per connection (bytes); small for idle connections.
    pub read_buffer: usize,
    pub timeout_ms: u64,
    pub protocol: Protocol,
}

/// Why a connection failed, as a short stable kind plus the first error text.
#[derive(Debug)]
pub struct Fail {
    pub kind: String,
    pub detail: String,
}

fn io_kind(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::EADDRNOTAVAIL) | Some(libc::EADDRINUSE) => "no_source_port",
        Some(libc::EMFILE) | Some(libc::ENFILE) => "too_many_files",
        Some(libc::ECONNRESET) => "reset",
        _ => "io",
    }
}

fn fail(kind: impl Into<String>, detail: impl ToString) -> Fail {
    Fail {
        kind: kind.into(),
        detail: detail.to_string(),
    }
}

/// Opens one connection as the holder of `token`; returns it with the time from the
/// start of the TCP connect to the end of the WebSocket handshake.
pub async fn connect(
    target: &Target,
    token: &str,
    index: u64,
    opts: ConnOpts,
) -> Result<(Ws, Duration), Fail> {
    let started = Instant::now();
    let attempt = open(target, token, index, opts);
    match tokio::time::timeout(Duration::from_millis(opts.timeout_ms), attempt).await {
        Ok(Ok(ws)) => Ok((ws, started.elapsed())),
        Ok(Err(f)) => Err(f),
        Err(_) => Err(fail(
            "timeout",
            format!("no answer in {} ms", opts.timeout_ms),
        )),
    }
}

async fn open(target: &Target, token: &str, index: u64, opts: ConnOpts) -> Result<Ws, Fail> {
    let sock = TcpSocket::new_v4().map_err(|e| fail(io_kind(&e), e))?;
    if opts.spread_sources {
        no_port_bind(&sock);
        let src = SocketAddr::new(source_ip(index).into(), 0);
        sock.bind(src).map_err(|e| fail(io_kind(&e), e))?;
    }
    let stream = sock
        .connect(target.addr.into())
        .await
        .map_err(|e| fail(io_kind(&e), e))?;
    stream.set_nodelay(true).map_err(|e| fail("io", e))?;
    let rb = opts.read_buffer;
    match opts.protocol {
        Protocol::Native => {
            crate::ws::handshake(stream, &target.host, &target.path, Some(token), rb)
                .await
                .map_err(|e| fail(e.kind, e.detail))
        }
        Protocol::SocketIo => {
            let path = crate::sio::ws_path(&target.path);
            let mut ws = crate::ws::handshake(stream, &target.host, &path, None, rb)
                .await
                .map_err(|e| fail(e.kind, e.detail))?;
            ws.eio = true;
            let wait = Duration::from_millis(opts.timeout_ms);
            crate::sio::connect(&mut ws, token, wait)
                .await
                .map_err(|(k, d)| fail(k, d))?;
            Ok(ws)
        }
    }
}

/// IP_BIND_ADDRESS_NO_PORT: let `connect` pick the port for the full 4-tuple instead
/// of reserving one at `bind`, so each source address gets the whole port range.
fn no_port_bind(sock: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: valid fd and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        let t = parse_target("ws://127.0.0.1:3000/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:3000", "/ws")
        );
        assert_eq!(
            parse_target("ws://127.0.0.1:1/ws?a=b").unwrap().path,
            "/ws?a=b"
        );
        assert_eq!(parse_target("ws://127.0.0.1:1").unwrap().path, "/");
        assert_eq!(parse_target("ws://localhost/ws").unwrap().addr.port(), 80);
        assert!(parse_target("ws://127.9.9.9:1/ws?x=1").is_ok());
        for bad in [
            "ws://10.0.0.1:3000/ws",
            "ws://example.com/ws",
            "wss://127.0.0.1/ws",
            "http://127.0.0.1/ws",
            "ws://[::1]:3000/ws",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn url_lists_split_on_commas() {
        let v = vec!["ws://127.0.0.1:1/ws,ws://127.0.0.1:2/ws".to_string()];
        let t = parse_targets(&v).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].addr.port(), 2);
        assert!(parse_targets(&[]).is_err());
    }

    #[test]
    fn sources_cycle_over_253_addresses() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(252), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(source_ip(253), Ipv4Addr::new(127, 0, 0, 2));
    }
}
