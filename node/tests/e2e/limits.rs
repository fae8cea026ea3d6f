//! Limits and bad input: every abuse gets a clear error or close code and harms no one else.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn malformed_input_gets_stable_error_codes_and_the_connection_survives() {
    let node = Node::start(&[
        "--set",
        "max_rooms_per_connection=2",
        "--set",
        "max_text_chars=10",
    ])
    .await;
    let mut a = Client::connect(&node, "a").await;
    let mut bystander = Client::connect(&node, "b").await;
    bystander.join("r").await;

    a.send_text("this is not json").await;
    assert_eq!(a.event("error").await["code"], "bad_json");
    a.send_text("[1,2,3]").await;
    assert_eq!(a.event("error").await["code"], "bad_frame");
    a.send_text(r#"{"event":"typing","data":{"roomId":"r","isTyping":true}}"#)
        .await;
    let e = a.event("error").await;
    assert_eq!(
        (e["code"].as_str(), e["event"].as_str()),
        (Some("not_in_room"), Some("typing"))
    );
    assert_eq!(a.err("noSuchEvent", json!({})).await, "unknown_event");
    assert_eq!(
        a.err("joinRoom", json!({"roomId": 5})).await,
        "invalid_payload"
    );
    assert_eq!(
        a.err("joinRoom", json!({"roomId": "no spaces"})).await,
        "invalid_payload"
    );
    assert_eq!(a.err("joinRoom", json!({})).await, "invalid_payload");
    assert_eq!(
        a.err("sendMessage", json!({"roomId": "r", "text": "hi"}))
            .await,
        "not_in_room"
    );
    assert_eq!(
        a.err("markRead", json!({"roomId": "r", "upToSeq": -1}))
            .await,
        "invalid_payload"
    );
    a.ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(a.event("error").await["code"], "binary_not_supported");
    a.join("r").await;
    assert_eq!(
        a.err(
            "sendMessage",
            json!({"roomId": "r", "text": "this is longer than ten"})
        )
        .await,
        "text_too_long"
    );
    a.join("r2").await;
    assert_eq!(
        a.err("joinRoom", json!({"roomId": "r3"})).await,
        "too_many_rooms"
    );
    // Still fully working, and the bystander saw only real traffic.
    a.say("r", "ok").await;
    assert_eq!(bystander.event("newMessage").await["text"], "ok");
    bystander
        .no_event("error", Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn rate_limit_is_per_user_across_sessions() {
    let node = Node::start(&["--rate-limit-per-sec", "0.5", "--rate-limit-burst", "4"]).await;
    let (mut tab1, mut tab2) = (
        Client::connect(&node, "a").await,
        Client::connect(&node, "a").await,
    );
    let mut other = Client::connect(&node, "b").await;
    tab1.join("r").await;
    tab2.join("r").await;
    tab1.say("r", "1").await;
    tab2.say("r", "2").await;
    // The bucket (4) is shared: the fifth request of user a fails, whichever tab sends it.
    assert_eq!(
        tab1.err("sendMessage", json!({"roomId": "r", "text": "3"}))
            .await,
        "rate_limited"
    );
    assert_eq!(
        tab2.err("sendMessage", json!({"roomId": "r", "text": "4"}))
            .await,
        "rate_limited"
    );
    // User b is unaffected.
    other.join("r").await;
    other.say("r", "b1").await;
    assert!(metric(&node, "parley_rate_limited_total").await >= 2.0);
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_others_carry_on() {
    let node = Node::start(&[
        "--set",
        "max_frame_bytes=65536",
        "--rate-limit-burst",
        "1000",
    ])
    .await;
    let mut big = Client::connect(&node, "big").await;
    let mut ok = Client::connect(&node, "ok").await;
    ok.join("r").await;
    let huge = format!(
        r#"{{"event":"sendMessage","data":{{"roomId":"r","text":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    big.send_text(&huge).await;
    assert_eq!(big.closed().await, Some(1009));
    ok.say("r", "still here").await;
    assert_eq!(ok.event("newMessage").await["text"], "still here");
    assert!(
        metric(
            &node,
            "parley_connection_closes_total{reason=\"message_too_big\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_and_bounded() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let node = Node::start(&["--set", "max_frame_bytes=4096"]).await;
    let mut a = Client::connect(&node, "a").await;
    let text = r#"{"event":"joinRoom","data":{"roomId":"frag"},"id":1}"#.as_bytes();
    let (p1, p2) = text.split_at(10);
    a.ws.send(Message::Frame(Frame::message(
        p1.to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    a.ws.send(Message::Frame(Frame::message(
        p2.to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(a.event("messageHistory").await["roomId"], "frag");
    // Many small fragments adding up past the limit.
    a.ws.send(Message::Frame(Frame::message(
        vec![b' '; 3000],
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    a.ws.send(Message::Frame(Frame::message(
        vec![b' '; 3000],
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    assert_eq!(a.closed().await, Some(1009));
}

#[tokio::test]
async fn a_flood_of_bad_requests_is_closed_with_4029() {
    let node = Node::start(&["--set", "max_consecutive_errors=5"]).await;
    let mut a = Client::connect(&node, "a").await;
    for _ in 0..5 {
        a.send_text("garbage").await;
    }
    assert_eq!(a.closed().await, Some(4029));
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_client_timeout() {
    let node = Node::start(&[
        "--set",
        "heartbeat_interval=\"300ms\"",
        "--set",
        "client_timeout=\"1s\"",
    ])
    .await;
    let mut a = Client::connect(&node, "a").await;
    // Not reading means not answering pings.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(a.closed().await, Some(4000));
    assert!(
        metric(
            &node,
            "parley_connection_closes_total{reason=\"heartbeat_timeout\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_full_node_refuses_connections_with_503_and_readyz_says_full() {
    let node = Node::start(&["--set", "max_connections=2"]).await;
    let a = Client::connect(&node, "a").await;
    let mut b = Client::connect(&node, "b").await;
    let c_token = token("c", "C");
    match Client::connect_url(&format!("{}?token={c_token}", node.url())).await {
        Err(Refused::Http(503)) => {}
        Err(other) => panic!("expected 503, got {other:?}"),
        Ok(_) => panic!("a third connection was admitted"),
    }
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (code, body) =
        http_request("GET", &node.http(&format!("/ws?token={c_token}")), &upgrade).await;
    assert_eq!(code, 503);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(body["error"]["code"], "server_full");
    let (code, body) = http_get(&node.http("/readyz")).await;
    assert_eq!(code, 503);
    let body: serde_json::Value = serde_json::from_str(&body).expect("json body");
    assert_eq!(
        (body["status"].as_str(), body["maxConnections"].as_u64()),
        (Some("full"), Some(2))
    );
    assert_eq!(
        metric(
            &node,
            "parley_connections_refused_total{reason=\"server_full\"}"
        )
        .await,
        2.0
    );
    // The connections held are not affected.
    b.join("r").await;
    b.say("r", "still here").await;
    // One leaves: a new connection gets its place.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut c = loop {
        match Client::connect_url(&format!("{}?token={c_token}", node.url())).await {
            Ok(c) => break c,
            Err(Refused::Http(503)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("no room after a connection closed: {e:?}"),
        }
    };
    c.join("r").await;
    assert_eq!(b.event("userJoined").await["userId"], "c");
}
