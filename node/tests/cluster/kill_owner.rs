//! kill -9 of a room's owner while messages flow through it.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::reader::Reader;
use crate::scenario::{bounded, verify, wind_down};
use crate::sender::{all_acked, check_senders, Sender, SenderConfig};

const TEST: &str = "kill_owner_under_traffic";

/// Nodes A, B, C; a room owned by B; a sender on A (~50 msgs/s, retrying failed sends with the
/// same clientMsgId), readers on A and C. After 50 acks, B is killed with SIGKILL.
/// * A and C converge to {a, c} and agree on a new owner, not B;
/// * traffic continues: 50 more acks, no message given up (30 s of retries each);
/// * a probe sent afterwards reaches both readers as a push (fan-out from the new owner);
/// * the readers are gap-free up to the last ack before any final resume (every push lost
///   with B was announced by a `resync`);
/// * after a final catch-up every acked message is on every reader exactly once, in seq order,
///   no seq pushed twice, no seq carrying two messages, and the acks agree among themselves.
///
/// Prints the time from the kill to the first ack after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_owner_under_traffic() {
    bounded(TEST, Duration::from_secs(150), async {
        let Some(mut cluster) = Cluster::start(TEST, &["a", "b", "c"]).await else {
            return;
        };
        let room = cluster.room_owned_by("b", "killed", &["a", "b", "c"]).await;
        let rooms = [room.clone()];
        let readers = [
            Reader::start("reader-a", &rooms, cluster.addrs(&["a", "c"])).await,
            Reader::start("reader-c", &rooms, cluster.addrs(&["c", "a"])).await,
        ];
        let sender = Sender::start(SenderConfig::new(
            "sender-a",
            &rooms,
            cluster.addrs(&["a", "c"]),
        ));
        sender.wait_acked(50, Duration::from_secs(30)).await;

        let at_kill = sender.acked();
        let t_kill = Instant::now();
        cluster.kill9("b").await;
        let converged = cluster.converge(&["a", "c"], Duration::from_secs(30)).await;
        let owner = cluster.agreed_owner(&room, &["a", "c"]).await;
        assert_ne!(owner, "b", "a dead node still owns {room}");
        sender
            .wait_acked(at_kill + 50, Duration::from_secs(60))
            .await;
        let log = sender.stop(Duration::from_secs(40)).await;
        let first = log
            .first_ack_after(t_kill)
            .expect("acks after the kill")
            .duration_since(t_kill);
        report!(
            "{TEST}: kill -9 of b: views converged after {converged:?}, first ack after \
             {first:?}; {room} now owned by {owner}; {} acks before the kill, {} after",
            at_kill,
            log.acked.len() - at_kill
        );

        for n in ["a", "c"] {
            report!("{TEST}: counters of {n}: {}", cluster.counters(n).await);
        }
        let (states, acked) = wind_down(
            TEST,
            &cluster.node("a").addr,
            std::slice::from_ref(&room),
            readers.into(),
            all_acked(std::slice::from_ref(&log)),
            Duration::from_secs(60),
        )
        .await;
        let more = check_senders(std::slice::from_ref(&log), false);
        verify(TEST, &states, std::slice::from_ref(&log), &acked, more);
    })
    .await;
}
