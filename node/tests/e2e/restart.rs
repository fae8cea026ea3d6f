//! Durability: history, seqs and receipts survive a restart and a kill -9.

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn history_seq_and_receipts_survive_a_restart() {
    let mut node = Node::start(&["--rate-limit-burst", "1000"]).await;
    let mut a = Client::connect(&node, "a").await;
    a.join("r").await;
    for i in 1..=5 {
        a.say("r", &format!("{i}")).await;
    }
    a.ok("markRead", json!({"roomId": "r", "upToSeq": 4})).await;
    node.restart().await;
    // The restart closed the connection with "going away".
    assert_eq!(a.closed().await, Some(1001));
    let mut a = Client::connect(&node, "a").await;
    let j = a.join("r").await;
    assert_eq!(j["lastSeq"], 5);
    assert_eq!(j["readUpTo"], 4);
    assert_eq!(j["messages"].as_array().unwrap().len(), 5);
    assert_eq!(a.say("r", "6").await["seq"], 6);
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9() {
    let mut node = Node::start(&["--rate-limit-burst", "1000"]).await;
    let mut a = Client::connect(&node, "a").await;
    a.join("r").await;
    let mut acked = 0;
    for i in 1..=50 {
        acked = a.say("r", &format!("{i}")).await["seq"].as_u64().unwrap();
    }
    node.kill().await;
    node.restart().await;
    let mut b = Client::connect(&node, "b").await;
    let r = b.ok("resume", json!({"roomId": "r", "afterSeq": 0})).await;
    let got: Vec<u64> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, (1..=acked).collect::<Vec<_>>());
}

#[tokio::test]
async fn health_and_readiness_endpoints_answer() {
    let node = Node::start(&[]).await;
    let (code, body) = http_get(&node.http("/healthz")).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(&node.http("/readyz")).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"embedded\""));
    let mut a = Client::connect(&node, "a").await;
    a.join("r").await;
    let (code, body) = http_get(&node.http("/metrics")).await;
    assert_eq!(code, 200);
    for name in [
        "websocket_connections_total 1",
        "websocket_messages_total{direction=\"inbound\",event=\"joinRoom\"} 1",
        "websocket_message_latency_ms_bucket",
        "parley_live_room_actors 1",
        // The user's first connection, on its owner node: dormant state, no actor.
        "parley_live_user_actors 0",
        "parley_dormant_actors{kind=\"user\"} 1",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    // No label ever carries a user or room id.
    assert!(!body.contains("\"r\"") && !body.contains("\"a\""));
}
