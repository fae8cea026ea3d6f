//! Routing and fan-out: any node serves any client of a room owned elsewhere.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::reader::Reader;
use crate::scenario::{bounded, verify};
use crate::sender::{all_acked, check_senders, Sender, SenderConfig};

const TEST: &str = "route_and_fan_out";
const SENDS: usize = 200;

/// Nodes A, B, C; a room owned by B; a sender on A, readers on A and C.
/// * `/cluster` on every node has the documented shape, every member `up`;
/// * every node names B as the room's owner;
/// * a user joining on C is in the join's member list with the member on A, and the member on
///   A gets its `userJoined`;
/// * 200 sends from A are acknowledged, and both readers get all 200 **as pushes** (no resync,
///   nothing fetched), exactly once, in seq order;
/// * B's `counters.crossNodeSent` grew, and so did C's `crossNodeReceived`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_fan_out() {
    bounded(TEST, Duration::from_secs(120), async {
        let Some(cluster) = Cluster::start(TEST, &["a", "b", "c"]).await else {
            return;
        };
        cluster.check_views(&["a", "b", "c"]).await;
        let room = cluster.room_owned_by("b", "fanout", &["a", "b", "c"]).await;
        report!("{TEST}: room {room} is owned by b");
        let rooms = [room.clone()];

        // Presence across nodes.
        let mut watcher = cluster.client("a", "watcher").await;
        watcher.join(&room).await;
        let mut joiner = cluster.client("c", "joiner").await;
        let j = joiner.join(&room).await;
        let members: Vec<&str> = j["members"]
            .as_array()
            .unwrap_or_else(|| panic!("join on c: no members: {j}"))
            .iter()
            .filter_map(|m| m["userId"].as_str())
            .collect();
        assert!(
            members.contains(&"watcher") && members.contains(&"joiner"),
            "the join on c lists the member on a: {j}"
        );
        assert_eq!(j["memberCount"], 2, "{j}");
        let p = watcher
            .event_matching("userJoined", Duration::from_secs(10), |d| {
                d["roomId"] == room.as_str() && d["userId"] == "joiner"
            })
            .await;
        assert_eq!(p["username"], "JOINER", "{p}");
        drop((watcher, joiner));

        let (before, c_before) = (cluster.counters("b").await, cluster.counters("c").await);
        let readers = [
            Reader::start("reader-a", &rooms, cluster.addrs(&["a"])).await,
            Reader::start("reader-c", &rooms, cluster.addrs(&["c"])).await,
        ];
        let mut cfg = SenderConfig::new("sender-a", &rooms, cluster.addrs(&["a"]));
        cfg.pace = Duration::from_millis(5);
        cfg.limit = Some(SENDS);
        cfg.retry_for = Duration::from_secs(10);
        let t0 = Instant::now();
        let log = Sender::start(cfg).finish(Duration::from_secs(60)).await;
        let took = t0.elapsed();
        report!(
            "{TEST}: {} sends acked in {took:?} ({:.0}/s), {} needed a retry",
            log.acked.len(),
            log.acked.len() as f64 / took.as_secs_f64(),
            log.acked.iter().filter(|a| a.attempts > 1).count()
        );
        assert_eq!(log.acked.len(), SENDS, "{}", log.summary());
        let last = log.acked.last().expect("acks").clone();
        for r in &readers {
            r.wait_pushed(&room, &last.client_msg_id, Duration::from_secs(20))
                .await;
        }
        let (after, c_after) = (cluster.counters("b").await, cluster.counters("c").await);
        for n in ["a", "b", "c"] {
            report!("{TEST}: counters of {n}: {}", cluster.counters(n).await);
        }

        let mut states = Vec::new();
        for r in readers {
            states.push(r.finish(Duration::from_secs(30)).await);
        }
        let mut more = check_senders(std::slice::from_ref(&log), false);
        for s in &states {
            let l = &s.rooms[&room];
            if l.pushes != SENDS as u64 || l.fetched != 0 || s.resyncs != 0 || s.sessions != 1 {
                more.push(format!(
                    "{}: without faults every message comes as a push on one session: {} \
                     pushed, {} fetched, {} resyncs, {} sessions",
                    s.user, l.pushes, l.fetched, s.resyncs, s.sessions
                ));
            }
        }
        if after.cross_node_sent <= before.cross_node_sent {
            more.push(format!(
                "b's counters.crossNodeSent did not grow: {before} -> {after}"
            ));
        }
        // C serves only a reader: everything it pushed came from B.
        if c_after.cross_node_received <= c_before.cross_node_received {
            more.push(format!(
                "c's counters.crossNodeReceived did not grow: {c_before} -> {c_after}"
            ));
        }
        verify(
            TEST,
            &states,
            std::slice::from_ref(&log),
            &all_acked(std::slice::from_ref(&log)),
            more,
        );
    })
    .await;
}
