//! `failover`: chat traffic against a Parley cluster while nodes are killed (SIGKILL) and
//! started again on a schedule; counts lost, duplicated and out-of-order acknowledged
//! messages (the guarantees of docs/consistency.md).
//!
//! 1. Readers connect to every node (`--readers-per-node`, each a member of every room) and
//!    catch up; senders (`--senders`, one room each) start at `--rate` messages/s in total.
//! 2. After `--warmup`, every `--kill-every` one killable node (round robin) gets SIGKILL
//!    (the pid in its pidfile), stays down `--down-for`, and is started again with its start
//!    command; the next kill waits until it answers `/healthz`. `--kills` kills in all.
//! 3. `--settle` after the last restart, the senders stop (each finishes its message in
//!    flight); `--settle` later, every reader catches up every room a last time.
//! 4. The check (see `failover_ledger`): lost, duplicated pushes, out-of-order pushes, seqs
//!    reused, messages stored twice; the recovery of each kill (kill → first ack afterwards,
//!    and → every sender acked again); resyncs and errors by code.
//!
//! The tool exits non-zero when a guarantee was violated, a reader gave up or a kill failed.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::chat_shard::room_id;
use crate::cli::{self, parse_duration};
use crate::failover_client::{Ctx, Reader};
use crate::failover_ledger::{self as ledger, Acked, ReaderView};
use crate::failover_nodes::{self as nodes, NodeSpec};
use crate::failover_report::{round1, table, Report};
use crate::net::ConnOpts;
use crate::proto::Protocol;
use crate::report;
use crate::stats;
use crate::sys;
use crate::token::Minter;

const MAX_NODES: usize = 32;
const MAX_KILLS: u64 = 100;
const MAX_ROOMS: u64 = 1000;
const MAX_CLIENTS: u64 = 5000;
const MAX_RATE: f64 = 20_000.0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A node, repeatable: `url=ws://127.0.0.2:3000/ws,pidfile=/tmp/n2.pid,start=CMD` (the
    /// start command, run with `sh -c`, must write the pidfile, e.g. `echo $$ >/tmp/n2.pid;
    /// exec parley ...`; `start=` comes last). Optional `log=FILE` for the restarted node's
    /// output. A bare URL is a node that is never killed.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// Rooms.
    #[arg(long, default_value_t = 8)]
    pub rooms: u64,
    /// Sending users (sender i sends into room i mod rooms; default one per room).
    #[arg(long)]
    pub senders: Option<u64>,
    /// Reading users connected to each node, each a member of every room.
    #[arg(long, default_value_t = 1)]
    pub readers_per_node: u64,
    /// Messages per second over all senders (each sender has one message in flight at most).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Number of kills.
    #[arg(long, default_value_t = 3)]
    pub kills: u64,
    /// Time between two kills.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub kill_every: Duration,
    /// How long a killed node stays down before its start command runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub down_for: Duration,
    /// Traffic before the first kill.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Traffic after the last restart, and the quiet time before the final catch-up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub settle: Duration,
    /// How long a restarted node may take to answer `/healthz`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub start_timeout: Duration,
    /// Deadline of one request (an unanswered send is sent again).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// How long one message is retried before it is abandoned.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub retry_for: Duration,
    /// Most attempts of one message.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_attempts: u32,
    /// HS256 secret the servers verify tokens with.
    #[arg(
        long,
        env = "PARLEY_JWT_SECRET",
        default_value = crate::token::DEV_SECRET,
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Print one JSON object instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// Tokio worker threads (1-4).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub threads: u64,
    /// Timeout of one connection attempt.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Use 127.0.0.1 as the source address instead of spreading over 127.0.0.2..=254.
    #[arg(long)]
    pub no_spread: bool,
    /// Prefix of user and room ids (default: unique per run).
    #[arg(long)]
    pub prefix: Option<String>,
}

/// One kill of the schedule.
#[derive(Debug, Clone, Serialize)]
pub struct Kill {
    pub node: String,
    /// Seconds from the start of the traffic.
    pub at_s: f64,
    pub pid: Option<i32>,
    /// Start command → `/healthz` answers, ms.
    pub start_ms: Option<f64>,
    /// Kill → `/healthz` answers again, ms.
    pub down_ms: Option<f64>,
    /// Kill → the first ack of any sender afterwards, ms.
    pub first_ack_ms: Option<f64>,
    /// Kill → every sender has had an ack afterwards, ms (None: one never did).
    pub all_senders_ms: Option<f64>,
    pub error: Option<String>,
    #[serde(skip)]
    pub t: Option<Instant>,
}

fn validate(a: &Args) -> Result<()> {
    let senders = a.senders.unwrap_or(a.rooms);
    if a.rooms == 0 || a.rooms > MAX_ROOMS {
        bail!("--rooms must be 1..={MAX_ROOMS}");
    }
    if senders == 0 || senders > MAX_CLIENTS || a.readers_per_node == 0 {
        bail!("--senders must be 1..={MAX_CLIENTS}, --readers-per-node at least 1");
    }
    if a.readers_per_node.saturating_mul(a.nodes.len() as u64) > MAX_CLIENTS {
        bail!("at most {MAX_CLIENTS} readers");
    }
    if !(a.rate > 0.0 && a.rate <= MAX_RATE) {
        bail!("--rate must be in (0, {MAX_RATE}]");
    }
    if a.kills > MAX_KILLS {
        bail!("--kills must be 0..={MAX_KILLS}");
    }
    if a.kills > 0 && a.down_for >= a.kill_every {
        bail!("--down-for must be shorter than --kill-every (one node down at a time)");
    }
    for (n, d) in [
        ("--kill-every", a.kill_every),
        ("--down-for", a.down_for),
        ("--warmup", a.warmup),
        ("--settle", a.settle),
        ("--start-timeout", a.start_timeout),
        ("--retry-for", a.retry_for),
        ("--request-timeout", a.request_timeout),
    ] {
        cli::check_phase(n, d)?;
    }
    let total = a.warmup + a.settle * 2 + a.kill_every * a.kills as u32;
    cli::check_phase(
        "the whole run (warmup + kills × kill-every + 2 × settle)",
        total,
    )?;
    Ok(())
}

/// The bound of the whole run: every phase at its longest, plus the final catch-up.
fn run_bound(a: &Args) -> Duration {
    a.warmup
        + (a.kill_every + a.down_for + a.start_timeout) * a.kills as u32
        + a.settle * 2
        + a.retry_for
        + a.request_timeout
        + Duration::from_secs(180)
}

pub async fn run(a: Args) -> Result<()> {
    validate(&a)?;
    let specs: Vec<NodeSpec> = a
        .nodes
        .iter()
        .map(|s| nodes::parse_node(s))
        .collect::<Result<_>>()?;
    if specs.len() > MAX_NODES {
        bail!("at most {MAX_NODES} --node");
    }
    let killable: Vec<usize> = (0..specs.len()).filter(|&i| specs[i].killable()).collect();
    if a.kills > 0 && killable.is_empty() {
        bail!(
            "--kills {} but no --node has a pidfile= and a start=",
            a.kills
        );
    }
    if a.kills > 0 && specs.len() < 2 {
        bail!("a failover needs at least 2 nodes");
    }
    for n in &specs {
        if !nodes::healthy(&n.target).await {
            bail!("{}: GET /healthz does not answer 200 at the start", n.url);
        }
    }
    for &i in &killable {
        let pidfile = specs[i].pidfile.as_ref().expect("killable");
        nodes::read_pid(pidfile).with_context(|| format!("node {}", specs[i].url))?;
    }
    let bound = run_bound(&a);
    match tokio::time::timeout(bound, measure(&a, specs, killable)).await {
        Ok(r) => r,
        Err(_) => bail!("the run did not finish within its bound of {bound:?}"),
    }
}

async fn measure(a: &Args, specs: Vec<NodeSpec>, killable: Vec<usize>) -> Result<()> {
    let prefix = cli::make_prefix(a.prefix.as_deref())?;
    let senders = a.senders.unwrap_or(a.rooms);
    let rooms: Vec<String> = (0..a.rooms).map(|r| room_id(&prefix, r)).collect();
    let opts = ConnOpts {
        spread_sources: !a.no_spread,
        read_buffer: 64 * 1024,
        timeout_ms: a.connect_timeout.as_millis() as u64,
        protocol: Protocol::Native,
    };
    let ctx = Arc::new(Ctx::new(
        specs.clone(),
        opts,
        Minter::new(&a.jwt_secret)?,
        prefix.clone(),
        rooms,
        a.request_timeout,
        a.retry_for,
        a.max_attempts,
        Duration::from_secs_f64(senders as f64 / a.rate),
    ));
    let me0 = sys::self_cpu_us();

    // 1. Readers on every node, then senders.
    let mut readers = Vec::new();
    for node in 0..specs.len() {
        for k in 0..a.readers_per_node {
            let name = format!("{prefix}-fr{node}-{k}");
            readers.push(Reader::start(ctx.clone(), name, node));
        }
    }
    let joined_by = Instant::now() + Duration::from_secs(60);
    while !readers.iter().all(|r| r.with(|s| s.ready)) {
        if let Some(f) = readers.iter().find_map(|r| r.with(|s| s.fatal.clone())) {
            bail!("a reader gave up before the start: {f}");
        }
        if Instant::now() > joined_by {
            let errors = ctx.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
            bail!("readers not joined within 60 s: errors {errors:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "[failover] {} readers joined {} rooms on {} nodes; {senders} senders at {} msg/s",
        readers.len(),
        a.rooms,
        specs.len(),
        a.rate
    );
    let t0 = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let sender_tasks: Vec<_> = (0..senders as usize)
        .map(|i| {
            tokio::spawn(crate::failover_sender::sender(
                ctx.clone(),
                i,
                senders as usize,
                stopped.clone(),
            ))
        })
        .collect();

    // 2. The schedule.
    let mut kills = Vec::new();
    let mut children: Vec<Option<Child>> = specs.iter().map(|_| None).collect();
    tokio::time::sleep_until(t0 + a.warmup).await;
    for k in 0..a.kills {
        let due = t0 + a.warmup + a.kill_every * k as u32;
        tokio::time::sleep_until(due).await;
        let victim = killable[k as usize % killable.len()];
        kills.push(kill_and_restart(a, &specs[victim], &mut children[victim], t0, &ctx).await);
    }
    tokio::time::sleep(a.settle).await;

    // 3. Stop the senders, let the last pushes arrive, then the final catch-up.
    eprintln!("[failover] stopping the senders");
    let _ = stop.send(true);
    let stop_within = a.retry_for + a.request_timeout * 2 + Duration::from_secs(10);
    for t in sender_tasks {
        if tokio::time::timeout(stop_within, t).await.is_err() {
            bail!("a sender did not stop within {stop_within:?}");
        }
    }
    let duration_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let acked: Vec<Acked> = ctx.acks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let missing_before: u64 = readers
        .iter()
        .map(|r| {
            r.with(|s| {
                s.rooms
                    .iter()
                    .map(|(room, log)| {
                        let mine: Vec<&Acked> = acked.iter().filter(|x| &x.room == room).collect();
                        ledger::missing(log, &mine)
                    })
                    .sum::<u64>()
            })
        })
        .sum();
    eprintln!("[failover] final catch-up of {} readers", readers.len());
    let finished =
        futures_util::future::join_all(readers.iter().map(|r| r.finish(Duration::from_secs(90))))
            .await;
    let states: Vec<_> = readers.iter().map(Reader::snapshot).collect();
    let readers_failed: Vec<String> = states
        .iter()
        .zip(&finished)
        .filter(|(s, ok)| !**ok || s.fatal.is_some())
        .map(|(s, _)| {
            format!(
                "{}: {}",
                s.name,
                s.fatal
                    .clone()
                    .unwrap_or_else(|| "final catch-up not done".into())
            )
        })
        .collect();
    let failed_names: BTreeSet<&str> = states
        .iter()
        .zip(&finished)
        .filter(|(s, ok)| !**ok || s.fatal.is_some())
        .map(|(s, _)| s.name.as_str())
        .collect();
    let views: Vec<ReaderView<'_>> = states
        .iter()
        .map(|s| ReaderView {
            name: &s.name,
            rooms: &s.rooms,
            failed: failed_names.contains(s.name.as_str()),
        })
        .collect();
    let verdict = ledger::verify(&acked, &views);
    drop(readers);

    // 4. Recovery of each kill.
    for k in &mut kills {
        let Some(t) = k.t else { continue };
        let t = t.into_std();
        let ms = |at: std::time::Instant| at.duration_since(t).as_secs_f64() * 1e3;
        k.first_ack_ms = acked
            .iter()
            .filter(|x| x.at > t)
            .map(|x| ms(x.at))
            .reduce(f64::min);
        let mut per_sender = vec![None::<f64>; senders as usize];
        for x in acked.iter().filter(|x| x.at > t) {
            let v = per_sender[x.sender].get_or_insert(f64::MAX);
            *v = v.min(ms(x.at));
        }
        k.all_senders_ms = per_sender.iter().try_fold(0f64, |m, v| v.map(|v| m.max(v)));
        k.first_ack_ms = k.first_ack_ms.map(round1);
        k.all_senders_ms = k.all_senders_ms.map(round1);
    }
    let max_of = |f: fn(&Kill) -> Option<f64>| kills.iter().filter_map(f).reduce(f64::max);
    let tool_cpu_us = sys::self_cpu_us() - me0;
    let errors = ctx.errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let unexpected = ctx
        .unexpected
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let rep = Report {
        scenario: "failover",
        rooms: a.rooms,
        senders,
        readers: states.len() as u64,
        rate: a.rate,
        duration_s: round1(duration_s),
        kills_planned: a.kills,
        kills_done: kills.iter().filter(|k| k.error.is_none()).count() as u64,
        acked: acked.len() as u64,
        send_attempts: ctx.attempts.load(Relaxed),
        retried_messages: acked.iter().filter(|x| x.attempts > 1).count() as u64,
        abandoned: ctx.abandoned.load(Relaxed),
        violations: verdict.violations(),
        verdict,
        missing_before_final_resume: missing_before,
        max_recovery_ms: max_of(|k| k.first_ack_ms),
        max_all_senders_recovery_ms: max_of(|k| k.all_senders_ms),
        resyncs: states.iter().map(|s| s.resyncs).sum(),
        reader_sessions: states.iter().map(|s| s.sessions).sum(),
        readers_went_home: states.iter().map(|s| s.went_home).sum(),
        sender_sessions: ctx.sender_sessions.load(Relaxed),
        pushes: states
            .iter()
            .flat_map(|s| s.rooms.values())
            .map(|l| l.pushes)
            .sum(),
        fetched: states
            .iter()
            .flat_map(|s| s.rooms.values())
            .map(|l| l.fetched)
            .sum(),
        readers_failed,
        errors,
        unexpected,
        ack_latency: stats::summarize(&stats::take(&ctx.ack_latency)),
        tool_cpu_us,
        kills,
        nodes: specs,
    };
    report::print(a.json, &rep, &table(&rep))?;
    let failed_kills = rep.kills.iter().filter(|k| k.error.is_some()).count();
    if rep.violations > 0 || !rep.readers_failed.is_empty() || failed_kills > 0 {
        bail!(
            "{} violations of the guarantees, {} readers failed, {failed_kills} kills failed",
            rep.violations,
            rep.readers_failed.len()
        );
    }
    Ok(())
}

/// Kills `node`, waits `--down-for`, starts it again and waits until it is healthy.
async fn kill_and_restart(
    a: &Args,
    node: &NodeSpec,
    child: &mut Option<Child>,
    t0: Instant,
    ctx: &Ctx,
) -> Kill {
    let t = Instant::now();
    let mut k = Kill {
        node: node.url.clone(),
        at_s: round1(t.duration_since(t0).as_secs_f64()),
        pid: None,
        start_ms: None,
        down_ms: None,
        first_ack_ms: None,
        all_senders_ms: None,
        error: None,
        t: None,
    };
    match nodes::kill9(node) {
        Ok(pid) => {
            k.pid = Some(pid);
            k.t = Some(t);
        }
        Err(e) => {
            k.error = Some(format!("kill: {e:#}"));
            eprintln!("[failover] {}: {e:#}", node.url);
            return k;
        }
    }
    let acked = ctx.acks.lock().unwrap_or_else(|p| p.into_inner()).len();
    eprintln!(
        "[failover] t={:.1}s kill -9 {} (pid {}); {acked} acks so far",
        k.at_s,
        node.url,
        k.pid.unwrap_or(0)
    );
    // Reap the previous incarnation when this tool started it.
    if let Some(mut c) = child.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
    }
    tokio::time::sleep(a.down_for).await;
    let started = Instant::now();
    *child = match nodes::start(node) {
        Ok(c) => Some(c),
        Err(e) => {
            k.error = Some(format!("start: {e:#}"));
            return k;
        }
    };
    match nodes::wait_healthy(&node.target, child, a.start_timeout).await {
        Ok(()) => {
            k.start_ms = Some(round1(started.elapsed().as_secs_f64() * 1e3));
            k.down_ms = Some(round1(t.elapsed().as_secs_f64() * 1e3));
            eprintln!(
                "[failover] {} healthy again {} ms after the kill",
                node.url,
                k.down_ms.unwrap_or(0.0)
            );
        }
        Err(e) => k.error = Some(format!("restart: {e:#}")),
    }
    k
}
