//! A fourth node joins while messages flow: some rooms move to it, nothing is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use rooms::ring::room_key;
use rooms::Ring;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::reader::Reader;
use crate::scenario::{bounded, verify, wind_down};
use crate::sender::{all_acked, check_senders, Sender, SenderConfig};

const TEST: &str = "node_joins_under_traffic";

/// 10 rooms, 4 of which the ring {a, b, c, d} gives to d (chosen with `rooms::Ring`, the
/// rendezvous-xxh3-v1 hash the nodes report).
fn rooms() -> Vec<String> {
    let four = Ring::new(["a", "b", "c", "d"]);
    let (mut to_d, mut stay) = (Vec::new(), Vec::new());
    for i in 0.. {
        let room = format!("joining-{i}");
        if four.owner(&room_key(&room)) == Some("d") {
            if to_d.len() < 4 {
                to_d.push(room);
            }
        } else if stay.len() < 6 {
            stay.push(room);
        }
        if to_d.len() == 4 && stay.len() == 6 {
            break;
        }
    }
    to_d.into_iter().chain(stay).collect()
}

/// Nodes A, B, C; 10 rooms; senders on A and B sending into all of them in turn, readers on A
/// and C in all of them. After 100 acks node D starts (seeded with A, B, C).
/// * before D, every node agrees on each room's owner, and it is `Ring{a,b,c}`'s;
/// * all four converge to {a, b, c, d}; every node agrees on each owner, which is
///   `Ring{a,b,c,d}`'s: at least one room moved to D, and no other room moved at all;
/// * traffic continues: 50 more acks per sender, nothing given up;
/// * a probe in every room reaches both readers as a push, and the readers
///   are gap-free up to the last ack before any final resume (a lost push comes with `resync`);
/// * every acked message on every reader exactly once, in seq order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_joins_under_traffic() {
    bounded(TEST, Duration::from_secs(150), async {
        let Some(mut cluster) = Cluster::start(TEST, &["a", "b", "c"]).await else {
            return;
        };
        let rooms = rooms();
        let (three, four) = (Ring::new(["a", "b", "c"]), Ring::new(["a", "b", "c", "d"]));
        let mut before = BTreeMap::new();
        for room in &rooms {
            let o = cluster.agreed_owner(room, &["a", "b", "c"]).await;
            assert_eq!(
                Some(o.as_str()),
                three.owner(&room_key(room)),
                "{room}: the cluster's owner is not rendezvous-xxh3-v1 (rooms::Ring) over {{a,b,c}}"
            );
            before.insert(room.clone(), o);
        }
        let readers = [
            Reader::start("reader-a", &rooms, cluster.addrs(&["a", "b"])).await,
            Reader::start("reader-c", &rooms, cluster.addrs(&["c", "a"])).await,
        ];
        let senders = [
            Sender::start(SenderConfig::new(
                "sender-a",
                &rooms,
                cluster.addrs(&["a", "b"]),
            )),
            Sender::start(SenderConfig::new(
                "sender-b",
                &rooms,
                cluster.addrs(&["b", "a"]),
            )),
        ];
        senders[0].wait_acked(50, Duration::from_secs(30)).await;
        senders[1].wait_acked(50, Duration::from_secs(30)).await;

        let at_join: Vec<usize> = senders.iter().map(Sender::acked).collect();
        let t_join = Instant::now();
        cluster.add("d").await;
        let converged = cluster
            .converge(&["a", "b", "c", "d"], Duration::from_secs(30))
            .await;
        let mut moved = Vec::new();
        let mut more = Vec::new();
        for room in &rooms {
            let o = cluster.agreed_owner(room, &["a", "b", "c", "d"]).await;
            if Some(o.as_str()) != four.owner(&room_key(room)) {
                more.push(format!(
                    "{room}: owner {o} after d joined, rendezvous-xxh3-v1 says {:?}",
                    four.owner(&room_key(room))
                ));
            }
            if o != before[room] {
                moved.push(format!("{room}: {} -> {o}", before[room]));
            }
        }
        assert!(
            moved.iter().any(|m| m.ends_with("-> d")),
            "no room moved to d: {moved:?}"
        );
        for (s, n) in senders.iter().zip(&at_join) {
            s.wait_acked(n + 50, Duration::from_secs(60)).await;
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
                    l.first_ack_after(t_join).map(|t| t - t_join)
                )
            })
            .collect();
        report!(
            "{TEST}: d joined; views converged after {converged:?}; moved {moved:?}; first ack \
             after d started: {first:?}"
        );
        for n in ["a", "b", "c", "d"] {
            report!("{TEST}: counters of {n}: {}", cluster.counters(n).await);
        }

        let (states, acked) = wind_down(
            TEST,
            &cluster.node("d").addr,
            &rooms,
            readers.into(),
            all_acked(&logs),
            Duration::from_secs(60),
        )
        .await;
        more.extend(check_senders(&logs, false));
        verify(TEST, &states, &logs, &acked, more);
    })
    .await;
}
