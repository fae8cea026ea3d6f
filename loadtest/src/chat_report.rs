//! The `chat` report: its JSON shape and its summary table.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::report::{fmt_us, Table};
use crate::series::Point;
use crate::stats::{Counts, Summary};

#[derive(Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub protocol: &'static str,
    pub urls: Vec<String>,
    pub rooms: u64,
    pub members: u64,
    pub senders_per_room: u64,
    pub rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub size: usize,
    pub workers: usize,
    pub threads_per_worker: u64,
    pub connections: u64,
    pub connected: u64,
    pub connect_failed: Counts,
    pub failure_samples: BTreeMap<String, String>,
    pub join_latency: Summary,
    pub sent: u64,
    pub target_sends: u64,
    pub acked: u64,
    pub expected: u64,
    pub delivered: u64,
    pub delivery_ratio: Option<f64>,
    pub deliveries_per_s: f64,
    pub end_to_end: Summary,
    pub ack_latency: Summary,
    pub send_lag: Summary,
    pub ack_errors: Counts,
    pub push_errors: Counts,
    pub send_failures: u64,
    pub dropped: Counts,
    pub slow_path_frames: u64,
    pub unknown_frames: u64,
    pub tool_cpu_us: u64,
    pub tool_cores: f64,
    pub tool_cpu_us_per_delivery: Option<f64>,
    pub server_pids: Vec<u32>,
    pub server_cpu_us: Option<u64>,
    pub server_cores: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The store's processes (`--store-pids`), apart from the server's.
    pub store_pids: Vec<u32>,
    pub store_cpu_us: Option<u64>,
    pub store_cores: Option<f64>,
    pub store_cpu_us_per_delivery: Option<f64>,
    /// End-to-end latency by send time, per `bucket_ms`.
    pub bucket_ms: u64,
    pub latency_over_time: Vec<Point>,
}

pub fn table(r: &Report) -> Table {
    let mut t = Table::new(format!(
        "chat: {} rooms × {} members, {} senders/room, {} msg/s, {} s",
        r.rooms, r.members, r.senders_per_room, r.rate, r.duration_s
    ));
    t.section("setup");
    t.row("targets", r.urls.join(" "));
    t.row(
        "workers × threads",
        format!("{} × {}", r.workers, r.threads_per_worker),
    );
    t.row(
        "joined / connections",
        format!("{} / {}", r.connected, r.connections),
    );
    t.counts("connect/join failures", &r.connect_failed);
    for (k, d) in &r.failure_samples {
        t.row(&format!("  e.g. {k}"), d);
    }
    t.latency("connect+join latency", &r.join_latency);
    t.section(&format!(
        "measured window ({} s after {} s warmup)",
        r.duration_s, r.warmup_s
    ));
    t.row("sent / target", format!("{} / {}", r.sent, r.target_sends));
    t.row("acked ok", r.acked);
    let ratio = r
        .delivery_ratio
        .map_or("n/a".into(), |x| format!("{:.3} %", x * 100.0));
    t.row(
        "delivered / expected",
        format!("{} / {} ({ratio})", r.delivered, r.expected),
    );
    t.row("deliveries/s", r.deliveries_per_s);
    t.latency("end-to-end latency", &r.end_to_end);
    t.latency("ack latency", &r.ack_latency);
    t.latency("send lag (tool)", &r.send_lag);
    t.counts("ack errors", &r.ack_errors);
    t.counts("error pushes", &r.push_errors);
    t.counts("connections dropped", &r.dropped);
    if r.send_failures + r.slow_path_frames + r.unknown_frames > 0 {
        t.row(
            "send failures / slow-path / unknown frames",
            format!(
                "{} / {} / {}",
                r.send_failures, r.slow_path_frames, r.unknown_frames
            ),
        );
    }
    t.section("cpu");
    let tool_per = r
        .tool_cpu_us_per_delivery
        .map_or("n/a".into(), |v| format!("{v} µs/delivery"));
    t.row(
        "tool",
        format!(
            "{} ({} cores) {tool_per}",
            fmt_us(r.tool_cpu_us),
            r.tool_cores
        ),
    );
    match (
        r.server_cpu_us,
        r.server_cores,
        r.server_cpu_us_per_delivery,
    ) {
        (Some(us), Some(cores), per) => t.row(
            "server",
            format!(
                "{} ({cores} cores) {} µs/delivery, pids {:?}",
                fmt_us(us),
                per.map_or("n/a".into(), |v| v.to_string()),
                r.server_pids
            ),
        ),
        _ => t.row("server", "n/a (no --pids)"),
    }
    if let (Some(us), Some(cores)) = (r.store_cpu_us, r.store_cores) {
        t.row(
            "store",
            format!(
                "{} ({cores} cores) {} µs/delivery, pids {:?}",
                fmt_us(us),
                r.store_cpu_us_per_delivery
                    .map_or("n/a".into(), |v| v.to_string()),
                r.store_pids
            ),
        );
    }
    t
}
