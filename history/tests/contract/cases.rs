//! The contract cases. Each takes a [`Backend`], opens `Arc<dyn HistoryStore>` from it and
//! checks one guarantee of `history::store`; none knows which store it runs against. Every
//! writer claims its rooms first, as the room actor does when it loads a room.

use std::sync::Arc;

use cluster_proto::RoomId;
use history::{Claim, HistoryStore, Receipt, StoreError, WriteOp};

use super::harness::{msg, msg_by, room, seqs, skipped, user, Backend};

async fn claim(store: &Arc<dyn HistoryStore>, room: &RoomId) -> Claim {
    store.claim(room).await.expect("claim")
}

async fn append(store: &Arc<dyn HistoryStore>, room: &cluster_proto::RoomId, from: u64, to: u64) {
    let ops = (from..=to)
        .map(|s| WriteOp::Message(msg(room, s)))
        .collect();
    store.submit(ops).await.expect("append");
}

/// Messages come back in seq order, with every field intact.
pub async fn ordering_and_fields(b: &Backend) {
    let s = b.open().await;
    let r = room("ordering");
    claim(&s, &r).await;
    append(&s, &r, 1, 1).await;
    append(&s, &r, 2, 7).await;
    for seq in 8..=20 {
        append(&s, &r, seq, seq).await;
    }
    let all = s.latest(&r, 100).await.unwrap();
    assert_eq!(seqs(&all), (1..=20).collect::<Vec<_>>());
    for m in &all {
        assert_eq!(m, &msg(&r, m.seq), "fields of seq {}", m.seq);
    }
    assert_eq!(
        seqs(&s.latest(&r, 5).await.unwrap()),
        vec![16, 17, 18, 19, 20]
    );
    assert!(s.latest(&r, 0).await.unwrap().is_empty());
    let unknown = room("ordering-nobody");
    assert!(s.latest(&unknown, 10).await.unwrap().is_empty());
    assert_eq!(s.room_meta(&unknown).await.unwrap().last_seq, 0);
    assert!(s.receipts(&unknown, 10).await.unwrap().is_empty());
    s.shutdown().await;
}

/// latest / before / after pages, including pages that cross partition buckets.
pub async fn paging_across_buckets(b: &Backend) {
    let s = b.open().await;
    let r = room("paging");
    claim(&s, &r).await;
    let n = 8 * b.bucket_size().max(8) + 3; // several buckets and a partial one
    append(&s, &r, 1, n).await;
    let range = |a: u64, z: u64| (a..=z).collect::<Vec<_>>();

    assert_eq!(seqs(&s.latest(&r, 10).await.unwrap()), range(n - 9, n));
    assert_eq!(seqs(&s.latest(&r, 1000).await.unwrap()), range(1, n));
    assert_eq!(seqs(&s.before(&r, 41, 10).await.unwrap()), range(31, 40));
    assert_eq!(seqs(&s.before(&r, 5, 10).await.unwrap()), range(1, 4));
    assert!(s.before(&r, 1, 10).await.unwrap().is_empty());
    assert!(s.before(&r, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        seqs(&s.before(&r, n + 100, 3).await.unwrap()),
        range(n - 2, n)
    );
    assert_eq!(seqs(&s.after(&r, 0, 10).await.unwrap()), range(1, 10));
    assert_eq!(seqs(&s.after(&r, 7, 10).await.unwrap()), range(8, 17));
    assert_eq!(
        seqs(&s.after(&r, n - 3, 10).await.unwrap()),
        range(n - 2, n)
    );
    assert!(s.after(&r, n, 10).await.unwrap().is_empty());
    assert!(s.after(&r, u64::MAX, 10).await.unwrap().is_empty());
    assert!(s.after(&r, 3, 0).await.unwrap().is_empty());

    // Walk the whole history backwards and forwards with odd page sizes.
    let mut back = Vec::new();
    let mut page = s.latest(&r, 7).await.unwrap();
    while let Some(first) = page.first().map(|m| m.seq) {
        back.splice(0..0, seqs(&page));
        page = s.before(&r, first, 7).await.unwrap();
    }
    assert_eq!(back, range(1, n));
    let mut fwd = Vec::new();
    let mut cursor = 0;
    loop {
        let page = s.after(&r, cursor, 5).await.unwrap();
        let Some(last) = page.last().map(|m| m.seq) else {
            break;
        };
        fwd.extend(seqs(&page));
        cursor = last;
    }
    assert_eq!(fwd, range(1, n));
    s.shutdown().await;
}

fn assert_conflict(r: Result<(), StoreError>, expected: u64, got: u64) {
    match r {
        Err(StoreError::SeqConflict {
            expected: e,
            got: g,
            ..
        }) => {
            assert_eq!((e, g), (expected, got), "conflict numbers")
        }
        other => panic!("expected SeqConflict({expected}, {got}), got {other:?}"),
    }
}

/// Gaps and duplicates are refused with SeqConflict and nothing of the call is written.
pub async fn seq_conflicts_write_nothing(b: &Backend) {
    let s = b.open().await;
    let r = room("conflicts");
    claim(&s, &r).await;
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 2))]).await, 1, 2);
    append(&s, &r, 1, 3).await;
    // A gap inside one call: the valid first message must not be written either.
    let call = vec![WriteOp::Message(msg(&r, 4)), WriteOp::Message(msg(&r, 6))];
    assert_conflict(s.submit(call).await, 5, 6);
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 3))]).await, 4, 3);
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 1))]).await, 4, 1);
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 3);
    assert_eq!(seqs(&s.latest(&r, 10).await.unwrap()), vec![1, 2, 3]);
    // Messages of two rooms in one call are refused as a whole (a fence is per room).
    let other = room("conflicts-other");
    claim(&s, &other).await;
    let call = vec![
        WriteOp::Message(msg(&other, 1)),
        WriteOp::Message(msg(&r, 4)),
    ];
    match s.submit(call).await {
        Err(StoreError::Invalid(_)) => {}
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(s.room_meta(&other).await.unwrap().last_seq, 0);
    assert!(s.latest(&other, 10).await.unwrap().is_empty());
    // A call with messages of one room and receipts of another fails as a whole too.
    let rc = |seq| WriteOp::Receipt {
        room: other.clone(),
        user: user("dave"),
        seq,
    };
    assert_conflict(
        s.submit(vec![rc(2), WriteOp::Message(msg(&r, 9))]).await,
        4,
        9,
    );
    assert!(s.receipts(&other, 10).await.unwrap().is_empty());
    s.submit(vec![rc(3), WriteOp::Message(msg(&r, 4))])
        .await
        .unwrap();
    assert_eq!(s.receipts(&other, 10).await.unwrap()[0].seq, 3);
    // The room goes on where it was.
    append(&s, &r, 5, 5).await;
    assert_eq!(seqs(&s.latest(&r, 10).await.unwrap()), vec![1, 2, 3, 4, 5]);
    // Pipelined calls: the bad one in the middle fails alone.
    let t1 = s.submit(vec![WriteOp::Message(msg(&r, 6))]);
    let t2 = s.submit(vec![WriteOp::Message(msg(&r, 8))]);
    let t3 = s.submit(vec![WriteOp::Message(msg(&r, 7))]);
    t1.await.unwrap();
    assert_conflict(t2.await, 7, 8);
    t3.await.unwrap();
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 7);
    s.shutdown().await;
}

/// Receipts only move forward, per user. They are not fenced: no claim is needed.
pub async fn receipts_are_monotonic(b: &Backend) {
    let s = b.open().await;
    let r = room("receipts");
    let (alice, bob) = (user("alice"), user("bob"));
    let rc = |u: &cluster_proto::UserId, seq| WriteOp::Receipt {
        room: r.clone(),
        user: u.clone(),
        seq,
    };
    s.submit(vec![rc(&alice, 5)]).await.unwrap();
    s.submit(vec![rc(&alice, 3)]).await.unwrap();
    s.submit(vec![rc(&bob, 2), rc(&bob, 9), rc(&bob, 4)])
        .await
        .unwrap();
    let got = s.receipts(&r, 10).await.unwrap();
    assert_eq!(
        got,
        vec![
            Receipt {
                user: alice.clone(),
                seq: 5
            },
            Receipt {
                user: bob.clone(),
                seq: 9
            }
        ]
    );
    s.submit(vec![rc(&alice, 12)]).await.unwrap();
    s.submit(vec![rc(&alice, 0)]).await.unwrap();
    let got = s.receipts(&r, 10).await.unwrap();
    assert_eq!(
        got[0],
        Receipt {
            user: alice,
            seq: 12
        }
    );
    assert_eq!(s.receipts(&r, 1).await.unwrap().len(), 1);
    assert!(s.receipts(&r, 0).await.unwrap().is_empty());
    s.shutdown().await;
}

/// room_meta is ordered after every write submitted before it, even unawaited ones.
pub async fn room_meta_after_submit(b: &Backend) {
    let s = b.open().await;
    let r = room("meta");
    claim(&s, &r).await;
    let tickets: Vec<_> = (1..=100)
        .map(|seq| s.submit(vec![WriteOp::Message(msg(&r, seq))]))
        .collect();
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 100);
    for t in tickets {
        t.await.unwrap();
    }
    assert_eq!(s.latest(&r, 1).await.unwrap()[0].seq, 100);
    s.shutdown().await;
}

/// Many rooms written at once, each with pipelined calls, keep their own order.
pub async fn concurrent_writers(b: &Backend) {
    let s = b.open().await;
    let rooms = 8;
    let per_room = 60;
    let mut tasks = Vec::new();
    for i in 0..rooms {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let r = room(&format!("concurrent-{i}"));
            claim(&s, &r).await;
            let mut tickets = Vec::new();
            for seq in 1..=per_room {
                tickets.push(s.submit(vec![WriteOp::Message(msg(&r, seq))]));
                if seq % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            for t in tickets {
                t.await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for i in 0..rooms {
        let r = room(&format!("concurrent-{i}"));
        let got = s.latest(&r, 1000).await.unwrap();
        assert_eq!(seqs(&got), (1..=per_room).collect::<Vec<_>>(), "room {i}");
        assert!(got.iter().all(|m| m.room_id == r));
        assert_eq!(s.room_meta(&r).await.unwrap().last_seq, per_room);
    }
    s.shutdown().await;
}

/// Shut down, drop, open again: everything acknowledged is there and the rules still hold.
pub async fn reopen_keeps_data(b: &Backend) {
    let r = room("reopen");
    let first = {
        let s = b.open().await;
        let c = claim(&s, &r).await;
        append(&s, &r, 1, 12).await;
        let rc = WriteOp::Receipt {
            room: r.clone(),
            user: user("carol"),
            seq: 11,
        };
        s.submit(vec![rc]).await.unwrap();
        s.check().await.unwrap();
        s.shutdown().await;
        assert!(s.submit(vec![WriteOp::Message(msg(&r, 13))]).await.is_err());
        c
    };
    let s = b.open().await;
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 12);
    // A new handle holds no claim, and epochs keep rising across the reopen.
    assert_fenced(s.submit(vec![WriteOp::Message(msg(&r, 13))]).await, &r, 0);
    let c = claim(&s, &r).await;
    assert!(c.epoch > first.epoch, "{c:?} after {first:?}");
    assert_eq!(c.last_seq, 12);
    let all = s.latest(&r, 100).await.unwrap();
    assert_eq!(seqs(&all), (1..=12).collect::<Vec<_>>());
    assert_eq!(all[4], msg(&r, 5));
    assert_eq!(
        s.receipts(&r, 10).await.unwrap(),
        vec![Receipt {
            user: user("carol"),
            seq: 11
        }]
    );
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 12))]).await, 13, 12);
    append(&s, &r, 13, 13).await;
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 13);
    s.check().await.unwrap();
    s.shutdown().await;
}

/// Empty calls succeed; a store names itself.
pub async fn trivia(b: &Backend) {
    let s = b.open().await;
    assert!(!s.name().is_empty());
    s.submit(Vec::new()).await.unwrap();
    s.check().await.unwrap();
    s.shutdown().await;
}

fn assert_fenced(r: Result<(), StoreError>, room: &RoomId, epoch: u64) {
    match r {
        Err(StoreError::Fenced { room: fr, epoch: e }) => {
            assert_eq!((&fr, e), (room, epoch), "fenced room and epoch")
        }
        other => panic!("expected Fenced({room}, {epoch}), got {other:?}"),
    }
}

/// One handle: writes need a claim, a claim is ordered after the handle's earlier writes and
/// returns their last seq, epochs only rise.
pub async fn fence_claims_of_one_handle(b: &Backend) {
    let s = b.open().await;
    let r = room("fence-one");
    // (e) No claim, no message write: nothing of it is visible. Receipts need no claim.
    assert_fenced(s.submit(vec![WriteOp::Message(msg(&r, 1))]).await, &r, 0);
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 0);
    assert!(s.latest(&r, 10).await.unwrap().is_empty());
    let rc = WriteOp::Receipt {
        room: r.clone(),
        user: user("erin"),
        seq: 1,
    };
    s.submit(vec![rc]).await.unwrap();
    let c1 = claim(&s, &r).await;
    assert!(c1.epoch > 0);
    assert_eq!(c1.last_seq, 0);
    // A claim waits for the writes submitted before it and counts them.
    let tickets: Vec<_> = (1..=5)
        .map(|seq| s.submit(vec![WriteOp::Message(msg(&r, seq))]))
        .collect();
    let c2 = claim(&s, &r).await;
    for t in tickets {
        t.await.unwrap();
    }
    // (d) Epochs rise with every claim.
    assert!(c2.epoch > c1.epoch, "{c2:?} after {c1:?}");
    assert_eq!(c2.last_seq, 5);
    // Claiming again keeps the handle the owner: it goes on from last_seq.
    append(&s, &r, 6, 7).await;
    let c3 = claim(&s, &r).await;
    assert!(c3.epoch > c2.epoch, "{c3:?} after {c2:?}");
    assert_eq!(c3.last_seq, 7);
    append(&s, &r, 8, 8).await;
    assert_eq!(
        seqs(&s.latest(&r, 10).await.unwrap()),
        (1..=8).collect::<Vec<_>>()
    );
    // A claim is per room.
    let other = room("fence-one-other");
    assert_fenced(
        s.submit(vec![WriteOp::Message(msg(&other, 1))]).await,
        &other,
        0,
    );
    s.shutdown().await;
}

/// (a), (c): a second handle's claim fences the first. The first handle's next write fails
/// with nothing of it visible, and stays fenced; the new owner starts from the last seq acked
/// to the old one. Claiming back fences the second.
pub async fn fence_new_owner_fences_the_old(b: &Backend) {
    let node2 = match b.other_node().await {
        Ok(s) => s,
        Err(why) => return skipped(b.name(), "fence_new_owner_fences_the_old", why),
    };
    let node1 = b.open().await;
    let r = room("fence-takeover");
    let c1 = claim(&node1, &r).await;
    append(&node1, &r, 1, 3).await;
    let c2 = claim(&node2, &r).await;
    assert!(c2.epoch > c1.epoch, "{c2:?} after {c1:?}");
    assert_eq!(
        c2.last_seq, 3,
        "the claim sees every write acked to the old owner"
    );
    // The old owner is fenced: nothing of its call is visible.
    let call = vec![
        WriteOp::Message(msg(&r, 4)),
        WriteOp::Receipt {
            room: r.clone(),
            user: user("frank"),
            seq: 4,
        },
    ];
    assert_fenced(node1.submit(call).await, &r, c1.epoch);
    assert_eq!(node2.room_meta(&r).await.unwrap().last_seq, 3);
    assert_eq!(seqs(&node2.latest(&r, 10).await.unwrap()), vec![1, 2, 3]);
    assert!(node2.receipts(&r, 10).await.unwrap().is_empty());
    // The new owner goes on with the same seq sequence.
    append(&node2, &r, c2.last_seq + 1, 5).await;
    // The old owner stays fenced, whatever seq it tries; its reads still work.
    assert_fenced(
        node1.submit(vec![WriteOp::Message(msg(&r, 6))]).await,
        &r,
        c1.epoch,
    );
    assert_fenced(
        node1.submit(vec![WriteOp::Message(msg(&r, 4))]).await,
        &r,
        c1.epoch,
    );
    assert_eq!(
        seqs(&node1.latest(&r, 10).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(node1.room_meta(&r).await.unwrap().last_seq, 5);
    // Receipts are not fenced.
    let rc = WriteOp::Receipt {
        room: r.clone(),
        user: user("frank"),
        seq: 2,
    };
    node1.submit(vec![rc]).await.unwrap();
    // Claiming back: the first handle owns the room again and the second is fenced.
    let c3 = claim(&node1, &r).await;
    assert!(c3.epoch > c2.epoch, "{c3:?} after {c2:?}");
    assert_eq!(c3.last_seq, 5);
    assert_fenced(
        node2.submit(vec![WriteOp::Message(msg(&r, 6))]).await,
        &r,
        c2.epoch,
    );
    append(&node1, &r, 6, 6).await;
    assert_eq!(
        node2.latest(&r, 10).await.unwrap(),
        (1..=6).map(|q| msg(&r, q)).collect::<Vec<_>>()
    );
    node1.shutdown().await;
    node2.shutdown().await;
}

/// (b): a stale owner writing the seqs of the new owner never replaces or hides what the new
/// owner committed, and its rows above the new owner's last seq are replaced by the new
/// owner's next writes.
pub async fn fence_stale_writes_never_replace(b: &Backend) {
    let node2 = match b.other_node().await {
        Ok(s) => s,
        Err(why) => return skipped(b.name(), "fence_stale_writes_never_replace", why),
    };
    let node1 = b.open().await;
    let r = room("fence-stale");
    let c1 = claim(&node1, &r).await;
    append(&node1, &r, 1, 2).await;
    claim(&node2, &r).await;
    let new = |seq| WriteOp::Message(msg_by(&r, seq, "new-owner"));
    let stale = |seq| WriteOp::Message(msg_by(&r, seq, "stale-owner"));
    node2.submit(vec![new(3)]).await.unwrap();
    // The stale owner, not knowing yet, writes the seq the new owner committed and seqs above
    // the new owner's last one (a CQL store writes these rows before its commit is refused).
    assert_fenced(
        node1.submit(vec![stale(3), stale(4), stale(5)]).await,
        &r,
        c1.epoch,
    );
    // Now it knows: refused at once.
    assert_fenced(node1.submit(vec![stale(3)]).await, &r, c1.epoch);
    for s in [&node1, &node2] {
        let got = s.latest(&r, 10).await.unwrap();
        assert_eq!(seqs(&got), vec![1, 2, 3]);
        assert_eq!(got[2], msg_by(&r, 3, "new-owner"));
        assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 3);
    }
    node2.submit(vec![new(4), new(5)]).await.unwrap();
    let expected: Vec<_> = (1..=2)
        .map(|q| msg(&r, q))
        .chain((3..=5).map(|q| msg_by(&r, q, "new-owner")))
        .collect();
    assert_eq!(node1.latest(&r, 10).await.unwrap(), expected);
    assert_eq!(node2.after(&r, 0, 10).await.unwrap(), expected);
    node1.shutdown().await;
    node2.shutdown().await;
}

/// (c) under a race: the old owner has many writes in flight while the new owner claims. The
/// writes acknowledged to the old owner are exactly the seqs up to the claim's last seq, the
/// rest fail with `Fenced`, and the history is exactly the acknowledged writes.
pub async fn fence_claim_races_writes_in_flight(b: &Backend) {
    let node2 = match b.other_node().await {
        Ok(s) => s,
        Err(why) => return skipped(b.name(), "fence_claim_races_writes_in_flight", why),
    };
    let node1 = b.open().await;
    let r = room("fence-race");
    claim(&node1, &r).await;
    let mut tickets = Vec::new();
    let mut claimer = None;
    for seq in 1..=60 {
        tickets.push(node1.submit(vec![WriteOp::Message(msg(&r, seq))]));
        if seq == 10 {
            let (node2, r) = (node2.clone(), r.clone());
            claimer = Some(tokio::spawn(async move { node2.claim(&r).await }));
        }
        if seq % 5 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let c2 = claimer
        .expect("spawned at seq 10")
        .await
        .expect("claim task")
        .expect("claim");
    let mut acked = Vec::new();
    for (seq, t) in (1..).zip(tickets) {
        match t.await {
            Ok(()) => acked.push(seq),
            Err(StoreError::Fenced { .. }) => {}
            Err(e) => panic!("seq {seq}: expected Ok or Fenced, got {e}"),
        }
    }
    assert_eq!(acked, (1..=c2.last_seq).collect::<Vec<_>>());
    assert_eq!(
        seqs(&node2.latest(&r, 100).await.unwrap()),
        (1..=c2.last_seq).collect::<Vec<_>>()
    );
    append(&node2, &r, c2.last_seq + 1, c2.last_seq + 1).await;
    node1.shutdown().await;
    node2.shutdown().await;
}
