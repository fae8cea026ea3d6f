//! `history`: seed R rooms with messages, then measure `joinRoom` latency (the ack
//! carries the room's recent history) over J joins made by a few connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use crate::chat_shard::room_id;
use crate::cli::{self, Common};
use crate::net::{self, Target, Ws};
use crate::proto::{self, Incoming, Protocol};
use crate::report::{self, fmt_us, Table};
use crate::stats::{self, Counts, Summary};
use crate::sys::{self, mono_us};
use crate::token::Minter;

const MAX_JOINS: u64 = 1_000_000;
const MAX_ROOMS: u64 = 10_000;
/// Seed messages in flight per connection (below the server's `max_inflight`).
const SEED_WINDOW: u64 = 16;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Rooms to seed and join.
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    /// Joins to measure (each followed by a leave).
    #[arg(long, default_value_t = 1000)]
    pub joins: u64,
    /// Messages sent into each room before measuring (0: rooms are used as they are).
    #[arg(long, default_value_t = 50)]
    pub seed: u64,
    /// Message text size, bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Connections joining in parallel (each does its joins one after another).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub connections: u64,
    /// Give up after this long.
    #[arg(long, default_value = "300s", value_parser = cli::parse_duration)]
    pub timeout: Duration,
}

#[derive(Default)]
struct JoinTally {
    joins: u64,
    messages: u64,
    bytes: u64,
    errors: Counts,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    protocol: &'static str,
    urls: Vec<String>,
    rooms: u64,
    seed_per_room: u64,
    seed_s: f64,
    connections: u64,
    joins: u64,
    join_errors: Counts,
    joins_per_s: f64,
    join_latency: Summary,
    messages_per_join: f64,
    ack_bytes_per_join: f64,
    tool_cpu_us: u64,
    server_pids: Vec<u32>,
    server_cpu_us: Option<u64>,
    server_cpu_us_per_join: Option<f64>,
}

struct Conn {
    ws: Ws,
    protocol: Protocol,
    frame: String,
    next_id: u64,
    ack_timeout: Duration,
}

impl Conn {
    async fn open(c: &Common, t: &Target, m: &Minter, user: &str, index: u64) -> Result<Self> {
        let token = m.mint(user, user)?;
        let (ws, _) = net::connect(t, &token, index, c.conn_opts(64 * 1024))
            .await
            .map_err(|f| anyhow!("connect {}: {} ({})", t.url, f.kind, f.detail))?;
        Ok(Self {
            ws,
            protocol: c.protocol,
            frame: String::new(),
            next_id: 1,
            ack_timeout: c.connect_timeout,
        })
    }

    fn take_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    async fn send_frame(&mut self) -> Result<()> {
        self.ws
            .send_text(self.frame.as_bytes())
            .await
            .context("send")
    }

    /// Reads until the ack of `id` (any ack if None); returns its error code (if any),
    /// size and number of marked messages.
    async fn wait_ack(&mut self, id: Option<u64>) -> Result<(Option<String>, usize, usize)> {
        let protocol = self.protocol;
        let wait = self.ws.read_until(|t| match protocol.classify(t) {
            (Incoming::Ack { id: got, error }, _) if id.is_none_or(|id| id == got) => Some((
                error.map(|e| e.into_owned()),
                t.len(),
                proto::count_marks(t),
            )),
            _ => None,
        });
        tokio::time::timeout(self.ack_timeout, wait)
            .await
            .map_err(|_| anyhow!("no ack for request {id:?} within {:?}", self.ack_timeout))?
            .context("receive")
    }

    async fn request_join(&mut self, room: &str) -> Result<(Option<String>, usize, usize)> {
        let id = self.take_id();
        self.protocol.encode_join(room, id, &mut self.frame);
        self.send_frame().await?;
        self.wait_ack(Some(id)).await
    }

    async fn request_leave(&mut self, room: &str) -> Result<()> {
        let id = self.take_id();
        self.protocol.encode_leave(room, id, &mut self.frame);
        self.send_frame().await?;
        match self.wait_ack(Some(id)).await? {
            (None, ..) => Ok(()),
            (Some(code), ..) => bail!("leaveRoom {room}: {code}"),
        }
    }

    /// Sends `count` messages into `room` with up to [`SEED_WINDOW`] acks outstanding
    /// (acks may come in any order, so they are counted, not matched).
    async fn seed(&mut self, room: &str, count: u64, size: usize) -> Result<()> {
        if let (Some(code), ..) = self.request_join(room).await? {
            bail!("seeding: joinRoom {room}: {code}");
        }
        let mut text = String::new();
        let mut outstanding = 0;
        for _ in 0..count {
            let id = self.take_id();
            proto::write_text(&mut text, mono_us(), size);
            self.protocol.encode_send(room, &text, id, &mut self.frame);
            self.send_frame().await?;
            outstanding += 1;
            if outstanding >= SEED_WINDOW {
                self.seed_ack().await?;
                outstanding -= 1;
            }
        }
        for _ in 0..outstanding {
            self.seed_ack().await?;
        }
        self.request_leave(room).await
    }

    async fn seed_ack(&mut self) -> Result<()> {
        match self.wait_ack(None).await? {
            (None, ..) => Ok(()),
            (Some(code), ..) => bail!("seeding: sendMessage: {code}"),
        }
    }
}

pub async fn run(a: Args) -> Result<()> {
    let c = Arc::new(a.common.clone());
    let targets = Arc::new(net::parse_targets(&c.url)?);
    sys::check_pids(&c.pids)?;
    cli::check_phase("--timeout", a.timeout)?;
    if a.rooms == 0 || a.rooms > MAX_ROOMS || a.joins == 0 || a.joins > MAX_JOINS {
        bail!("--rooms must be 1..={MAX_ROOMS}, --joins 1..={MAX_JOINS}");
    }
    let prefix = Arc::new(c.prefix()?);
    let minter = Arc::new(Minter::new(&c.jwt_secret)?);
    let conns = a.connections.min(a.joins);
    let deadline = tokio::time::Instant::now() + a.timeout;

    let seed_started = Instant::now();
    if a.seed > 0 {
        let mut tasks = Vec::new();
        for k in 0..conns.min(a.rooms) {
            let (c, targets, prefix, minter) =
                (c.clone(), targets.clone(), prefix.clone(), minter.clone());
            let (rooms, seed, size) = (a.rooms, a.seed, a.size);
            tasks.push(tokio::spawn(async move {
                let t = &targets[k as usize % targets.len()];
                let mut conn = Conn::open(&c, t, &minter, &format!("{prefix}-s{k}"), k).await?;
                for r in (k..rooms).step_by(conns.min(rooms) as usize) {
                    conn.seed(&room_id(&prefix, r), seed, size).await?;
                }
                conn.ws.close().await;
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            tokio::time::timeout_at(deadline, t)
                .await
                .context("seeding timed out")???;
        }
    }
    let seed_s = seed_started.elapsed().as_secs_f64();
    eprintln!(
        "[history] seeded {} rooms × {} in {seed_s:.1}s; joining {} times",
        a.rooms, a.seed, a.joins
    );

    let mut opened = Vec::new();
    for k in 0..conns {
        let t = &targets[k as usize % targets.len()];
        opened.push(Conn::open(&c, t, &minter, &format!("{prefix}-j{k}"), 1000 + k).await?);
    }
    let hist = stats::shared();
    let (srv0, me0, started) = (
        sys::cpu_sum_us(&c.pids)?,
        sys::self_cpu_us(),
        Instant::now(),
    );
    let mut tasks = Vec::new();
    for (k, mut conn) in opened.into_iter().enumerate() {
        let (prefix, hist) = (prefix.clone(), hist.clone());
        let (rooms, joins, k) = (a.rooms, a.joins, k as u64);
        tasks.push(tokio::spawn(async move {
            let mut lat = stats::Batch::new(hist);
            let mut tally = JoinTally::default();
            for j in (k..joins).step_by(conns as usize) {
                let room = room_id(&prefix, j % rooms);
                let t0 = Instant::now();
                let (err, bytes, marks) = conn.request_join(&room).await?;
                if let Some(code) = err {
                    stats::bump(&mut tally.errors, &code);
                    continue;
                }
                lat.record(t0.elapsed().as_micros() as u64);
                tally.joins += 1;
                tally.messages += marks as u64;
                tally.bytes += bytes as u64;
                conn.request_leave(&room).await?;
            }
            conn.ws.close().await;
            anyhow::Ok(tally)
        }));
    }
    let mut total = JoinTally::default();
    for t in tasks {
        let r = tokio::time::timeout_at(deadline, t)
            .await
            .context("joins timed out")???;
        total.joins += r.joins;
        total.messages += r.messages;
        total.bytes += r.bytes;
        stats::merge_counts(&mut total.errors, &r.errors);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (srv1, me1) = (sys::cpu_sum_us(&c.pids)?, sys::self_cpu_us());
    let server_cpu = srv0.zip(srv1).map(|(a, b)| b.saturating_sub(a));
    let n = total.joins.max(1) as f64;
    let rep = Report {
        scenario: "history",
        protocol: c.protocol.name(),
        urls: targets.iter().map(|t| t.url.clone()).collect(),
        rooms: a.rooms,
        seed_per_room: a.seed,
        seed_s: (seed_s * 100.0).round() / 100.0,
        connections: conns,
        joins: total.joins,
        join_errors: total.errors,
        joins_per_s: (total.joins as f64 / elapsed).round(),
        join_latency: stats::summarize(&stats::take(&hist)),
        messages_per_join: (total.messages as f64 / n * 10.0).round() / 10.0,
        ack_bytes_per_join: (total.bytes as f64 / n).round(),
        tool_cpu_us: me1 - me0,
        server_pids: c.pids.clone(),
        server_cpu_us: server_cpu,
        server_cpu_us_per_join: server_cpu.map(|s| (s as f64 / n * 10.0).round() / 10.0),
    };
    report::print(c.json, &rep, &table(&rep))
}

fn table(r: &Report) -> Table {
    let mut t = Table::new(format!("history: {} joins over {} rooms", r.joins, r.rooms));
    t.section("setup");
    t.row("targets", r.urls.join(" "));
    t.row(
        "seeded",
        format!("{} messages/room in {} s", r.seed_per_room, r.seed_s),
    );
    t.row("joining connections", r.connections);
    t.section("joinRoom (ack with history)");
    t.row(
        "joins ok",
        format!("{} ({} joins/s)", r.joins, r.joins_per_s),
    );
    t.counts("errors", &r.join_errors);
    t.latency("join latency", &r.join_latency);
    t.row(
        "per join",
        format!(
            "{} messages, {} bytes",
            r.messages_per_join, r.ack_bytes_per_join
        ),
    );
    t.section("cpu");
    t.row("tool", fmt_us(r.tool_cpu_us));
    t.row(
        "server",
        match (r.server_cpu_us, r.server_cpu_us_per_join) {
            (Some(us), Some(per)) => format!("{} ({per} µs/join)", fmt_us(us)),
            _ => "n/a (no --pids)".to_string(),
        },
    );
    t
}
