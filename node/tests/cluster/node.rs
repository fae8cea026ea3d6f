//! One `parley` process of a cluster, on a loopback address of its own (127.0.0.x).
//!
//! Unlike the e2e [`Node`](crate::harness::Node), it reads the cluster address the node
//! prints, can be signalled without waiting (to watch a drain) and reports the exit status.
//! Its stderr is kept: the last lines go into the panic message when the node does not start,
//! and every line is echoed with the node's name (libtest shows it when the test fails).

use std::collections::VecDeque;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::harness::SECRET;

/// How long a node may take to print its addresses (it connects to the CQL store, and the
/// first node of a test creates the keyspace).
const START_WITHIN: Duration = Duration::from_secs(60);
/// Stderr lines kept for the panic message of a node that did not start.
const KEPT_LINES: usize = 60;

pub struct ClusterNode {
    pub name: String,
    /// HTTP and WebSocket address.
    pub addr: String,
    /// The bound cluster address (from `parley cluster listening on ADDR`).
    pub cluster_addr: String,
    child: Option<Child>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    _data: tempfile::TempDir,
}

impl ClusterNode {
    /// Starts `parley` with the test secret, test hooks, `--node-name name`, both listeners on
    /// `ip` port 0, and `args`; returns once both addresses are printed.
    pub async fn start(name: &str, ip: &str, args: &[String]) -> ClusterNode {
        Self::start_with_env(name, ip, args, &[]).await
    }

    /// [`ClusterNode::start`] with extra environment variables for the node.
    pub async fn start_with_env(
        name: &str,
        ip: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> ClusterNode {
        let data = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_parley"));
        // The flags below are the whole configuration: no PARLEY_* of the caller leaks in.
        for (k, _) in std::env::vars() {
            if k.starts_with("PARLEY_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--listen")
            .arg(format!("{ip}:0"))
            .arg("--data-dir")
            .arg(data.path())
            .arg("--jwt-secret")
            .arg(SECRET)
            .arg("--test-hooks")
            .arg("--node-name")
            .arg(name)
            .arg("--cluster-listen")
            .arg(format!("{ip}:0"))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("PARLEY_CLUSTER_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn parley");
        let stderr: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let echo = echo_stderr(name, child.stderr.take().expect("stderr"), stderr.clone());
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let started = tokio::time::timeout(START_WITHIN, async {
            let mut cluster_addr = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix("parley cluster listening on ") {
                    cluster_addr = Some(a.trim().to_string());
                } else if let Some(a) = line.strip_prefix("parley listening on ") {
                    return Ok((a.trim().to_string(), cluster_addr));
                }
            }
            Err(())
        })
        .await;
        let (addr, cluster_addr) = match started {
            Ok(Ok((addr, Some(cluster)))) => (addr, cluster),
            Ok(Ok((addr, None))) => {
                let _ = child.start_kill();
                panic!(
                    "node {name} printed `parley listening on {addr}` without a `parley cluster \
                     listening on ADDR` line before it: clustering is not enabled by \
                     --cluster-listen\n{}",
                    tail(&stderr)
                );
            }
            Ok(Err(())) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), echo).await;
                panic!(
                    "node {name} exited before listening ({status:?}); args {args:?}; its \
                     stderr:\n{}",
                    tail(&stderr)
                );
            }
            Err(_) => {
                let _ = child.start_kill();
                panic!(
                    "node {name} did not print its addresses within {START_WITHIN:?}; its \
                     stderr:\n{}",
                    tail(&stderr)
                );
            }
        };
        // Keep draining stdout so that the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ClusterNode {
            name: name.to_string(),
            addr,
            cluster_addr,
            child: Some(child),
            stderr,
            _data: data,
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// kill -9, and reap.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Sends SIGTERM without waiting (see [`ClusterNode::wait_exit`]).
    pub fn sigterm(&self) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .unwrap_or_else(|| panic!("node {} is not running", self.name));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
    }

    /// Waits for the process to exit; panics (after killing it) if it is still running after
    /// `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self
            .child
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", self.name));
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => {
                let _ = child.kill().await;
                panic!(
                    "node {} did not exit within {within:?} (killed now); its stderr:\n{}",
                    self.name,
                    tail(&self.stderr)
                );
            }
        }
    }

    /// The last lines the node wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&self.stderr)
    }
}

fn echo_stderr(
    name: &str,
    stderr: tokio::process::ChildStderr,
    kept: Arc<Mutex<VecDeque<String>>>,
) -> JoinHandle<()> {
    let name = name.to_string();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[node {name}] {line}");
            let mut k = kept.lock().unwrap_or_else(|p| p.into_inner());
            if k.len() == KEPT_LINES {
                k.pop_front();
            }
            k.push_back(line);
        }
    })
}

fn tail(kept: &Mutex<VecDeque<String>>) -> String {
    let k = kept.lock().unwrap_or_else(|p| p.into_inner());
    if k.is_empty() {
        return "  (nothing)".into();
    }
    k.iter().map(|l| format!("  {l}\n")).collect()
}
