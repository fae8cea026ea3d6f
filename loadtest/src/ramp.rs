//! `ramp`: runs `chat` steps at a rising rate (× `--factor` per step, each step bounded
//! in time, fresh rooms and connections each time) until a step fails the target
//! (delivery ≥ `--min-delivery` and p99 ≤ `--p99-ms`) `--retries` + 1 times in a row,
//! then bisects between the last passing and the first failing rate `--refine` times. The answer is the highest
//! passing rate and its deliveries/s.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::chat;
use crate::cli::{self, Common};
use crate::report::{self, Table};

const MAX_STEPS: u64 = 30;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[arg(long, default_value_t = 10)]
    pub rooms: u64,
    #[arg(long, default_value_t = 100)]
    pub members: u64,
    #[arg(long, default_value_t = 1)]
    pub senders: u64,
    /// Rate of the first step, messages/s over all senders.
    #[arg(long, default_value_t = 50.0)]
    pub start_rate: f64,
    /// Rate multiplier from one step to the next.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 100_000.0)]
    pub max_rate: f64,
    /// Most steps (rising and bisecting together).
    #[arg(long, default_value_t = 12)]
    pub max_steps: u64,
    /// Times a failing step is repeated at the same rate before it counts as failed.
    #[arg(long, default_value_t = 1)]
    pub retries: u64,
    /// Bisection steps after the first failing step.
    #[arg(long, default_value_t = 1)]
    pub refine: u64,
    /// Measured time of one step.
    #[arg(long, default_value = "8s", value_parser = cli::parse_duration)]
    pub step: Duration,
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    pub drain: Duration,
    /// Idle time between steps, for the server to settle.
    #[arg(long, default_value = "2s", value_parser = cli::parse_duration)]
    pub pause: Duration,
    /// Target: p99 end-to-end latency at most this, ms.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// Target: delivered / expected at least this.
    #[arg(long, default_value_t = 0.999)]
    pub min_delivery: f64,
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long)]
    pub workers: Option<u64>,
    /// As `chat --room-affinity`.
    #[arg(long)]
    pub room_affinity: bool,
}

#[derive(Serialize)]
struct Step {
    rate: f64,
    pass: bool,
    connected: u64,
    deliveries_per_s: f64,
    delivery_ratio: Option<f64>,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    tool_cpu_us_per_delivery: Option<f64>,
    tool_cores: f64,
    server_cores: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    scenario: &'static str,
    protocol: &'static str,
    urls: Vec<String>,
    rooms: u64,
    members: u64,
    senders_per_room: u64,
    step_s: f64,
    target_p99_ms: f64,
    target_delivery: f64,
    steps: Vec<Step>,
    peak_rate: Option<f64>,
    peak_deliveries_per_s: Option<f64>,
}

fn step_args(a: &Args, base: &str, i: u64, rate: f64) -> chat::Args {
    let mut common = a.common.clone();
    common.prefix = Some(format!("{base}s{i}"));
    chat::Args {
        common,
        rooms: a.rooms,
        members: a.members,
        senders: a.senders,
        rate,
        duration: a.step,
        warmup: a.warmup,
        drain: a.drain,
        size: a.size,
        workers: a.workers,
        read_buffer: 16 * 1024,
        room_affinity: a.room_affinity,
        plot: None,
        store_pids: Vec::new(),
    }
}

pub async fn run(a: Args) -> Result<()> {
    let factor_ok = a.factor > 1.0 && a.factor <= 10.0;
    if !factor_ok || a.start_rate.is_nan() || a.start_rate <= 0.0 {
        bail!("--factor must be in (1, 10], --start-rate positive");
    }
    if a.max_steps == 0 || a.max_steps > MAX_STEPS {
        bail!("--max-steps must be 1..={MAX_STEPS}");
    }
    for (n, d) in [
        ("--step", a.step),
        ("--warmup", a.warmup),
        ("--pause", a.pause),
    ] {
        cli::check_phase(n, d)?;
    }
    let base = a.common.prefix()?;
    let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
    let mut steps: Vec<Step> = Vec::new();
    let mut rate = a.start_rate.min(a.max_rate);
    let (mut refined, mut tries) = (0, 0);
    for i in 0..a.max_steps {
        if i > 0 {
            tokio::time::sleep(a.pause).await;
        }
        let (r, _) = chat::measure(&step_args(&a, &base, i, rate)).await?;
        let ok = r.connected == r.connections
            && r.end_to_end.count > 0
            && r.delivery_ratio.is_some_and(|d| d >= a.min_delivery)
            && r.end_to_end.p99_us as f64 <= a.p99_ms * 1e3;
        let s = Step {
            rate,
            pass: ok,
            connected: r.connected,
            deliveries_per_s: r.deliveries_per_s,
            delivery_ratio: r.delivery_ratio,
            p50_us: r.end_to_end.p50_us,
            p99_us: r.end_to_end.p99_us,
            p999_us: r.end_to_end.p999_us,
            tool_cpu_us_per_delivery: r.tool_cpu_us_per_delivery,
            tool_cores: r.tool_cores,
            server_cores: r.server_cores,
            server_cpu_us_per_delivery: r.server_cpu_us_per_delivery,
        };
        eprintln!("[ramp] step {}: {}", i + 1, step_line(&s));
        steps.push(s);
        if !ok && tries < a.retries {
            tries += 1; // the same rate again: one bad step on a shared machine is noise
            continue;
        }
        tries = 0;
        if ok {
            pass = Some(pass.map_or(rate, |p: f64| p.max(rate)));
        } else {
            fail = Some(fail.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match (pass, fail) {
            (_, None) if rate >= a.max_rate => break,
            (_, None) => (rate * a.factor).min(a.max_rate),
            (Some(p), Some(f)) if refined < a.refine && f / p > 1.05 => {
                refined += 1;
                (p * f).sqrt().round()
            }
            _ => break,
        };
    }
    let best = steps
        .iter()
        .filter(|s| s.pass)
        .max_by(|x, y| x.rate.total_cmp(&y.rate));
    let rep = Report {
        scenario: "ramp",
        protocol: a.common.protocol.name(),
        urls: a.common.url.clone(),
        rooms: a.rooms,
        members: a.members,
        senders_per_room: a.senders,
        step_s: a.step.as_secs_f64(),
        target_p99_ms: a.p99_ms,
        target_delivery: a.min_delivery,
        peak_rate: best.map(|s| s.rate),
        peak_deliveries_per_s: best.map(|s| s.deliveries_per_s),
        steps,
    };
    report::print(a.common.json, &rep, &table(&rep))
}

fn step_line(s: &Step) -> String {
    let pct = s
        .delivery_ratio
        .map_or("n/a".into(), |d| format!("{:.3} %", d * 100.0));
    format!(
        "{:>9.1} msg/s  {:>9} deliveries/s  delivered {pct:>9}  p50 {}  p99 {}  server {} µs/del, tool {} µs/del  {}",
        s.rate,
        s.deliveries_per_s,
        report::fmt_us(s.p50_us),
        report::fmt_us(s.p99_us),
        s.server_cpu_us_per_delivery.map_or("n/a".into(), |v| v.to_string()),
        s.tool_cpu_us_per_delivery.map_or("n/a".into(), |v| v.to_string()),
        if s.pass { "PASS" } else { "FAIL" }
    )
}

fn table(r: &Report) -> Table {
    let mut t = Table::new(format!(
        "ramp: {} rooms × {} members, {} s steps, target p99 ≤ {} ms and delivery ≥ {} %",
        r.rooms,
        r.members,
        r.step_s,
        r.target_p99_ms,
        r.target_delivery * 100.0
    ));
    t.section("steps");
    for (i, s) in r.steps.iter().enumerate() {
        t.row(&format!("{}", i + 1), step_line(s));
    }
    t.section("answer");
    match (r.peak_rate, r.peak_deliveries_per_s) {
        (Some(rate), Some(d)) => t.row(
            "highest passing rate",
            format!("{rate} msg/s = {d} deliveries/s"),
        ),
        _ => t.row("highest passing rate", "none: even the first step failed"),
    }
    t
}
