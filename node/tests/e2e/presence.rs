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
