//! The worker side of `chat`: a contiguous range of rooms, all their member connections,
//! open-loop senders, and the allocation-free receive path.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{stream, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::chat_conn;
use crate::net::{self, ConnOpts, Fail, Target, Ws};
use crate::proto::{Incoming, Protocol};
use crate::series;
use crate::stats::{self, hist_hex, Counts};
use crate::sys::{self, instant_at};
use crate::token::Minter;
use crate::worker::{self, emit, Cmd, Control, Event};

#[derive(Clone, Serialize, Deserialize)]
pub struct Shard {
    pub targets: Vec<Target>,
    pub protocol: Protocol,
    pub secret: String,
    pub prefix: String,
    /// Global indices of this worker's rooms.
    pub rooms: Range<u64>,
    pub members: u64,
    /// Senders per room (members `0..senders` of each room).
    pub senders: u64,
    /// Senders in the whole run (rooms × senders), for the global schedule.
    pub total_senders: u64,
    /// Total messages/s of the whole run.
    pub rate: f64,
    pub warmup_ms: u64,
    pub duration_ms: u64,
    pub drain_ms: u64,
    pub size: usize,
    pub concurrency: u64,
    pub opts: ConnOpts,
    pub threads: usize,
    /// Width of a latency-over-time bucket.
    pub bucket_ms: u64,
    /// All members of room r connect to URL r mod n (else member i to URL i mod n).
    pub room_affinity: bool,
}

impl Shard {
    pub fn deadline(&self) -> Duration {
        crate::cli::CONNECT_PHASE
            + Duration::from_millis(self.warmup_ms + self.duration_ms + self.drain_ms)
            + Duration::from_secs(180)
    }
}

pub fn room_id(prefix: &str, room: u64) -> String {
    format!("{prefix}-r{room}")
}

#[derive(Serialize, Deserialize)]
pub struct Ready {
    pub connected: u64,
    pub failed: Counts,
    pub samples: BTreeMap<String, String>,
    /// Connect + join, µs.
    #[serde(with = "hist_hex")]
    pub join_latency: Histogram<u64>,
}

/// Counters of one connection, summed per worker and then per run. "window" figures
/// only count messages whose send timestamp falls in the measured window.
#[derive(Default, Serialize, Deserialize)]
pub struct Tally {
    pub sent: u64,
    pub sent_all: u64,
    pub expected: u64,
    pub delivered: u64,
    pub delivered_all: u64,
    pub acked: u64,
    pub ack_errors: Counts,
    pub push_errors: Counts,
    pub send_failures: u64,
    pub slow_frames: u64,
    pub unknown_frames: u64,
    pub dropped: Counts,
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.sent_all += o.sent_all;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.delivered_all += o.delivered_all;
        self.acked += o.acked;
        self.send_failures += o.send_failures;
        self.slow_frames += o.slow_frames;
        self.unknown_frames += o.unknown_frames;
        stats::merge_counts(&mut self.ack_errors, &o.ack_errors);
        stats::merge_counts(&mut self.push_errors, &o.push_errors);
        stats::merge_counts(&mut self.dropped, &o.dropped);
    }
}

#[derive(Serialize, Deserialize)]
pub struct ShardResult {
    pub tally: Tally,
    #[serde(with = "hist_hex")]
    pub e2e: Histogram<u64>,
    #[serde(with = "hist_hex")]
    pub ack: Histogram<u64>,
    #[serde(with = "hist_hex")]
    pub lag: Histogram<u64>,
    /// End-to-end latency by send time.
    pub series: series::Wire,
    /// This worker's CPU time during the measured window, µs.
    pub cpu_us: u64,
}

/// What every connection task of a worker shares.
pub struct Ctx {
    pub protocol: Protocol,
    pub size: usize,
    pub rate: f64,
    pub senders: u64,
    pub total_senders: u64,
    pub e2e: stats::Shared,
    pub ack: stats::Shared,
    pub lag: stats::Shared,
    pub series: series::Series,
    /// In-window deliveries so far, for progress reports (one relaxed add each).
    pub delivered: std::sync::atomic::AtomicU64,
}

/// The timing of the measured phase, handed to every connection task at `go`.
pub struct Plan {
    pub t0: u64,
    /// Measured window in µs of CLOCK_MONOTONIC: [start, end).
    pub win: (u64, u64),
    pub send_end_ns: u64,
    /// Members that joined, by room (index: room - first room of the shard).
    pub fanout: Vec<u64>,
    pub first_room: u64,
}

pub type PlanRx = watch::Receiver<Option<Arc<Plan>>>;

pub async fn run(s: Shard, mut ctl: Control) -> Result<()> {
    let minter = Arc::new(Minter::new(&s.secret)?);
    let ctx = Arc::new(Ctx {
        protocol: s.protocol,
        size: s.size,
        rate: s.rate,
        senders: s.senders,
        total_senders: s.total_senders,
        e2e: stats::shared(),
        ack: stats::shared(),
        lag: stats::shared(),
        series: series::new_series(s.bucket_ms, s.duration_ms),
        delivered: Default::default(),
    });
    let (plan_tx, plan_rx) = watch::channel(None);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Connection tasks start reading as soon as their join is acked, so pushes sent
    // while other members join (userJoined...) never pile up in socket buffers.
    let spawn = |ws: Ws, room: u64, index: u64| {
        let (ctx, plan, stop) = (ctx.clone(), plan_rx.clone(), stop_rx.clone());
        let room_name = room_id(&s.prefix, room);
        tokio::spawn(chat_conn::conn_task(
            ws, room_name, room, index, ctx, plan, stop,
        ))
    };
    let (tasks, joined, ready) = connect_all(&s, &minter, spawn).await;
    worker::emit_value(true, &ready);
    let Cmd::Go(t0) = ctl.next().await else {
        let _ = stop_tx.send(true);
        return Ok(());
    };
    let win_start = t0 + s.warmup_ms * 1_000_000;
    let win_end = win_start + s.duration_ms * 1_000_000;
    let _ = plan_tx.send(Some(Arc::new(Plan {
        t0,
        win: (win_start / 1_000, win_end / 1_000),
        send_end_ns: win_end,
        fanout: joined,
        first_room: s.rooms.start,
    })));
    tokio::time::sleep_until(instant_at(win_start)).await;
    let cpu0 = sys::self_cpu_us();
    report_until(&ctx, win_end).await;
    let cpu_us = sys::self_cpu_us() - cpu0;
    report_until(&ctx, win_end + s.drain_ms * 1_000_000).await;
    let _ = stop_tx.send(true);
    let mut tally = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            tally.merge(&t);
        }
    }
    let res = ShardResult {
        tally,
        e2e: stats::take(&ctx.e2e),
        ack: stats::take(&ctx.ack),
        lag: stats::take(&ctx.lag),
        series: series::to_wire(&ctx.series),
        cpu_us,
    };
    worker::emit_value(false, &res);
    Ok(())
}

/// Sleeps until `until` (mono ns), emitting the window's deliveries so far every second
/// for the parent's progress bar.
async fn report_until(ctx: &Ctx, until: u64) {
    loop {
        let next = (sys::mono_ns() + 1_000_000_000).min(until);
        tokio::time::sleep_until(instant_at(next)).await;
        let done = ctx.delivered.load(std::sync::atomic::Ordering::Relaxed);
        emit(&Event::Progress { done });
        if next >= until {
            return;
        }
    }
}

type Task = tokio::task::JoinHandle<Tally>;

/// Opens every member connection of the shard, joins it to its room and hands it to
/// `spawn`; returns the tasks, the members joined per room, and the ready report.
async fn connect_all(
    s: &Shard,
    minter: &Arc<Minter>,
    spawn: impl Fn(Ws, u64, u64) -> Task,
) -> (Vec<Task>, Vec<u64>, Ready) {
    let per_room = s.members;
    let first = s.rooms.start * per_room;
    let last = s.rooms.end * per_room;
    let attempts = stream::iter(first..last)
        .map(|i| {
            let (room, index) = (i / per_room, i % per_room);
            let minter = minter.clone();
            async move {
                let started = Instant::now();
                let ws = join_one(s, &minter, room, index, i).await?;
                Ok::<_, Fail>((ws, room, index, started.elapsed()))
            }
        })
        .buffer_unordered(s.concurrency.max(1) as usize);
    tokio::pin!(attempts);
    let mut tasks = Vec::with_capacity((last - first) as usize);
    let mut joined = vec![0u64; (s.rooms.end - s.rooms.start) as usize];
    let mut ready = Ready {
        connected: 0,
        failed: Counts::new(),
        samples: BTreeMap::new(),
        join_latency: stats::new_hist(),
    };
    let (mut done, mut last_progress) = (0, Instant::now());
    while let Some(r) = attempts.next().await {
        done += 1;
        match r {
            Ok((ws, room, index, lat)) => {
                let us = lat.as_micros().max(1) as u64;
                ready.join_latency.saturating_record(us);
                joined[(room - s.rooms.start) as usize] += 1;
                tasks.push(spawn(ws, room, index));
            }
            Err(f) => {
                stats::bump(&mut ready.failed, &f.kind);
                ready.samples.entry(f.kind).or_insert(f.detail);
            }
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            emit(&Event::Progress { done });
        }
    }
    ready.connected = tasks.len() as u64;
    (tasks, joined, ready)
}

async fn join_one(s: &Shard, minter: &Minter, room: u64, index: u64, i: u64) -> Result<Ws, Fail> {
    let user = format!("{}-r{room}-m{index}", s.prefix);
    let token = minter.mint(&user, &user).map_err(|e| fail("token", e))?;
    let pick = if s.room_affinity { room } else { i };
    let target = &s.targets[pick as usize % s.targets.len()];
    let (mut ws, _) = net::connect(target, &token, i, s.opts).await?;
    let mut frame = String::new();
    s.protocol
        .encode_join(&room_id(&s.prefix, room), 1, &mut frame);
    ws.send_text(frame.as_bytes())
        .await
        .map_err(|e| fail("join_send", e))?;
    let protocol = s.protocol;
    let wait = ws.read_until(|t| match protocol.classify(t) {
        (Incoming::Ack { id: 1, error }, _) => {
            Some(error.map(|c| fail(format!("join_{c}"), String::from_utf8_lossy(t))))
        }
        _ => None,
    });
    match tokio::time::timeout(Duration::from_millis(s.opts.timeout_ms), wait).await {
        Ok(Ok(None)) => Ok(ws),
        Ok(Ok(Some(f))) => Err(f),
        Ok(Err(e)) => Err(fail("join_closed", e)),
        Err(_) => Err(fail("join_timeout", "no joinRoom ack")),
    }
}

fn fail(kind: impl Into<String>, e: impl ToString) -> Fail {
    Fail {
        kind: kind.into(),
        detail: e.to_string(),
    }
}
