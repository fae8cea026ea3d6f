//! The contract cases. Each takes a [`Backend`], opens `Arc<dyn HistoryStore>` from it and
//! checks one guarantee of `history::store`; none knows which store it runs against.

use std::sync::Arc;

use history::{HistoryStore, Receipt, StoreError, WriteOp};

use super::harness::{msg, room, seqs, user, Backend};

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
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 2))]).await, 1, 2);
    append(&s, &r, 1, 3).await;
    // A gap inside one call: the valid first message must not be written either.
    let call = vec![WriteOp::Message(msg(&r, 4)), WriteOp::Message(msg(&r, 6))];
    assert_conflict(s.submit(call).await, 5, 6);
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 3))]).await, 4, 3);
    assert_conflict(s.submit(vec![WriteOp::Message(msg(&r, 1))]).await, 4, 1);
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 3);
    assert_eq!(seqs(&s.latest(&r, 10).await.unwrap()), vec![1, 2, 3]);
    // A call spanning two rooms fails as a whole.
    let other = room("conflicts-other");
    let call = vec![
        WriteOp::Message(msg(&other, 1)),
        WriteOp::Message(msg(&r, 9)),
    ];
    assert_conflict(s.submit(call).await, 4, 9);
    assert_eq!(s.room_meta(&other).await.unwrap().last_seq, 0);
    assert!(s.latest(&other, 10).await.unwrap().is_empty());
    // The room goes on where it was.
    append(&s, &r, 4, 5).await;
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

/// Receipts only move forward, per user.
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
    {
        let s = b.open().await;
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
    }
    let s = b.open().await;
    assert_eq!(s.room_meta(&r).await.unwrap().last_seq, 12);
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
