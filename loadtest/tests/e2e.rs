//! Runs the binary's scenarios against a tiny in-process stand-in for the `/ws` protocol
//! (join/leave/send with acks, `newMessage` fan-out, history on join), so the tool is
//! tested end to end without the real server.

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Room {
    history: Vec<String>,
    members: HashMap<u64, mpsc::UnboundedSender<String>>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

fn start_mock() -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap().port()).unwrap();
            let rooms = Rooms::default();
            let mut next = 0u64;
            loop {
                let (sock, _) = l.accept().await.unwrap();
                sock.set_nodelay(true).unwrap();
                next += 1;
                tokio::spawn(serve(sock, next, rooms.clone()));
            }
        });
    });
    rx.recv().unwrap()
}

#[allow(clippy::result_large_err)] // the handshake callback's signature
async fn serve(sock: tokio::net::TcpStream, conn: u64, rooms: Rooms) {
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        match req.headers().get("authorization") {
            Some(v) if v.as_bytes().starts_with(b"Bearer ey") => Ok(resp),
            _ => {
                let mut r = ErrorResponse::new(Some("unauthorized".into()));
                *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
                Err(r)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(sock, check).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.send(Message::text(f)).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(m)) = stream.next().await {
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        let id = v["id"].as_u64().unwrap();
        let room = v["data"]["roomId"].as_str().unwrap().to_string();
        let mut rooms = rooms.lock().unwrap();
        let r = rooms.entry(room.clone()).or_default();
        match v["event"].as_str().unwrap() {
            "joinRoom" => {
                r.members.insert(conn, tx.clone());
                let msgs = r.history.join(",");
                let last = r.history.len();
                let _ = tx.send(format!(
                    r#"{{"event":"messageHistory","data":{{"roomId":"{room}","lastSeq":{last},"messages":[{msgs}]}}}}"#
                ));
                let _ = tx.send(format!(
                    r#"{{"ack":{id},"data":{{"roomId":"{room}","lastSeq":{last},"members":[],"messages":[{msgs}],"readUpTo":0}}}}"#
                ));
            }
            "leaveRoom" => {
                r.members.remove(&conn);
                let _ = tx.send(format!(r#"{{"ack":{id},"data":{{"roomId":"{room}"}}}}"#));
            }
            "sendMessage" => {
                if !r.members.contains_key(&conn) {
                    let _ = tx.send(format!(
                        r#"{{"ack":{id},"error":{{"code":"not_in_room","message":"join first"}}}}"#
                    ));
                    continue;
                }
                let seq = r.history.len() + 1;
                let text = serde_json::to_string(&v["data"]["text"]).unwrap();
                let msg = format!(
                    r#"{{"id":"m{seq}","roomId":"{room}","seq":{seq},"userId":"u{conn}","username":"u","text":{text},"attachments":[],"timestamp":0}}"#
                );
                let push = format!(r#"{{"event":"newMessage","data":{msg}}}"#);
                for m in r.members.values() {
                    let _ = m.send(push.clone());
                }
                let _ = tx.send(format!(r#"{{"ack":{id},"data":{msg}}}"#));
                r.history.push(msg);
                let keep = r.history.len().saturating_sub(50);
                if keep > 0 {
                    r.history.drain(..keep);
                }
            }
            _ => {}
        }
    }
    for r in rooms.lock().unwrap().values_mut() {
        r.members.remove(&conn);
    }
}

fn run(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_parley-loadtest"))
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn chat_delivers_everything_to_every_member() {
    let port = start_mock();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = std::process::id().to_string();
    let r = run(&[
        "chat",
        "--url",
        &url,
        "--rooms",
        "3",
        "--members",
        "4",
        "--senders",
        "2",
        "--rate",
        "300",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--drain",
        "500ms",
        "--size",
        "100",
        "--workers",
        "2",
        "--pids",
        &pid,
    ]);
    assert_eq!(r["connected"], 12, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert!((250..=350).contains(&sent), "{r}");
    assert_eq!(r["expected"].as_u64().unwrap(), sent * 4, "{r}");
    assert_eq!(r["delivered"], r["expected"], "{r}");
    assert_eq!(r["acked"].as_u64().unwrap(), sent, "{r}");
    assert_eq!(r["end_to_end"]["count"], r["delivered"]);
    assert_eq!(r["slow_path_frames"], 0);
    assert_eq!(r["unknown_frames"], 0);
    assert!(r["tool_cpu_us"].as_u64().unwrap() > 0);
    assert!(r["server_cpu_us_per_delivery"].as_f64().is_some(), "{r}");
    assert!(r["end_to_end"]["p99_us"].as_u64().unwrap() < 1_000_000);
}

#[test]
fn connect_holds_connections_across_workers() {
    let port = start_mock();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = std::process::id().to_string();
    let r = run(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "60",
        "--hold",
        "1s",
        "--workers",
        "3",
        "--pids",
        &pid,
    ]);
    assert_eq!(r["connected"], 60, "{r}");
    assert_eq!(r["workers"], 3);
    assert_eq!(r["connect_latency"]["count"], 60);
    assert!(r["server_kib_per_connection"].as_f64().is_some(), "{r}");
    assert_eq!(r["dropped_during_hold"], serde_json::json!({}));
}

#[test]
fn history_joins_report_messages_per_join() {
    let port = start_mock();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let r = run(&[
        "history",
        "--url",
        &url,
        "--rooms",
        "3",
        "--joins",
        "30",
        "--seed",
        "60",
        "--connections",
        "2",
    ]);
    assert_eq!(r["joins"], 30, "{r}");
    // The mock keeps 50 messages; ack and nothing else is counted.
    assert_eq!(r["messages_per_join"], 50.0, "{r}");
    assert_eq!(r["join_latency"]["count"], 30);
}

#[test]
fn refuses_non_loopback_targets_and_unbounded_runs() {
    let bin = env!("CARGO_BIN_EXE_parley-loadtest");
    let out = Command::new(bin)
        .args([
            "connect",
            "--url",
            "ws://10.1.2.3:3000/ws",
            "--connections",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
    let out = Command::new(bin)
        .args(["chat", "--duration", "2h"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
