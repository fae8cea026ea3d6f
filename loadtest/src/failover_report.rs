//! The report of `failover`: what a run found, as JSON (`--json`) or a table.

use serde::Serialize;

use crate::failover::Kill;
use crate::failover_ledger::Verdict;
use crate::failover_nodes::NodeSpec;
use crate::report::{fmt_us, Table};
use crate::stats::{Counts, Summary};

#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: &'static str,
    pub(crate) nodes: Vec<NodeSpec>,
    pub(crate) rooms: u64,
    pub(crate) senders: u64,
    pub(crate) readers: u64,
    pub(crate) rate: f64,
    pub(crate) duration_s: f64,
    pub(crate) kills_planned: u64,
    pub(crate) kills_done: u64,
    pub(crate) kills: Vec<Kill>,
    pub(crate) acked: u64,
    pub(crate) send_attempts: u64,
    pub(crate) retried_messages: u64,
    pub(crate) abandoned: u64,
    #[serde(flatten)]
    pub(crate) verdict: Verdict,
    pub(crate) violations: u64,
    pub(crate) missing_before_final_resume: u64,
    pub(crate) max_recovery_ms: Option<f64>,
    pub(crate) max_all_senders_recovery_ms: Option<f64>,
    pub(crate) resyncs: u64,
    pub(crate) reader_sessions: u64,
    pub(crate) readers_went_home: u64,
    pub(crate) sender_sessions: u64,
    pub(crate) pushes: u64,
    pub(crate) fetched: u64,
    pub(crate) readers_failed: Vec<String>,
    pub(crate) errors: Counts,
    pub(crate) unexpected: Vec<String>,
    pub(crate) ack_latency: Summary,
    pub(crate) tool_cpu_us: u64,
}

pub(crate) fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| fmt_us((v * 1e3) as u64))
}

pub(crate) fn table(r: &Report) -> Table {
    let mut t = Table::new(format!(
        "failover: {} nodes, {}/{} kills, {} rooms, {} senders, {} readers, {} msg/s",
        r.nodes.len(),
        r.kills_done,
        r.kills_planned,
        r.rooms,
        r.senders,
        r.readers,
        r.rate
    ));
    t.section("nodes");
    for n in &r.nodes {
        let how = if n.killable() {
            "killed and restarted"
        } else {
            "never killed"
        };
        t.row(&n.url, how);
    }
    t.section("kills");
    for (i, k) in r.kills.iter().enumerate() {
        let v = match &k.error {
            Some(e) => format!("{} at {} s: FAILED: {e}", k.node, k.at_s),
            None => format!(
                "{} at {} s (pid {}): healthy again after {}; first ack after {}, every sender after {}",
                k.node,
                k.at_s,
                k.pid.unwrap_or(0),
                opt_ms(k.down_ms),
                opt_ms(k.first_ack_ms),
                opt_ms(k.all_senders_ms)
            ),
        };
        t.row(&format!("{}", i + 1), v);
    }
    t.section("acknowledged messages");
    t.row(
        "acked",
        format!(
            "{} in {} s ({} attempts, {} messages retried, {} abandoned)",
            r.acked, r.duration_s, r.send_attempts, r.retried_messages, r.abandoned
        ),
    );
    t.latency("send → ack (retries included)", &r.ack_latency);
    let v = &r.verdict;
    t.row(
        "lost",
        format!("{} ({} reader copies)", v.lost, v.lost_copies),
    );
    t.row("duplicated pushes", v.duplicate_pushes);
    t.row("out-of-order pushes", v.out_of_order_pushes);
    t.row("seq reused", v.seq_reused);
    t.row("stored twice", v.stored_twice);
    t.row("gaps after the final resume", v.gaps);
    t.row(
        "missing before the final resume",
        r.missing_before_final_resume,
    );
    t.row("pushed again after a reconnect", v.repushed_after_reconnect);
    t.section("recovery");
    t.row("max kill → first ack", opt_ms(r.max_recovery_ms));
    t.row(
        "max kill → every sender acked",
        opt_ms(r.max_all_senders_recovery_ms),
    );
    t.row("resyncs", r.resyncs);
    t.row(
        "sessions",
        format!(
            "readers {} ({} went home), senders {}",
            r.reader_sessions, r.readers_went_home, r.sender_sessions
        ),
    );
    t.row(
        "reader messages",
        format!("{} pushed, {} fetched", r.pushes, r.fetched),
    );
    t.counts("errors", &r.errors);
    for (i, u) in r.unexpected.iter().take(10).enumerate() {
        t.row(&format!("unexpected {}", i + 1), u);
    }
    for f in &r.readers_failed {
        t.row("reader failed", f);
    }
    for (i, s) in v.samples.iter().take(10).enumerate() {
        t.row(&format!("violation {}", i + 1), s);
    }
    t.row("tool cpu", fmt_us(r.tool_cpu_us));
    t.section(if r.violations == 0 && r.readers_failed.is_empty() {
        "verdict: OK (nothing lost, duplicated, reordered or reused)"
    } else {
        "verdict: VIOLATIONS"
    });
    t
}
