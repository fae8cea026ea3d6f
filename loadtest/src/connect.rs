//! `connect`: open and hold N idle authenticated connections, spread over worker
//! processes; report connect latency, failures and server RSS per connection.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::cli::{self, Common};
use crate::net::{self, ConnOpts, Target, Ws};
use crate::report::{self, Table};
use crate::stats::{self, hist_hex, Counts, Summary};
use crate::sys;
use crate::token::Minter;
use crate::worker::{self, emit, Cmd, Control, Event, Spec, Workers};

/// Most connections one run may open.
const MAX_CONNECTIONS: u64 = 300_000;
/// Connections one worker process holds by default (the open-files limit is 20,000).
pub const PER_WORKER: u64 = 18_000;
/// Read buffer of an idle connection.
const IDLE_READ_BUFFER: usize = 4096;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: u64,
    /// How long to hold them once all are open.
    #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
    pub hold: Duration,
    /// Worker processes (default: one per 18,000 connections).
    #[arg(long)]
    pub workers: Option<u64>,
}

/// One worker's share: connections `first..first+count`.
#[derive(Serialize, Deserialize)]
pub struct Shard {
    pub targets: Vec<Target>,
    pub secret: String,
    pub prefix: String,
    pub first: u64,
    pub count: u64,
    pub concurrency: u64,
    pub opts: ConnOpts,
    pub threads: usize,
    pub hold_ms: u64,
}

impl Shard {
    pub fn deadline(&self) -> Duration {
        cli::CONNECT_PHASE + Duration::from_millis(self.hold_ms) + Duration::from_secs(120)
    }
}

#[derive(Serialize, Deserialize)]
struct Ready {
    connected: u64,
    failed: Counts,
    samples: BTreeMap<String, String>,
    #[serde(with = "hist_hex")]
    latency: hdrhistogram::Histogram<u64>,
}

#[derive(Serialize, Deserialize)]
struct Closed {
    dropped: Counts,
}

pub async fn run_shard(s: Shard, mut ctl: Control) -> Result<()> {
    let minter = Arc::new(Minter::new(&s.secret)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut hist = stats::new_hist();
    let mut failed = Counts::new();
    let mut samples = BTreeMap::new();
    let mut holders = Vec::with_capacity(s.count as usize);
    let targets = Arc::new(s.targets.clone());
    let attempts = stream::iter(s.first..s.first + s.count)
        .map(|i| {
            let (minter, targets, prefix) = (minter.clone(), targets.clone(), &s.prefix);
            async move {
                let user = format!("{prefix}-c{i}");
                let token = minter.mint(&user, &user).map_err(|e| net::Fail {
                    kind: "token".into(),
                    detail: e.to_string(),
                })?;
                net::connect(&targets[i as usize % targets.len()], &token, i, s.opts).await
            }
        })
        .buffer_unordered(s.concurrency.max(1) as usize);
    tokio::pin!(attempts);
    let mut last = Instant::now();
    let mut done = 0u64;
    while let Some(r) = attempts.next().await {
        done += 1;
        match r {
            Ok((ws, lat)) => {
                hist.saturating_record(lat.as_micros().max(1) as u64);
                holders.push(tokio::spawn(hold(ws, stop_rx.clone())));
            }
            Err(f) => {
                stats::bump(&mut failed, &f.kind);
                samples.entry(f.kind).or_insert(f.detail);
            }
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            emit(&Event::Progress { done });
        }
    }
    let ready = Ready {
        connected: holders.len() as u64,
        failed,
        samples,
        latency: hist,
    };
    worker::emit_value(true, &ready);
    while ctl.next().await != Cmd::Stop {}
    let _ = stop_tx.send(true);
    let mut dropped = Counts::new();
    for h in holders {
        if let Ok(Some(reason)) = h.await {
            stats::bump(&mut dropped, &reason);
        }
    }
    worker::emit_value(false, &Closed { dropped });
    Ok(())
}

/// Holds one idle connection (answering pings) until stopped; returns why it ended
/// early if the server or the network ended it.
async fn hold(mut ws: Ws, mut stop: watch::Receiver<bool>) -> Option<String> {
    let reason = {
        let stopped = crate::chat_conn::stopped(&mut stop);
        tokio::pin!(stopped);
        tokio::select! {
            _ = &mut stopped => None,
            r = ws.read_until(|_| None::<()>) => Some(match r {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionAborted => e.to_string(),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => "eof".to_string(),
                _ => "error".to_string(),
            }),
        }
    };
    if reason.is_none() {
        ws.close().await;
    }
    reason
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    protocol: &'static str,
    urls: Vec<String>,
    workers: usize,
    requested: u64,
    connected: u64,
    failed: Counts,
    failure_samples: BTreeMap<String, String>,
    connect_phase_s: f64,
    connects_per_s: f64,
    connect_latency: Summary,
    hold_s: f64,
    dropped_during_hold: Counts,
    server_pids: Vec<u32>,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    server_rss_end_kib: Option<u64>,
    /// From the RSS right after the last connection opened.
    server_kib_per_connection: Option<f64>,
    /// From the RSS at the end of the hold: the idle steady state (after the server's idle
    /// actors hibernated and it gave freed memory back).
    server_kib_per_idle_connection: Option<f64>,
}

pub async fn run(a: Args) -> Result<()> {
    let c = &a.common;
    let targets = net::parse_targets(&c.url)?;
    sys::check_pids(&c.pids)?;
    cli::check_phase("--hold", a.hold)?;
    let n = a.connections;
    if n == 0 || n > MAX_CONNECTIONS {
        bail!("--connections must be 1..={MAX_CONNECTIONS}");
    }
    let workers = a.workers.unwrap_or(n.div_ceil(PER_WORKER)).clamp(1, 64);
    if n.div_ceil(workers) > 19_000 {
        bail!("{workers} workers would each hold over 19,000 connections (open-files limit)");
    }
    let prefix = c.prefix()?;
    let specs: Vec<Spec> = worker::split_ranges(n, workers)
        .into_iter()
        .map(|r| {
            Spec::Connect(Shard {
                targets: targets.clone(),
                secret: c.jwt_secret.clone(),
                prefix: prefix.clone(),
                first: r.start,
                count: r.end - r.start,
                concurrency: c.concurrency.div_ceil(workers),
                opts: c.conn_opts(IDLE_READ_BUFFER),
                threads: c.threads as usize,
                hold_ms: a.hold.as_millis() as u64,
            })
        })
        .collect();

    let rss_before = sys::rss_sum_kib(&c.pids)?;
    let started = Instant::now();
    let mut w = Workers::spawn(&specs)?;
    let readies = w.collect(true, cli::CONNECT_PHASE, "connect", n).await?;
    let phase = started.elapsed().as_secs_f64();
    let mut hist = stats::new_hist();
    let (mut connected, mut failed, mut samples) = (0, Counts::new(), BTreeMap::new());
    for v in readies {
        let r: Ready = serde_json::from_value(v)?;
        connected += r.connected;
        hist.add(&r.latency)?;
        stats::merge_counts(&mut failed, &r.failed);
        for (k, d) in r.samples {
            samples.entry(k).or_insert(d);
        }
    }
    eprintln!(
        "[connect] {connected}/{n} open after {phase:.1}s; holding {:?}",
        a.hold
    );
    // Let the server settle (lazy allocations after the handshake) before sampling.
    tokio::time::sleep(a.hold.min(Duration::from_secs(2))).await;
    let rss_after = sys::rss_sum_kib(&c.pids)?;
    tokio::time::sleep(a.hold.saturating_sub(Duration::from_secs(2))).await;
    let rss_end = sys::rss_sum_kib(&c.pids)?;
    w.broadcast("stop").await?;
    let mut dropped = Counts::new();
    for v in w
        .collect(false, Duration::from_secs(60), "close", 0)
        .await?
    {
        let r: Closed = serde_json::from_value(v)?;
        stats::merge_counts(&mut dropped, &r.dropped);
    }
    let nworkers = w.len();
    w.finish(Duration::from_secs(5)).await;

    let per = |rss: Option<u64>| match (rss_before, rss) {
        (Some(b), Some(a)) if connected > 0 => {
            Some(((a as f64 - b as f64) / connected as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    let (per_conn, per_idle_conn) = (per(rss_after), per(rss_end));
    let rep = Report {
        scenario: "connect",
        protocol: c.protocol.name(),
        urls: targets.iter().map(|t| t.url.clone()).collect(),
        workers: nworkers,
        requested: n,
        connected,
        failed,
        failure_samples: samples,
        connect_phase_s: (phase * 100.0).round() / 100.0,
        connects_per_s: (connected as f64 / phase).round(),
        connect_latency: stats::summarize(&hist),
        hold_s: a.hold.as_secs_f64(),
        dropped_during_hold: dropped,
        server_pids: c.pids.clone(),
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_rss_end_kib: rss_end,
        server_kib_per_connection: per_conn,
        server_kib_per_idle_connection: per_idle_conn,
    };
    report::print(c.json, &rep, &table(&rep))
}

fn table(r: &Report) -> Table {
    let mut t = Table::new(format!("connect: {} idle connections", r.requested));
    t.section("connections");
    t.row("targets", r.urls.join(" "));
    t.row("workers", r.workers);
    t.row(
        "open / requested",
        format!("{} / {}", r.connected, r.requested),
    );
    t.counts("failed", &r.failed);
    for (k, d) in &r.failure_samples {
        t.row(&format!("  e.g. {k}"), d);
    }
    t.row(
        "connect phase",
        format!("{:.2} s ({} conn/s)", r.connect_phase_s, r.connects_per_s),
    );
    t.latency("connect latency", &r.connect_latency);
    t.row("held for", format!("{} s", r.hold_s));
    t.counts("dropped while held", &r.dropped_during_hold);
    t.section("server");
    t.row("pids", format!("{:?}", r.server_pids));
    t.row("RSS before", report::opt(r.server_rss_before_kib, " KiB"));
    t.row(
        "RSS after connect",
        report::opt(r.server_rss_after_kib, " KiB"),
    );
    t.row("RSS end of hold", report::opt(r.server_rss_end_kib, " KiB"));
    t.row(
        "RSS per connection",
        report::opt(r.server_kib_per_connection, " KiB"),
    );
    t.row(
        "RSS per connection, end of hold",
        report::opt(r.server_kib_per_idle_connection, " KiB"),
    );
    t
}
