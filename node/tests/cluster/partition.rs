//! A network partition isolates one node for 30 s, then heals: no seq is ever given twice.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::ledger::check_history;
use crate::scenario::{bounded, full_history};
use crate::sender::{acked_in, all_acked, check_senders, Sender, SenderConfig};

const TEST: &str = "partition_heals_without_seq_reuse";
const PARTITION: Duration = Duration::from_secs(30);

/// Nodes A, B, C linked only through proxies (`cluster.learn_peers=false`); six rooms, two
/// owned by each node; a sender on each node (staying on it) sending into all six in turn,
/// each message retried with its clientMsgId for up to 45 s. After 20 acks per sender, every
/// link of C is cut (blackholed) for 30 s, then healed.
/// * during the cut, A and B converge to {a, b} (C's view is printed, not asserted);
/// * after the heal all three converge to {a, b, c}, and every sender gets 20 more acks;
/// * then, for every room, the full history read with `resume` from seq 0 on A, and again on
///   C, is identical on both, its seqs are exactly 1..=N (no gap, no repeat), every message
///   id and clientMsgId is in it once, and every acknowledged message is in it exactly once,
///   at the seq of its ack; the acks agree among themselves (no seq acked for two messages).
///
/// Messages given up after 45 s of retries are allowed (printed): their outcome is unknown, and
/// the uniqueness checks above cover them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals_without_seq_reuse() {
    bounded(TEST, Duration::from_secs(180), async {
        let all = ["a", "b", "c"];
        let Some(cluster) = Cluster::start_partitionable(TEST, &all).await else {
            return;
        };
        let mut rooms = Vec::new();
        for owner in all {
            for k in 0..2 {
                rooms.push(
                    cluster
                        .room_owned_by(owner, &format!("split-{owner}{k}"), &all)
                        .await,
                );
            }
        }
        let senders: Vec<Sender> = all
            .iter()
            .map(|n| {
                let mut cfg =
                    SenderConfig::new(&format!("sender-{n}"), &rooms, cluster.addrs(&[n]));
                cfg.pace = Duration::from_millis(30);
                cfg.retry_for = Duration::from_secs(45);
                Sender::start(cfg)
            })
            .collect();
        for s in &senders {
            s.wait_acked(20, Duration::from_secs(30)).await;
        }

        let at_cut: Vec<usize> = senders.iter().map(Sender::acked).collect();
        let t_cut = Instant::now();
        cluster.cut("c");
        let detected = cluster.converge(&["a", "b"], Duration::from_secs(20)).await;
        report!(
            "{TEST}: a and b dropped c after {detected:?}; c's view: {}",
            cluster.view("c").await["ringMembers"]
        );
        tokio::time::sleep_until(t_cut + PARTITION).await; // the partition's length, not a wait
        let at_heal: Vec<usize> = senders.iter().map(Sender::acked).collect();
        let t_heal = Instant::now();
        cluster.heal("c");
        let healed = cluster.converge(&all, Duration::from_secs(60)).await;
        for (s, n) in senders.iter().zip(&at_heal) {
            s.wait_acked(n + 20, Duration::from_secs(60)).await;
        }
        let mut logs = Vec::new();
        for s in senders {
            logs.push(s.stop(Duration::from_secs(60)).await);
        }
        for (i, l) in logs.iter().enumerate() {
            report!(
                "{TEST}: {}: {} acks before the cut, {} during it, {} after; first ack after \
                 the heal {:?} later",
                l.user,
                at_cut[i],
                at_heal[i] - at_cut[i],
                l.acked.len() - at_heal[i],
                l.first_ack_after(t_heal).map(|t| t - t_heal)
            );
        }
        report!("{TEST}: views converged {healed:?} after the heal");

        let acked = all_acked(&logs);
        let mut violations = check_senders(&logs, true);
        violations.extend(crate::ledger::check_acks(&acked));
        let mut sizes = BTreeMap::new();
        for room in &rooms {
            let on_a = full_history(&cluster.node("a").addr, room, Duration::from_secs(30)).await;
            let on_c = full_history(&cluster.node("c").addr, room, Duration::from_secs(30)).await;
            if on_a != on_c {
                violations.push(format!(
                    "{room}: history differs between a ({} messages) and c ({} messages)",
                    on_a.len(),
                    on_c.len()
                ));
            }
            violations.extend(check_history(room, &on_a, &acked_in(&acked, room)));
            sizes.insert(room.clone(), on_a.len());
        }
        for l in &logs {
            report!("{TEST}: sender {}", l.summary());
        }
        report!(
            "{TEST}: history sizes {sizes:?}, {} acked messages",
            acked.len()
        );
        if !violations.is_empty() {
            let n = violations.len();
            violations.truncate(60);
            panic!(
                "{TEST}: {n} violations (first 60):\n  {}",
                violations.join("\n  ")
            );
        }
    })
    .await;
}
