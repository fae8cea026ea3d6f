//! The chat itself: ordering, seq, history, idempotency, typing, receipts.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::*;

const FAST: &[&str] = &[
    "--rate-limit-per-sec",
    "100000",
    "--rate-limit-burst",
    "100000",
];

fn seqs(msgs: &Value) -> Vec<u64> {
    msgs.as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn three_clients_chat_in_order_with_history_on_join() {
    let node = Node::start(FAST).await;
    let (mut a, mut b, mut c) = (
        Client::connect(&node, "a").await,
        Client::connect(&node, "b").await,
        Client::connect(&node, "c").await,
    );
    for cl in [&mut a, &mut b, &mut c] {
        let j = cl.join("general").await;
        assert_eq!(j["lastSeq"], 0);
    }
    let mut acked = Vec::new();
    for i in 0..6 {
        let sender = if i % 2 == 0 { &mut a } else { &mut b };
        let m = sender.say("general", &format!("m{i}")).await;
        acked.push(m["seq"].as_u64().unwrap());
        assert_eq!(m["text"], format!("m{i}"));
        assert_eq!(m["roomId"], "general");
        assert!(m["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
        assert_eq!(m["id"], format!("general:{}", i + 1));
    }
    assert_eq!(acked, vec![1, 2, 3, 4, 5, 6]);
    for cl in [&mut a, &mut b, &mut c] {
        for i in 0..6u64 {
            let m = cl.event("newMessage").await;
            assert_eq!(m["seq"], i + 1, "pushes arrive in seq order");
            assert_eq!(m["text"], format!("m{i}"));
            assert_eq!(m["userId"], if i % 2 == 0 { "a" } else { "b" });
            assert_eq!(m["username"], if i % 2 == 0 { "A" } else { "B" });
        }
    }
    let mut d = Client::connect(&node, "d").await;
    let j = d.join("general").await;
    assert_eq!(j["lastSeq"], 6);
    assert_eq!(seqs(&j["messages"]), vec![1, 2, 3, 4, 5, 6]);
    let h = d.event("messageHistory").await;
    assert_eq!(seqs(&h["messages"]), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(j["memberCount"], 4);
}

#[tokio::test]
async fn history_pages_backwards_and_resume_returns_everything_after() {
    let node = Node::start(
        &[
            FAST,
            &["--set", "history_on_join=50", "--set", "max_resume=30"],
        ]
        .concat(),
    )
    .await;
    let mut a = Client::connect(&node, "a").await;
    a.join("r").await;
    for i in 1..=120 {
        a.say("r", &format!("{i}")).await;
    }
    let mut b = Client::connect(&node, "b").await;
    let j = b.join("r").await;
    assert_eq!(seqs(&j["messages"]), (71..=120).collect::<Vec<_>>());
    let page = b
        .ok(
            "history",
            json!({"roomId": "r", "beforeSeq": 71, "limit": 20}),
        )
        .await;
    assert_eq!(seqs(&page["messages"]), (51..=70).collect::<Vec<_>>());
    let page = b
        .ok("history", json!({"roomId": "r", "beforeSeq": 3}))
        .await;
    assert_eq!(seqs(&page["messages"]), vec![1, 2]);
    let page = b
        .ok("history", json!({"roomId": "r", "limit": 100000}))
        .await;
    // The limit is clamped to max_history_page (200): all 120 fit.
    assert_eq!(page["messages"].as_array().unwrap().len(), 120);
    let r = b
        .ok("resume", json!({"roomId": "r", "afterSeq": 100}))
        .await;
    assert_eq!(seqs(&r["messages"]), (101..=120).collect::<Vec<_>>());
    assert_eq!(r["complete"], true);
    assert_eq!(r["lastSeq"], 120);
    let r = b.ok("resume", json!({"roomId": "r", "afterSeq": 0})).await;
    assert_eq!(seqs(&r["messages"]), (1..=30).collect::<Vec<_>>());
    assert_eq!(r["complete"], false);
    let r = b
        .ok("resume", json!({"roomId": "nobody-here", "afterSeq": 0}))
        .await;
    assert_eq!(r["messages"], json!([]));
}

#[tokio::test]
async fn resending_a_client_msg_id_returns_the_original_once() {
    let node = Node::start(FAST).await;
    let (mut a, mut b) = (
        Client::connect(&node, "a").await,
        Client::connect(&node, "b").await,
    );
    a.join("r").await;
    b.join("r").await;
    let send = json!({"roomId": "r", "text": "hello", "clientMsgId": "c-1"});
    let first = a.ok("sendMessage", send.clone()).await;
    let again = a.ok("sendMessage", send.clone()).await;
    assert_eq!(first, again, "same id, seq and timestamp");
    assert_eq!(b.event("newMessage").await["seq"], 1);
    b.no_event("newMessage", Duration::from_millis(300)).await;
    // Another user's identical client id is another message.
    let other = b.ok("sendMessage", send).await;
    assert_eq!(other["seq"], 2);
    // Attachments are kept verbatim.
    let m = a.ok("sendMessage", json!({"roomId": "r", "text": "pic", "attachments": [{"url": "https://x/y.png", "w": 3}]})).await;
    assert_eq!(
        m["attachments"],
        json!([{"url": "https://x/y.png", "w": 3}])
    );
    let h = b.ok("history", json!({"roomId": "r"})).await;
    assert_eq!(seqs(&h["messages"]), vec![1, 2, 3]);
}

#[tokio::test]
async fn typing_is_relayed_to_others_and_expires() {
    let node = Node::start(&[FAST, &["--set", "typing_ttl=\"1s\""]].concat()).await;
    let (mut a, mut b) = (
        Client::connect(&node, "a").await,
        Client::connect(&node, "b").await,
    );
    a.join("r").await;
    b.join("r").await;
    a.ok("typing", json!({"roomId": "r", "isTyping": true}))
        .await;
    let t = b.event("userTyping").await;
    assert_eq!(
        t,
        json!({"roomId": "r", "userId": "a", "username": "A", "isTyping": true})
    );
    // Expiry without an update.
    let t = b.event("userTyping").await;
    assert_eq!(t["isTyping"], false);
    a.no_event("userTyping", Duration::from_millis(200)).await;
    // Explicit stop.
    a.ok("typing", json!({"roomId": "r", "isTyping": true}))
        .await;
    assert_eq!(b.event("userTyping").await["isTyping"], true);
    a.ok("typing", json!({"roomId": "r", "isTyping": false}))
        .await;
    assert_eq!(b.event("userTyping").await["isTyping"], false);
    // Typing is never stored.
    let h = b.ok("history", json!({"roomId": "r"})).await;
    assert_eq!(h["messages"], json!([]));
}

#[tokio::test]
async fn read_receipts_are_broadcast_clamped_and_monotonic() {
    let node = Node::start(FAST).await;
    let (mut a, mut b) = (
        Client::connect(&node, "a").await,
        Client::connect(&node, "b").await,
    );
    a.join("r").await;
    b.join("r").await;
    for i in 0..3 {
        a.say("r", &format!("{i}")).await;
    }
    let r = b.ok("markRead", json!({"roomId": "r", "upToSeq": 2})).await;
    assert_eq!(r, json!({"roomId": "r", "upToSeq": 2}));
    assert_eq!(
        a.event("messagesRead").await,
        json!({"roomId": "r", "userId": "b", "username": "B", "upToSeq": 2})
    );
    // Never backwards, never past the last message.
    assert_eq!(
        b.ok("markRead", json!({"roomId": "r", "upToSeq": 1})).await["upToSeq"],
        2
    );
    assert_eq!(
        b.ok("markRead", json!({"roomId": "r", "upToSeq": 99}))
            .await["upToSeq"],
        3
    );
    assert_eq!(a.event("messagesRead").await["upToSeq"], 3);
    let mut b2 = Client::connect(&node, "b").await;
    assert_eq!(b2.join("r").await["readUpTo"], 3);
}
