//! A tiny in-process stand-in server for the tool's end-to-end tests: join/leave/send
//! with acks (idempotent with a `clientMsgId`), `newMessage` fan-out, history on join,
//! `resume` in pages and `GET /healthz`, spoken either as Parley's `/ws`
//! JSON protocol (token in `Authorization`) or, on paths under `/socket.io/`, as
//! Socket.IO v4 (open packet, CONNECT with the token in the auth payload, an Engine.IO
//! ping whose pong is counted, `42<id>[...]` events answered with `43<id>[...]`).

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Room {
    /// The latest 50 messages (what a join returns).
    history: Vec<String>,
    /// Every message, seq i + 1 at index i (what `resume` pages through).
    log: Vec<String>,
    /// clientMsgId → the stored message, so a resend is answered with the original.
    by_client_id: HashMap<String, String>,
    members: HashMap<u64, (bool, mpsc::UnboundedSender<String>)>,
}

type Rooms = Arc<Mutex<HashMap<String, Room>>>;

/// Counters the tests check: Engine.IO pongs received, Socket.IO CONNECTs refused.
#[derive(Default)]
pub struct Seen {
    pub pongs: AtomicU64,
    pub refused: AtomicU64,
}

/// Starts the mock on an ephemeral loopback port; returns the port and its counters.
pub fn start() -> (u16, Arc<Seen>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = Arc::new(Seen::default());
    let seen2 = seen.clone();
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
                tokio::spawn(serve(sock, next, rooms.clone(), seen2.clone()));
            }
        });
    });
    (rx.recv().unwrap(), seen)
}

/// An outgoing push or ack in the connection's protocol.
fn push(sio: bool, event: &str, data: &str) -> String {
    if sio {
        format!(r#"42["{event}",{data}]"#)
    } else {
        format!(r#"{{"event":"{event}","data":{data}}}"#)
    }
}

fn ack(sio: bool, id: u64, data: &str) -> String {
    if sio {
        format!("43{id}[{data}]")
    } else {
        format!(r#"{{"ack":{id},"data":{data}}}"#)
    }
}

fn ack_error(sio: bool, id: u64, code: &str) -> String {
    let e = format!(r#"{{"code":"{code}","message":"no"}}"#);
    if sio {
        format!(r#"43{id}[{{"error":{e}}}]"#)
    } else {
        format!(r#"{{"ack":{id},"error":{e}}}"#)
    }
}

/// (event, data, id) of a request in either protocol.
fn parse_request(sio: bool, t: &str) -> Option<(String, Value, u64)> {
    if sio {
        let rest = t.strip_prefix("42")?;
        let at = rest.find('[')?;
        let id = rest[..at].parse().ok()?;
        let v: Value = serde_json::from_str(&rest[at..]).ok()?;
        Some((v[0].as_str()?.to_string(), v[1].clone(), id))
    } else {
        let v: Value = serde_json::from_str(t).ok()?;
        Some((
            v["event"].as_str()?.to_string(),
            v["data"].clone(),
            v["id"].as_u64()?,
        ))
    }
}

#[allow(clippy::result_large_err)] // the handshake callback's signature
async fn serve(mut sock: tokio::net::TcpStream, conn: u64, rooms: Rooms, seen: Arc<Seen>) {
    // `GET /healthz` (plain HTTP) answers 200, as a Parley node does.
    let mut head = [0u8; 12];
    if matches!(sock.peek(&mut head).await, Ok(12)) && head.starts_with(b"GET /healthz") {
        use tokio::io::AsyncWriteExt;
        let ok =
            "HTTP/1.1 200 OK\r\ncontent-length: 15\r\nconnection: close\r\n\r\n{\"status\":\"ok\"}";
        let _ = sock.write_all(ok.as_bytes()).await;
        return;
    }
    let mut sio = false;
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        sio = req.uri().path().starts_with("/socket.io/");
        let bearer = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer ey"));
        if sio || bearer {
            return Ok(resp);
        }
        let mut r = ErrorResponse::new(Some("unauthorized".into()));
        *r.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::UNAUTHORIZED;
        Err(r)
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
    if sio {
        let _ = tx
            .send(r#"0{"sid":"m","upgrades":[],"pingInterval":25000,"pingTimeout":20000}"#.into());
        let Some(Ok(Message::Text(t))) = stream.next().await else {
            return;
        };
        if !t.as_str().starts_with(r#"40{"token":"ey"#) {
            seen.refused.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(r#"44{"message":"Authentication failed"}"#.into());
            return;
        }
        let _ = tx.send(r#"40{"sid":"s"}"#.into());
        let _ = tx.send("2".into()); // an Engine.IO ping: the client must answer "3"
    }
    while let Some(Ok(m)) = stream.next().await {
        let Message::Text(t) = m else { continue };
        if sio && t.as_str() == "3" {
            seen.pongs.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (event, data, id) = parse_request(sio, t.as_str()).expect("well-formed request");
        let room = data["roomId"].as_str().unwrap().to_string();
        let mut rooms = rooms.lock().unwrap();
        let r = rooms.entry(room.clone()).or_default();
        match event.as_str() {
            "joinRoom" => {
                r.members.insert(conn, (sio, tx.clone()));
                let msgs = r.history.join(",");
                let last = r.log.len();
                let h = format!(r#"{{"roomId":"{room}","lastSeq":{last},"messages":[{msgs}]}}"#);
                let _ = tx.send(push(sio, "messageHistory", &h));
                let _ = tx.send(ack(sio, id, &h));
            }
            "leaveRoom" => {
                r.members.remove(&conn);
                let _ = tx.send(ack(sio, id, &format!(r#"{{"roomId":"{room}"}}"#)));
            }
            "sendMessage" => {
                if !r.members.contains_key(&conn) {
                    let _ = tx.send(ack_error(sio, id, "not_in_room"));
                    continue;
                }
                let cmid = data["clientMsgId"].as_str().map(str::to_string);
                if let Some(stored) = cmid.as_ref().and_then(|c| r.by_client_id.get(c)) {
                    let _ = tx.send(ack(sio, id, stored));
                    continue;
                }
                let seq = r.log.len() + 1;
                let text = serde_json::to_string(&data["text"]).unwrap();
                let cmid_field = cmid
                    .as_ref()
                    .map_or(String::new(), |c| format!(r#","clientMsgId":"{c}""#));
                let msg = format!(
                    r#"{{"id":"m{seq}","roomId":"{room}","seq":{seq},"userId":"u{conn}","username":"u","text":{text},"attachments":[],"timestamp":0{cmid_field}}}"#
                );
                if let Some(c) = cmid {
                    r.by_client_id.insert(c, msg.clone());
                }
                r.log.push(msg.clone());
                for (member_sio, m) in r.members.values() {
                    let _ = m.send(push(*member_sio, "newMessage", &msg));
                }
                let _ = tx.send(ack(sio, id, &msg));
                r.history.push(msg);
                let keep = r.history.len().saturating_sub(50);
                if keep > 0 {
                    r.history.drain(..keep);
                }
            }
            "resume" => {
                // Pages of at most 100 messages after `afterSeq`.
                let after = data["afterSeq"].as_u64().unwrap_or(0) as usize;
                let end = r.log.len().min(after + 100);
                let page = r.log.get(after..end).unwrap_or_default().join(",");
                let (last, complete) = (r.log.len(), end == r.log.len());
                let d = format!(
                    r#"{{"roomId":"{room}","messages":[{page}],"lastSeq":{last},"complete":{complete}}}"#
                );
                let _ = tx.send(ack(sio, id, &d));
            }
            _ => {}
        }
    }
    for r in rooms.lock().unwrap().values_mut() {
        r.members.remove(&conn);
    }
}

/// Runs the tool with `--json` and returns its report; panics when it fails.
pub fn run(args: &[&str]) -> Value {
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
