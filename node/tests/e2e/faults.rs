//! Faults: slow consumers and crashing rooms harm no one else.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn a_slow_reader_is_evicted_and_does_not_slow_the_others() {
    let node = Node::start(&[
        "--rate-limit-per-sec",
        "100000",
        "--rate-limit-burst",
        "100000",
        "--set",
        "outbound_queue=16",
        "--set",
        "max_text_chars=100000",
    ])
    .await;
    let mut slow = Client::connect(&node, "slow").await;
    slow.join("r").await;
    let mut fast = Client::connect(&node, "fast").await;
    fast.join("r").await;
    let mut sender = Client::connect(&node, "sender").await;
    sender.join("r").await;
    // ~12 MB of pushes: far more than the kernel buffers of a client that never reads.
    let text = "x".repeat(60_000);
    let n = 200;
    let reader = tokio::spawn(async move {
        for i in 0..n {
            let m = fast.event("newMessage").await;
            assert_eq!(m["seq"], i + 1);
        }
        fast
    });
    for _ in 0..n {
        sender
            .ok("sendMessage", json!({"roomId": "r", "text": text}))
            .await;
    }
    let _fast = reader.await.expect("the fast reader got everything");
    // The slow reader was evicted as a slow consumer.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&node, "parley_slow_consumer_evictions_total").await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slow reader was never evicted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its actor cannot flush a close frame to a client that does not read (actix-web #2441):
    // after `slow_consumer_grace` the node shuts the socket down and the session ends instead
    // of freezing forever.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(&node, "websocket_connections_total").await > 2.0 {
        if tokio::time::Instant::now() > deadline {
            let out = std::process::Command::new("ss")
                .args(["-tnoi"])
                .output()
                .unwrap();
            panic!(
                "the frozen session was never torn down: {}\n{}",
                metric(&node, "websocket_connections_total").await,
                String::from_utf8_lossy(&out.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(slow);
}

#[tokio::test]
async fn a_panicking_room_restarts_keeps_its_seq_and_touches_nobody_else() {
    let node = Node::start(&["--rate-limit-burst", "1000"]).await;
    let (mut a, mut b) = (
        Client::connect(&node, "a").await,
        Client::connect(&node, "b").await,
    );
    a.join("doomed").await;
    b.join("doomed").await;
    a.join("calm").await;
    b.join("calm").await;
    for i in 1..=3 {
        a.say("doomed", &format!("{i}")).await;
    }
    a.say("calm", "before").await;
    let (code, _) = http_request("POST", &node.http("/debug/rooms/doomed/panic"), &[]).await;
    assert_eq!(code, 202);
    // Members are told to resume; the room is back with its seq intact.
    let r = b.event("resync").await;
    assert_eq!(r, json!({"roomId": "doomed", "lastSeq": 3}));
    let m = a.say("doomed", "after").await;
    assert_eq!(m["seq"], 4);
    let r = b
        .ok("resume", json!({"roomId": "doomed", "afterSeq": 0}))
        .await;
    assert_eq!(r["messages"].as_array().unwrap().len(), 4);
    // The other room and both connections never noticed.
    assert_eq!(a.say("calm", "after").await["seq"], 2);
    assert_eq!(a.event("resync").await["roomId"], "doomed");
    a.no_event("resync", Duration::from_millis(100)).await;
    assert!(metric(&node, "parley_actor_restarts_total{kind=\"room\"}").await >= 1.0);
    // Presence survived the restart: a leave is still seen.
    drop(a);
    assert_eq!(b.event("userLeft").await["userId"], "a");
}
