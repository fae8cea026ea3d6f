//! SIGTERM drains a node: its rooms move, its clients go elsewhere, nothing is lost.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::reader::Reader;
use crate::scenario::{bounded, verify, wind_down};
use crate::sender::{all_acked, check_senders, Sender, SenderConfig};

const TEST: &str = "sigterm_drains";

/// Nodes A, B, C; three rooms owned by A, B and C. On C: two readers (of all three rooms, and
/// of C's and B's) and a sender into all three, each with A as the next node; on A: a control
/// reader and a sender. After 30 acks per sender, C gets SIGTERM.
/// * C exits with status 0 within 30 s;
/// * A and B converge to {a, b}; C's room gets a new owner;
/// * every session on C was closed with code 1001 (readers and sender), and each reconnected
///   to A, rejoined and caught up (readers: ready on A);
/// * traffic continues: 30 more acks per sender, nothing given up;
/// * a probe in every room reaches every reader as a push, and the readers
///   are gap-free up to the last ack before any final resume (a lost push comes with `resync`);
/// * every acked message on every reader exactly once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains() {
    bounded(TEST, Duration::from_secs(150), async {
        let Some(mut cluster) = Cluster::start(TEST, &["a", "b", "c"]).await else {
            return;
        };
        let all = ["a", "b", "c"];
        let rooms = vec![
            cluster.room_owned_by("a", "drain-a", &all).await,
            cluster.room_owned_by("b", "drain-b", &all).await,
            cluster.room_owned_by("c", "drain-c", &all).await,
        ];
        let (c_then_a, a_only) = (cluster.addrs(&["c", "a"]), cluster.addrs(&["a"]));
        let readers = [
            Reader::start("reader-c1", &rooms, c_then_a.clone()).await,
            Reader::start("reader-c2", &rooms[1..], c_then_a.clone()).await,
            Reader::start("reader-a", &rooms, a_only.clone()).await,
        ];
        let senders = [
            Sender::start(SenderConfig::new("sender-c", &rooms, c_then_a.clone())),
            Sender::start(SenderConfig::new("sender-a", &rooms, a_only)),
        ];
        for s in &senders {
            s.wait_acked(30, Duration::from_secs(30)).await;
        }

        let at_term: Vec<usize> = senders.iter().map(Sender::acked).collect();
        let t_term = Instant::now();
        cluster.sigterm("c");
        let status = cluster.wait_exit("c", Duration::from_secs(30)).await;
        let drained = t_term.elapsed();
        assert!(status.success(), "c exited with {status:?} after SIGTERM");
        let converged = cluster.converge(&["a", "b"], Duration::from_secs(30)).await;
        let owner = cluster.agreed_owner(&rooms[2], &["a", "b"]).await;
        assert_ne!(owner, "c", "{}: still owned by the drained node", rooms[2]);
        let a = cluster.node("a").addr.clone();
        for r in &readers[..2] {
            r.wait_for("back on a", Duration::from_secs(30), |s| {
                s.node == a && s.ready
            })
            .await;
        }
        for (s, n) in senders.iter().zip(&at_term) {
            s.wait_acked(n + 30, Duration::from_secs(60)).await;
        }
        let mut logs = Vec::new();
        for s in senders {
            logs.push(s.stop(Duration::from_secs(40)).await);
        }
        let first: Vec<String> = logs
            .iter()
            .map(|l| {
                format!(
                    "{}: {:?}",
                    l.user,
                    l.first_ack_after(t_term).map(|t| t - t_term)
                )
            })
            .collect();
        report!(
            "{TEST}: c exited 0 {drained:?} after SIGTERM; views converged {converged:?} later; \
             {} now owned by {owner}; first ack after SIGTERM: {first:?}",
            rooms[2]
        );

        for n in ["a", "b"] {
            report!("{TEST}: counters of {n}: {}", cluster.counters(n).await);
        }
        let c = cluster.node("c").addr.clone();
        let mut more = check_senders(&logs, false);
        let (states, acked) = wind_down(
            TEST,
            &a,
            &rooms,
            readers.into(),
            all_acked(&logs),
            Duration::from_secs(60),
        )
        .await;
        let closes_on_c = states[..2]
            .iter()
            .map(|s| (s.user.clone(), s.closes.clone()))
            .chain(std::iter::once((
                logs[0].user.clone(),
                logs[0].closes.clone(),
            )));
        for (who, closes) in closes_on_c {
            let on_c: Vec<Option<u16>> = closes
                .iter()
                .filter(|(node, _)| *node == c)
                .map(|(_, code)| *code)
                .collect();
            if on_c != [Some(1001)] {
                more.push(format!(
                    "{who}: its session on c should have ended with one close 1001, saw {on_c:?}"
                ));
            }
        }
        if !states[2].closes.is_empty() {
            more.push(format!(
                "reader-a (on a) lost its session: {:?}",
                states[2].closes
            ));
        }
        verify(TEST, &states, &logs, &acked, more);
    })
    .await;
}
