//! Worker processes. One process may hold at most ~20,000 open files, so scenarios that
//! open many connections re-execute this binary as hidden `worker` subcommands, each with
//! a shard of the work (a [`Spec`] as a JSON argument).
//!
//! Worker → parent: one JSON [`Event`] per stdout line (`progress`, `ready`, `result`,
//! `error`). Parent → worker: stdin lines `go <mono_ns>` (start the measured phase at that
//! CLOCK_MONOTONIC time) and `stop`. EOF on stdin means stop, so workers never outlive a
//! parent, and every worker also exits by itself after its spec's deadline.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::progress::Progress;
use crate::{chat_shard, connect};

#[derive(Serialize, Deserialize)]
#[serde(tag = "scenario", rename_all = "snake_case")]
pub enum Spec {
    Connect(connect::Shard),
    Chat(chat_shard::Shard),
}

impl Spec {
    fn threads(&self) -> usize {
        match self {
            Spec::Connect(s) => s.threads,
            Spec::Chat(s) => s.threads,
        }
    }

    fn deadline(&self) -> Duration {
        match self {
            Spec::Connect(s) => s.deadline(),
            Spec::Chat(s) => s.deadline(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Progress { done: u64 },
    Ready { payload: Value },
    Result { payload: Value },
    Error { message: String },
}

/// Writes one event line to stdout (worker side).
pub fn emit(ev: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, ev);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

pub fn emit_value<T: Serialize>(ready: bool, v: &T) {
    let payload = serde_json::to_value(v).expect("serializable payload");
    emit(&if ready {
        Event::Ready { payload }
    } else {
        Event::Result { payload }
    });
}

/// Builds the multi-thread runtime every mode runs on.
pub fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.clamp(1, 4))
        .enable_all()
        .build()
        .context("building tokio runtime")
}

/// Entry point of `parley-loadtest worker --spec JSON`.
pub fn run(spec_json: &str) -> Result<()> {
    let spec: Spec = serde_json::from_str(spec_json).context("bad worker spec")?;
    crate::sys::raise_nofile();
    let deadline = spec.deadline();
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        eprintln!("worker: deadline of {deadline:?} passed, exiting");
        std::process::exit(3);
    });
    let rt = runtime(spec.threads())?;
    let res = rt.block_on(async {
        let ctl = Control::stdin();
        match spec {
            Spec::Connect(s) => connect::run_shard(s, ctl).await,
            Spec::Chat(s) => chat_shard::run(s, ctl).await,
        }
    });
    if let Err(e) = &res {
        emit(&Event::Error {
            message: format!("{e:#}"),
        });
    }
    rt.shutdown_timeout(Duration::from_millis(500));
    res
}

/// A command from the parent.
#[derive(Debug, PartialEq, Eq)]
pub enum Cmd {
    Go(u64),
    Stop,
}

/// The worker's view of its stdin.
pub struct Control {
    lines: tokio::io::Lines<BufReader<tokio::io::Stdin>>,
}

impl Control {
    fn stdin() -> Self {
        Self {
            lines: BufReader::new(tokio::io::stdin()).lines(),
        }
    }

    /// The next command; EOF or a read error counts as `Stop`.
    pub async fn next(&mut self) -> Cmd {
        loop {
            match self.lines.next_line().await {
                Ok(Some(l)) => match parse_cmd(&l) {
                    Some(c) => return c,
                    None => eprintln!("worker: ignoring command {l:?}"),
                },
                _ => return Cmd::Stop,
            }
        }
    }
}

fn parse_cmd(l: &str) -> Option<Cmd> {
    let l = l.trim();
    if l == "stop" {
        return Some(Cmd::Stop);
    }
    l.strip_prefix("go ")?.trim().parse().ok().map(Cmd::Go)
}

/// The parent's handle on its workers.
pub struct Workers {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    events: mpsc::UnboundedReceiver<(usize, Option<Event>)>,
    /// Events read by [`Workers::progress_until`] that `collect` has to see.
    pending: std::collections::VecDeque<(usize, Option<Event>)>,
    done: Vec<u64>,
}

impl Workers {
    pub fn spawn(specs: &[Spec]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating own binary")?;
        let (tx, events) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .arg("--spec")
                .arg(serde_json::to_string(spec)?)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("spawning worker")?;
            stdins.push(child.stdin.take().context("worker stdin")?);
            let mut lines = BufReader::new(child.stdout.take().context("worker stdout")?).lines();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(l)) = lines.next_line().await {
                    match serde_json::from_str::<Event>(&l) {
                        Ok(ev) => {
                            let _ = tx.send((i, Some(ev)));
                        }
                        Err(_) => eprintln!("worker {i}: {l}"),
                    }
                }
                let _ = tx.send((i, None));
            });
            children.push(child);
        }
        Ok(Self {
            done: vec![0; children.len()],
            children,
            stdins,
            events,
            pending: Default::default(),
        })
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    /// Waits for one `ready` (or `result`) payload from every worker, in worker order,
    /// printing aggregated progress to stderr under `label` when `total` > 0.
    pub async fn collect(
        &mut self,
        ready: bool,
        timeout: Duration,
        label: &str,
        total: u64,
    ) -> Result<Vec<Value>> {
        let n = self.children.len();
        let mut got: Vec<Option<Value>> = vec![None; n];
        let mut done = vec![0u64; n];
        let mut bar = (total > 0).then(|| Progress::new(label, total));
        let deadline = tokio::time::Instant::now() + timeout;
        while got.iter().any(Option::is_none) {
            let next = match self.pending.pop_front() {
                Some(x) => Ok(Some(x)),
                None => tokio::time::timeout_at(deadline, self.events.recv()).await,
            };
            let (i, ev) = match next {
                Err(_) => bail!("{label}: workers did not answer within {timeout:?}"),
                Ok(None) => bail!("{label}: all workers exited"),
                Ok(Some(x)) => x,
            };
            match ev {
                None if got[i].is_none() => bail!("{label}: worker {i} exited early"),
                None => {}
                Some(Event::Error { message }) => bail!("{label}: worker {i}: {message}"),
                Some(Event::Progress { done: d }) => {
                    done[i] = d;
                    if let Some(b) = &mut bar {
                        b.set(done.iter().sum(), "");
                    }
                }
                Some(Event::Ready { payload }) if ready => got[i] = Some(payload),
                Some(Event::Result { payload }) if !ready => got[i] = Some(payload),
                Some(other) => eprintln!("{label}: worker {i}: unexpected {other:?}"),
            }
        }
        if let Some(b) = bar {
            b.finish();
        }
        Ok(got.into_iter().map(|v| v.expect("all collected")).collect())
    }

    /// Waits until `deadline`, keeping the workers' latest progress figures; returns
    /// their sum. Other events are kept for `collect`.
    pub async fn progress_until(&mut self, deadline: tokio::time::Instant) -> u64 {
        while let Ok(Some((i, ev))) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            match ev {
                Some(Event::Progress { done }) => self.done[i] = done,
                other => self.pending.push_back((i, other)),
            }
        }
        self.done.iter().sum()
    }

    /// Sends one command line to every worker.
    pub async fn broadcast(&mut self, line: &str) -> Result<()> {
        for s in &mut self.stdins {
            s.write_all(format!("{line}\n").as_bytes()).await?;
            s.flush().await?;
        }
        Ok(())
    }

    /// Closes stdins and waits for the workers to exit (killing stragglers).
    pub async fn finish(mut self, timeout: Duration) {
        self.stdins.clear();
        for c in &mut self.children {
            if tokio::time::timeout(timeout, c.wait()).await.is_err() {
                let _ = c.kill().await;
            }
        }
    }
}

/// Splits `n` items into `w` nearly equal contiguous ranges.
pub fn split_ranges(n: u64, w: u64) -> Vec<std::ops::Range<u64>> {
    let w = w.max(1);
    (0..w).map(|i| (n * i / w)..(n * (i + 1) / w)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse() {
        assert_eq!(parse_cmd("go 123\n"), Some(Cmd::Go(123)));
        assert_eq!(parse_cmd("stop"), Some(Cmd::Stop));
        assert_eq!(parse_cmd("go x"), None);
    }

    #[test]
    fn ranges_cover_everything_evenly() {
        let r = split_ranges(10, 3);
        assert_eq!(r, vec![0..3, 3..6, 6..10]);
        assert_eq!(
            split_ranges(2, 4)
                .iter()
                .map(|r| r.end - r.start)
                .sum::<u64>(),
            2
        );
    }

    #[test]
    fn events_are_tagged_lines() {
        let s = serde_json::to_string(&Event::Progress { done: 5 }).unwrap();
        assert_eq!(s, r#"{"type":"progress","done":5}"#);
    }
}
