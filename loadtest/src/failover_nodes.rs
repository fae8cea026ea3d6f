//! The nodes of a `failover` run and how they are killed and started again.
//!
//! A node is given as `--node 'url=ws://127.0.0.2:3000/ws,pidfile=/tmp/n2.pid,start=CMD'`:
//! * `url` (required): its WebSocket URL (loopback only); `/healthz` on the same host and port
//!   tells when it serves again;
//! * `pidfile`: a file holding its process id; a node without one is never killed;
//! * `start`: a shell command (`sh -c`) that starts it again and writes the pidfile, e.g.
//!   `echo $$ >/tmp/n2.pid; exec parley --listen 127.0.0.2:3000 ...`. It must be the last key:
//!   everything after `start=` is the command, commas included;
//! * `log`: a file the restarted node's stdout and stderr are appended to (default: discarded).
//!
//! A bare URL is a node that is never killed. Restarted nodes run in a process group of their
//! own and outlive the tool; the tool only ever signals the pid it reads from a pidfile.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::time::Instant;

use crate::net::{self, Target};

#[derive(Debug, Clone, Serialize)]
pub struct NodeSpec {
    pub url: String,
    #[serde(skip)]
    pub target: Target,
    pub pidfile: Option<PathBuf>,
    pub start: Option<String>,
    pub log: Option<PathBuf>,
}

impl NodeSpec {
    /// Whether the schedule may kill this node (it can also be started again).
    pub fn killable(&self) -> bool {
        self.pidfile.is_some() && self.start.is_some()
    }
}

/// Parses one `--node` value (see the module documentation).
pub fn parse_node(s: &str) -> Result<NodeSpec> {
    let s = s.trim();
    let (head, start) = if let Some(cmd) = s.strip_prefix("start=") {
        ("", Some(cmd))
    } else if let Some(at) = s.find(",start=") {
        (&s[..at], Some(&s[at + ",start=".len()..]))
    } else {
        (s, None)
    };
    let (mut url, mut pidfile, mut log) = (None, None, None);
    if head.starts_with("ws://") {
        url = Some(head.to_string());
    } else {
        for part in head.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("--node {s:?}: {part:?} is not KEY=VALUE"))?;
            match k.trim() {
                "url" => url = Some(v.trim().to_string()),
                "pidfile" => pidfile = Some(PathBuf::from(v.trim())),
                "log" => log = Some(PathBuf::from(v.trim())),
                other => bail!("--node {s:?}: unknown key {other:?} (url, pidfile, log, start)"),
            }
        }
    }
    let url = url.with_context(|| format!("--node {s:?}: no url="))?;
    let start = start.map(str::trim).filter(|c| !c.is_empty());
    if start.is_some() && pidfile.is_none() {
        bail!("--node {s:?}: start= needs a pidfile= (the command must write it)");
    }
    Ok(NodeSpec {
        target: net::parse_target(&url)?,
        url,
        pidfile,
        start: start.map(str::to_string),
        log,
    })
}

/// The pid in `pidfile`, if it names a live process.
pub fn read_pid(pidfile: &std::path::Path) -> Result<i32> {
    let text = std::fs::read_to_string(pidfile)
        .with_context(|| format!("reading pidfile {}", pidfile.display()))?;
    let pid: i32 = text.trim().parse().with_context(|| {
        format!(
            "pidfile {}: {:?} is not a pid",
            pidfile.display(),
            text.trim()
        )
    })?;
    if pid <= 1 {
        bail!("pidfile {}: refusing pid {pid}", pidfile.display());
    }
    // A zombie (killed, not reaped yet) is not a live process.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("pidfile {}: no process {pid}", pidfile.display()))?;
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_ascii_whitespace().next());
    if state == Some("Z") || state == Some("X") {
        bail!("pidfile {}: process {pid} has exited", pidfile.display());
    }
    Ok(pid)
}

/// SIGKILL to the pid of `node`'s pidfile; returns the pid.
pub fn kill9(node: &NodeSpec) -> Result<i32> {
    let pidfile = node.pidfile.as_ref().context("no pidfile")?;
    let pid = read_pid(pidfile)?;
    // SAFETY: kill(2) with a pid read from the user's pidfile (> 1, alive) and a valid signal.
    if unsafe { libc::kill(pid, libc::SIGKILL) } != 0 {
        bail!("kill -9 {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(pid)
}

/// Runs `node`'s start command (`sh -c`, own process group, stdin closed, output to its log
/// or discarded).
pub fn start(node: &NodeSpec) -> Result<Child> {
    let cmd = node.start.as_ref().context("no start command")?;
    let out = |log: &Option<PathBuf>| -> Result<Stdio> {
        Ok(match log {
            Some(p) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening log {}", p.display()))?
                .into(),
            None => Stdio::null(),
        })
    };
    tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(out(&node.log)?)
        .stderr(out(&node.log)?)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}: sh -c {cmd:?}", node.url))
}

/// `GET /healthz` on the node's host and port answers 200.
pub async fn healthy(t: &Target) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(t.addr).await.ok()?;
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            t.host
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let k = s.read(&mut head[n..]).await.ok()?;
            if k == 0 {
                break;
            }
            n += k;
        }
        let line = String::from_utf8_lossy(&head[..n]).to_string();
        Some(line.split(' ').nth(1) == Some("200"))
    };
    tokio::time::timeout(Duration::from_secs(2), probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Waits until the node is healthy; fails after `within`, or at once if `child` (the start
/// command) exits with a failure status.
pub async fn wait_healthy(t: &Target, child: &mut Option<Child>, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if healthy(t).await {
            return Ok(());
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                *child = None;
                if !status.success() {
                    bail!("the start command exited with {status}");
                }
            }
        }
        if Instant::now() > deadline {
            bail!("not healthy within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_specs_parse() {
        let n = parse_node(
            "url=ws://127.0.0.2:3000/ws,pidfile=/tmp/n2.pid,log=/tmp/n2.log,start=echo $$ >/tmp/n2.pid; exec parley --peers a:1,b:2",
        )
        .unwrap();
        assert_eq!(n.url, "ws://127.0.0.2:3000/ws");
        assert_eq!(
            n.pidfile.as_deref(),
            Some(std::path::Path::new("/tmp/n2.pid"))
        );
        assert_eq!(n.log.as_deref(), Some(std::path::Path::new("/tmp/n2.log")));
        assert_eq!(
            n.start.as_deref(),
            Some("echo $$ >/tmp/n2.pid; exec parley --peers a:1,b:2")
        );
        assert!(n.killable());
        let bare = parse_node("ws://127.0.0.3:3000/ws").unwrap();
        assert!(!bare.killable());
        assert_eq!(bare.target.addr.port(), 3000);
        let no_start = parse_node("url=ws://127.0.0.3:1/ws,pidfile=/x").unwrap();
        assert!(!no_start.killable());
        assert!(parse_node("url=ws://127.0.0.2:3000/ws,start=parley").is_err());
        assert!(parse_node("pidfile=/x").is_err());
        assert!(parse_node("url=ws://10.0.0.1:3000/ws").is_err());
        assert!(parse_node("url=ws://127.0.0.1:1/ws,colour=red").is_err());
    }

    #[test]
    fn pidfiles_must_name_a_live_process() {
        let dir = std::env::temp_dir().join(format!("lt-pid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("p");
        std::fs::write(&f, format!("{}\n", std::process::id())).unwrap();
        assert_eq!(read_pid(&f).unwrap(), std::process::id() as i32);
        std::fs::write(&f, "1").unwrap();
        assert!(read_pid(&f).is_err());
        std::fs::write(&f, "nope").unwrap();
        assert!(read_pid(&f).is_err());
        std::fs::write(&f, "999999999").unwrap();
        assert!(read_pid(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
