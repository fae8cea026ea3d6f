//! `chat`: R rooms × M members, K senders per room at a total open-loop rate; end-to-end
//! and ack latency, delivered vs expected, and CPU per delivery of the tool and server.
//! Rooms are split over worker processes (see `chat_shard` for the worker side).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Result};

pub use crate::chat_report::{table, Report};
use crate::chat_shard::{self, Ready, ShardResult, Tally};
use crate::cli::{self, Common};
use crate::connect::PER_WORKER;
use crate::net;
use crate::pacing::Schedule;
use crate::progress::Progress;
use crate::report;
use crate::series;
use crate::stats::{self, Counts};
use crate::sys::{self, instant_at, mono_ns};
use crate::worker::{self, Spec, Workers};

const MAX_CONNECTIONS: u64 = 300_000;
const MAX_RATE: f64 = 2_000_000.0;
const MAX_SIZE: usize = 65_536;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Member connections per room (distinct users).
    #[arg(long, default_value_t = 10)]
    pub members: u64,
    /// Senders per room (taken from its members).
    #[arg(long, default_value_t = 1)]
    pub senders: u64,
    /// Total messages per second over all senders (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured time.
    #[arg(long, default_value = "30s", value_parser = cli::parse_duration)]
    pub duration: Duration,
    /// Sending before the measured window (not counted).
    #[arg(long, default_value = "3s", value_parser = cli::parse_duration)]
    pub warmup: Duration,
    /// Receiving after the last send, for late deliveries.
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    pub drain: Duration,
    /// Message text size in bytes (at least the timestamp marker).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Worker processes (default: one per 18,000 connections, at most one per room).
    #[arg(long)]
    pub workers: Option<u64>,
    /// WebSocket read buffer per connection, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    pub read_buffer: usize,
    /// With several URLs, connect every member of room r to URL r mod n (default: the
    /// members of a room are spread, connection i going to URL i mod n).
    #[arg(long)]
    pub room_affinity: bool,
    /// Write a PNG with latency over time and the latency histogram.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
    /// Process ids of the store behind the server (Redis, Cassandra; comma-separated): their
    /// CPU over the window is reported apart from the server's.
    #[arg(long, value_delimiter = ',')]
    pub store_pids: Vec<u32>,
}

fn validate(a: &Args) -> Result<u64> {
    let conns = a.rooms.saturating_mul(a.members);
    if a.rooms == 0 || a.members == 0 || conns > MAX_CONNECTIONS {
        bail!("--rooms × --members must be 1..={MAX_CONNECTIONS}");
    }
    if a.senders == 0 || a.senders > a.members {
        bail!("--senders must be 1..=--members");
    }
    if !(a.rate > 0.0 && a.rate <= MAX_RATE) {
        bail!("--rate must be in (0, {MAX_RATE}]");
    }
    if a.size > MAX_SIZE || a.read_buffer < 1024 || a.read_buffer > 1 << 20 {
        bail!("--size must be <= {MAX_SIZE}, --read-buffer 1 KiB..1 MiB");
    }
    if a.duration.is_zero() {
        bail!("--duration must be positive");
    }
    for (n, d) in [
        ("--duration", a.duration),
        ("--warmup", a.warmup),
        ("--drain", a.drain),
    ] {
        cli::check_phase(n, d)?;
    }
    Ok(conns)
}

pub async fn run(a: Args) -> Result<()> {
    let (rep, e2e) = measure(&a).await?;
    report::print(a.common.json, &rep, &table(&rep))?;
    if let Some(path) = &a.plot {
        let title = format!(
            "{} {} rooms x {} members, {} msg/s",
            rep.protocol, rep.rooms, rep.members, rep.rate
        );
        crate::plot::latency_png(path, &title, &rep.latency_over_time, &e2e)?;
        eprintln!("[chat] plot written to {}", path.display());
    }
    Ok(())
}

/// One chat run: returns its report and the end-to-end latency histogram.
pub async fn measure(a: &Args) -> Result<(Report, hdrhistogram::Histogram<u64>)> {
    let c = &a.common;
    let conns = validate(a)?;
    let targets = net::parse_targets(&c.url)?;
    sys::check_pids(&c.pids)?;
    sys::check_pids(&a.store_pids)?;
    let workers = a
        .workers
        .unwrap_or(conns.div_ceil(PER_WORKER))
        .clamp(1, a.rooms.min(64));
    let ranges = worker::split_ranges(a.rooms, workers);
    let bucket_ms = series::bucket_ms(a.duration.as_millis() as u64);
    if ranges
        .iter()
        .any(|r| (r.end - r.start) * a.members > 19_000)
    {
        bail!("a worker would hold over 19,000 connections: raise --workers");
    }
    let prefix = c.prefix()?;
    let specs: Vec<Spec> = ranges
        .into_iter()
        .map(|rooms| {
            Spec::Chat(chat_shard::Shard {
                targets: targets.clone(),
                protocol: c.protocol,
                secret: c.jwt_secret.clone(),
                prefix: prefix.clone(),
                rooms,
                members: a.members,
                senders: a.senders,
                total_senders: a.rooms * a.senders,
                rate: a.rate,
                warmup_ms: a.warmup.as_millis() as u64,
                duration_ms: a.duration.as_millis() as u64,
                drain_ms: a.drain.as_millis() as u64,
                size: a.size,
                concurrency: c.concurrency.div_ceil(workers),
                opts: c.conn_opts(a.read_buffer),
                threads: c.threads as usize,
                bucket_ms,
                room_affinity: a.room_affinity,
            })
        })
        .collect();

    let mut w = Workers::spawn(&specs)?;
    let mut join = stats::new_hist();
    let (mut connected, mut failed, mut samples) = (0, Counts::new(), BTreeMap::new());
    for v in w.collect(true, cli::CONNECT_PHASE, "join", conns).await? {
        let r: Ready = serde_json::from_value(v)?;
        connected += r.connected;
        join.add(&r.join_latency)?;
        stats::merge_counts(&mut failed, &r.failed);
        for (k, d) in r.samples {
            samples.entry(k).or_insert(d);
        }
    }
    if connected == 0 {
        w.finish(Duration::from_secs(5)).await;
        bail!("no member joined: {failed:?}, e.g. {samples:?}");
    }
    let t0 = mono_ns() + 300_000_000;
    let win_start = t0 + a.warmup.as_nanos() as u64;
    let win_end = win_start + a.duration.as_nanos() as u64;
    w.broadcast(&format!("go {t0}")).await?;
    eprintln!(
        "[chat] {connected}/{conns} joined; sending {} msg/s: warmup {:?}, measuring {:?}",
        a.rate, a.warmup, a.duration
    );
    tokio::time::sleep_until(instant_at(win_start)).await;
    let (srv0, me0) = (sys::cpu_sum_us(&c.pids)?, sys::self_cpu_us());
    let store0 = sys::cpu_sum_us(&a.store_pids)?;
    let mut bar = Progress::new("measure", a.duration.as_secs().max(1));
    let mut prev = 0;
    loop {
        let now = mono_ns();
        if now >= win_end {
            break;
        }
        let next = (now + 1_000_000_000).min(win_end);
        let done = w.progress_until(instant_at(next)).await;
        tokio::time::sleep_until(instant_at(next)).await;
        // Workers report once a second: the difference is about the last second's rate.
        let msg = format!("s; {done} deliveries, {}/s", done.saturating_sub(prev));
        prev = done;
        bar.set((next - win_start) / 1_000_000_000, &msg);
    }
    bar.finish();
    let (srv1, me1) = (sys::cpu_sum_us(&c.pids)?, sys::self_cpu_us());
    let store1 = sys::cpu_sum_us(&a.store_pids)?;
    let mut tally = Tally::default();
    let (mut e2e, mut ack, mut lag) = (stats::new_hist(), stats::new_hist(), stats::new_hist());
    let mut buckets = Vec::new();
    let mut tool_cpu = me1 - me0;
    let wait = a.drain + Duration::from_secs(60);
    for v in w.collect(false, wait, "chat", 0).await? {
        let r: ShardResult = serde_json::from_value(v)?;
        tally.merge(&r.tally);
        e2e.add(&r.e2e)?;
        ack.add(&r.ack)?;
        lag.add(&r.lag)?;
        series::merge(&mut buckets, &r.series)?;
        tool_cpu += r.cpu_us;
    }
    let nworkers = w.len();
    w.finish(Duration::from_secs(5)).await;

    let secs = a.duration.as_secs_f64();
    let server_cpu = srv0.zip(srv1).map(|(a, b)| b.saturating_sub(a));
    let store_cpu = store0.zip(store1).map(|(a, b)| b.saturating_sub(a));
    let delivered = tally.delivered as f64;
    let rep = Report {
        scenario: "chat",
        protocol: c.protocol.name(),
        urls: targets.iter().map(|t| t.url.clone()).collect(),
        rooms: a.rooms,
        members: a.members,
        senders_per_room: a.senders,
        rate: a.rate,
        warmup_s: a.warmup.as_secs_f64(),
        duration_s: secs,
        size: a.size,
        workers: nworkers,
        threads_per_worker: c.threads,
        connections: conns,
        connected,
        connect_failed: failed,
        failure_samples: samples,
        join_latency: stats::summarize(&join),
        sent: tally.sent,
        target_sends: target_sends(a, t0, win_start, win_end),
        acked: tally.acked,
        expected: tally.expected,
        delivered: tally.delivered,
        delivery_ratio: (tally.expected > 0)
            .then(|| (delivered / tally.expected as f64 * 1e6).round() / 1e6),
        deliveries_per_s: (delivered / secs).round(),
        end_to_end: stats::summarize(&e2e),
        ack_latency: stats::summarize(&ack),
        send_lag: stats::summarize(&lag),
        ack_errors: tally.ack_errors,
        push_errors: tally.push_errors,
        send_failures: tally.send_failures,
        dropped: tally.dropped,
        slow_path_frames: tally.slow_frames,
        unknown_frames: tally.unknown_frames,
        tool_cpu_us: tool_cpu,
        tool_cores: round3(tool_cpu as f64 / 1e6 / secs),
        tool_cpu_us_per_delivery: per(tool_cpu as f64, delivered),
        server_pids: c.pids.clone(),
        server_cpu_us: server_cpu,
        server_cores: server_cpu.map(|s| round3(s as f64 / 1e6 / secs)),
        server_cpu_us_per_delivery: server_cpu.and_then(|s| per(s as f64, delivered)),
        store_pids: a.store_pids.clone(),
        store_cpu_us: store_cpu,
        store_cores: store_cpu.map(|s| round3(s as f64 / 1e6 / secs)),
        store_cpu_us_per_delivery: store_cpu.and_then(|s| per(s as f64, delivered)),
        bucket_ms,
        latency_over_time: series::points(&buckets, bucket_ms),
    };
    Ok((rep, e2e))
}

/// Messages the schedule puts in the measured window, over all senders.
fn target_sends(a: &Args, t0: u64, win_start: u64, win_end: u64) -> u64 {
    let total = a.rooms * a.senders;
    (0..total)
        .map(|i| {
            let s = Schedule::new(t0, a.rate, total, i);
            s.count_before(win_end) - s.count_before(win_start)
        })
        .sum()
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn per(cpu_us: f64, deliveries: f64) -> Option<f64> {
    (deliveries > 0.0).then(|| round3(cpu_us / deliveries))
}
