//! `/socket.io/` at the wire level: Engine.IO polling and WebSocket, Socket.IO CONNECT and
//! events, and the clean-up of abandoned polling sessions. The real `socket.io-client` runs
//! against a node in `tests/socketio/` (node's test runner).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{http_request_body, metric, token, Client, Node, WAIT};

/// One HTTP/1.1 request with a body; returns (status, body).
async fn request(node: &Node, method: &str, path: &str, body: &str) -> (u16, String) {
    let url = node.http(path);
    http_request_body(
        method,
        &url,
        &[("Content-Type", "text/plain;charset=UTF-8")],
        body,
    )
    .await
}

/// A polling handshake: the sid.
async fn handshake(node: &Node) -> String {
    let (status, body) = request(node, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
    open["sid"].as_str().expect("sid").to_string()
}

fn q(sid: &str) -> String {
    format!("/socket.io/?EIO=4&transport=polling&sid={sid}")
}

/// Polls until a packet starting with `prefix` arrives.
async fn poll_until(node: &Node, sid: &str, prefix: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = request(node, "GET", &q(sid), "").await;
        assert_eq!(status, 200, "{body}");
        if let Some(p) = body.split('\u{1e}').find(|p| p.starts_with(prefix)) {
            return p.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no {prefix} packet");
    }
}

#[tokio::test]
async fn polling_socket_joins_a_room_and_is_freed_when_abandoned() {
    let node = Node::start(&[
        "--set",
        "heartbeat_interval=\"1s\"",
        "--set",
        "client_timeout=\"2s\"",
    ])
    .await;
    let mut native = Client::connect(&node, "nat").await;
    native.join("mixed").await;

    let sid = handshake(&node).await;
    let connect = format!(
        "40{{\"token\":\"{}\"}}\u{1e}421[\"joinRoom\",{{\"roomId\":\"mixed\"}}]",
        token("poll", "Poll")
    );
    let (status, body) = request(&node, "POST", &q(&sid), &connect).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let ack = poll_until(&node, &sid, "431[").await;
    let reply: Value = serde_json::from_str(&ack[3..]).unwrap();
    assert_eq!(reply[0]["roomId"], "mixed");
    let joined = native.event("userJoined").await;
    assert_eq!(joined["userId"], "poll");

    // The client vanishes: within pingInterval + pingTimeout (3 s) the session is gone.
    assert_eq!(metric(&node, "parley_engineio_sessions").await, 1.0);
    let left = tokio::time::timeout(Duration::from_secs(5), native.event("userLeft"))
        .await
        .expect("userLeft within pingInterval + pingTimeout");
    assert_eq!(left["userId"], "poll");
    assert_eq!(metric(&node, "parley_engineio_sessions").await, 0.0);
    let (status, body) = request(&node, "GET", &q(&sid), "").await;
    assert_eq!(status, 400);
    assert_eq!(body, r#"{"code":1,"message":"Session ID unknown"}"#);
}

#[tokio::test]
async fn polling_sessions_are_bounded_and_a_freed_place_is_reused() {
    let node = Node::start(&[
        "--set",
        "max_connections=2",
        "--set",
        "heartbeat_interval=\"1s\"",
        "--set",
        "client_timeout=\"2s\"",
    ])
    .await;
    // Two abandoned handshakes hold the node's two places (no socket is held for them).
    let first = handshake(&node).await;
    handshake(&node).await;
    let (status, body) = request(&node, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(body["error"]["code"], "server_full");
    // Existing sessions are still served.
    let (status, _) = request(&node, "GET", &q(&first), "").await;
    assert_eq!(status, 200);
    // Abandoned sessions end after pingInterval + pingTimeout; then a handshake succeeds.
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&node, "parley_engineio_sessions").await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "abandoned sessions were never freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    handshake(&node).await;
    assert!(
        metric(
            &node,
            "parley_connections_refused_total{reason=\"server_full\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn bad_token_gets_connect_error_and_bad_requests_get_engineio_errors() {
    let node = Node::start(&[]).await;
    let sid = handshake(&node).await;
    let (status, _) = request(&node, "POST", &q(&sid), "40{\"token\":\"forged\"}").await;
    assert_eq!(status, 200);
    let err = poll_until(&node, &sid, "44").await;
    assert_eq!(err, r#"44{"message":"Authentication failed"}"#);

    let (status, body) = request(&node, "GET", "/socket.io/?EIO=3&transport=polling", "").await;
    assert_eq!(
        (status, body.as_str()),
        (
            400,
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        )
    );
    let (status, body) = request(
        &node,
        "GET",
        "/socket.io/?EIO=4&transport=carrier-pigeon",
        "",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":0,"message":"Transport unknown"}"#)
    );
    let (status, _) = request(&node, "POST", "/socket.io/?EIO=4&transport=polling", "").await;
    assert_eq!(status, 400);
    // A malformed packet ends the session; the server stays up.
    let sid = handshake(&node).await;
    let (status, _) = request(&node, "POST", &q(&sid), "4xyz").await;
    assert_eq!(status, 200);
    let (status, _) = request(&node, "POST", &q(&sid), "\u{1e}\u{1e}").await;
    assert_eq!(status, 400);
    let (status, _) = request(&node, "GET", "/healthz", "").await;
    assert_eq!(status, 200);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next_text(ws: &mut Ws) -> String {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return t.to_string(),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn websocket_transport_speaks_socketio() {
    let node = Node::start(&[]).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{\"sid\":"), "{open}");
    assert!(open.contains("\"upgrades\":[]"), "{open}");
    let connect = format!("40{{\"token\":\"{}\"}}", token("wsio", "W"));
    ws.send(Message::Text(connect.into())).await.unwrap();
    let connected = next_text(&mut ws).await;
    assert!(connected.starts_with("40{\"sid\":"), "{connected}");
    let join = "427[\"joinRoom\",{\"roomId\":\"wsroom\"}]";
    ws.send(Message::Text(join.into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, r#"42["messageHistory",[]]"#);
    let ack = next_text(&mut ws).await;
    assert!(ack.starts_with("437[{\"roomId\":\"wsroom\""), "{ack}");
}

#[tokio::test]
async fn a_polling_client_that_stops_polling_is_a_slow_consumer() {
    let node = Node::start(&["--set", "outbound_queue=8"]).await;
    let sid = handshake(&node).await;
    let connect = format!(
        "40{{\"token\":\"{}\"}}\u{1e}421[\"joinRoom\",{{\"roomId\":\"busy\"}}]",
        token("lazy", "Lazy")
    );
    let (status, _) = request(&node, "POST", &q(&sid), &connect).await;
    assert_eq!(status, 200);
    poll_until(&node, &sid, "431[").await;
    // The polling client stops polling; the room keeps pushing to it.
    let mut talker = Client::connect(&node, "talker").await;
    talker.join("busy").await;
    for i in 0..12 {
        talker.say("busy", &format!("m{i}")).await;
    }
    let closes = "parley_connection_closes_total{reason=\"slow_consumer\"}";
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&node, closes).await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "not evicted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&node, "parley_engineio_sessions").await, 0.0);
    assert_eq!(talker.event("userLeft").await["userId"], "lazy");
}
