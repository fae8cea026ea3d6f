//! The readers, senders and checks of this suite against one ordinary node (embedded store, no
//! cluster): the faults a single node already has (a room actor crashing, a restart) must
//! pass through them cleanly, so that a cluster scenario that fails points at the cluster.

use std::time::Duration;

use crate::harness::{http_request, Node};
use crate::reader::Reader;
use crate::scenario::{verify, wind_down};
use crate::sender::{all_acked, check_senders, Sender, SenderConfig};

const TEST: &str = "harness_on_one_node_through_a_room_crash_and_a_restart";

/// A node; two rooms; two readers of both and a sender into both (10 ms pace). After 50
/// acks the room actor of `s1` panics (`/debug`), after 50 more the node restarts (SIGTERM,
/// same address), then 50 more.
/// * both readers got `resync` for the crash, a close 1001 for the restart, and a second
///   session that caught up;
/// * the sender reconnected and nothing was given up;
/// * a probe per room reaches both readers as a push;
/// * every acked message on both readers exactly once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_on_one_node_through_a_room_crash_and_a_restart() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let mut node = Node::start(&[
            "--rate-limit-per-sec",
            "100000",
            "--rate-limit-burst",
            "100000",
        ])
        .await;
        let rooms = ["s1".to_string(), "s2".to_string()];
        let at = vec![node.addr.clone()];
        let readers = [
            Reader::start("reader-1", &rooms, at.clone()).await,
            Reader::start("reader-2", &rooms, at.clone()).await,
        ];
        let mut cfg = SenderConfig::new("sender", &rooms, at.clone());
        cfg.pace = Duration::from_millis(10);
        let sender = Sender::start(cfg);
        sender.wait_acked(50, Duration::from_secs(30)).await;

        let (code, body) = http_request("POST", &node.http("/debug/rooms/s1/panic"), &[]).await;
        assert_eq!(code, 202, "{body}");
        for r in &readers {
            r.wait_for("resynced", Duration::from_secs(10), |s| s.resyncs >= 1)
                .await;
        }
        sender.wait_acked(100, Duration::from_secs(30)).await;

        node.restart().await;
        for r in &readers {
            r.wait_for("on a second session", Duration::from_secs(30), |s| {
                s.sessions == 2 && s.ready
            })
            .await;
        }
        sender.wait_acked(150, Duration::from_secs(30)).await;
        let log = sender.stop(Duration::from_secs(30)).await;

        let (states, acked) = wind_down(
            TEST,
            &node.addr,
            &rooms,
            readers.into(),
            all_acked(std::slice::from_ref(&log)),
            Duration::from_secs(30),
        )
        .await;
        let mut more = check_senders(std::slice::from_ref(&log), false);
        for s in &states {
            if s.closes != [(node.addr.clone(), Some(1001))] {
                more.push(format!(
                    "{}: closes {:?}, expected one 1001",
                    s.user, s.closes
                ));
            }
        }
        if !log.closes.iter().any(|(_, c)| *c == Some(1001)) {
            more.push(format!("the sender did not see the 1001: {:?}", log.closes));
        }
        verify(TEST, &states, std::slice::from_ref(&log), &acked, more);
    })
    .await
    .expect("the self-test took more than 120 s");
}
