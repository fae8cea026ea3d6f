//! Presence: a user is a member while any of their sessions is in the room.

use std::time::Duration;

use serde_json::json;

use crate::harness::*;

#[tokio::test]
async fn two_sessions_of_one_user_are_one_member() {
    let node = Node::start(&[]).await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.join("r").await;
    let mut tab1 = Client::connect(&node, "alice").await;
    let j = tab1.join("r").await;
    assert_eq!(j["memberCount"], 2);
    assert_eq!(
        bob.event("userJoined").await,
        json!({"roomId": "r", "userId": "alice", "username": "ALICE"})
    );
    let mut tab2 = Client::connect(&node, "alice").await;
    let j = tab2.join("r").await;
    assert_eq!(j["memberCount"], 2);
    let mut ids: Vec<String> = j["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["userId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
    bob.no_event("userJoined", Duration::from_millis(300)).await;
    // One tab leaves: alice is still here.
    tab1.ok("leaveRoom", json!({"roomId": "r"})).await;
    bob.no_event("userLeft", Duration::from_millis(300)).await;
    // The last tab disconnects without leaving: alice left.
    drop(tab2);
    assert_eq!(
        bob.event("userLeft").await,
        json!({"roomId": "r", "userId": "alice", "username": "ALICE"})
    );
    // Pushes go to every session of a user, including the sender's own.
    let mut t3 = Client::connect(&node, "alice").await;
    let mut t4 = Client::connect(&node, "alice").await;
    t3.join("r").await;
    t4.join("r").await;
    t3.say("r", "from t3").await;
    assert_eq!(t4.event("newMessage").await["text"], "from t3");
    assert_eq!(t3.event("newMessage").await["text"], "from t3");
}

/// `local` of `GET /cluster`.
async fn local_counts(node: &Node) -> serde_json::Value {
    let (code, body) = http_get(&node.http("/cluster")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).expect("json")["local"].clone()
}

/// Waits until `/cluster` shows `live` user actors and `dormant` hibernated users.
async fn users_become(node: &Node, live: u64, dormant: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let local = local_counts(node).await;
        if local["users"] == live && local["dormantUsers"] == dormant {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "users never became {live} live, {dormant} dormant: {local}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_quiet_user_hibernates_and_its_disconnect_still_counts() {
    let node = Node::start(&["--set", "user_hibernate_after=\"200ms\""]).await;
    let mut bob = Client::connect(&node, "bob").await;
    bob.join("r").await;
    let mut alice = Client::connect(&node, "alice").await;
    alice.join("r").await;
    bob.event("userJoined").await;
    users_become(&node, 0, 2).await;
    assert_eq!(
        metric(&node, "parley_dormant_actors{kind=\"user\"}").await,
        2.0
    );
    // Nothing a session does needs its user actor awake.
    alice.say("r", "still here").await;
    assert_eq!(bob.event("newMessage").await["text"], "still here");
    // Alice's disconnect of her last session is applied without waking her user actor: she is
    // forgotten at once (nothing left to keep); bob sleeps on.
    drop(alice);
    bob.event("userLeft").await;
    users_become(&node, 0, 1).await;
}
