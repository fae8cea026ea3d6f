//! The senders of the `failover` scenario (the readers are in `failover_client`, with the
//! context both share): one user sending into one room, one message at a time at its share of
//! the rate, each with its own `clientMsgId`. A send that fails (error ack, no ack, session
//! ended) is sent again with the same `clientMsgId` (bounded by `retry_for` and
//! `max_attempts`), on a session on the next node if its node went away. Every ack is recorded
//! as an [`Acked`]. Nothing here panics: failures are counted and the final check judges.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::failover_client::Ctx;
use crate::failover_conn::{error_code, retryable, Conn, ReqError};
use crate::failover_ledger::Acked;

/// Sender `index` of `total`: sends into room `index mod rooms`, starting on node
/// `index mod nodes`, until `stop` (the message in flight is finished: acked or abandoned).
pub async fn sender(ctx: Arc<Ctx>, index: usize, total: usize, mut stop: watch::Receiver<bool>) {
    let user = format!("{}-fs{index}", ctx.prefix);
    let Ok(token) = ctx.minter.mint(&user, &user) else {
        ctx.unexpected(format!("{user}: could not mint a token"));
        return;
    };
    let room = ctx.rooms[index % ctx.rooms.len()].clone();
    let mut node = index % ctx.nodes.len();
    let mut session: Option<Conn> = None;
    // Spread the senders' schedules over one interval.
    let mut next_at = Instant::now()
        + ctx
            .send_interval
            .mul_f64(index as f64 / total.max(1) as f64);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_at) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if *stop.borrow() {
            break;
        }
        next_at = (next_at + ctx.send_interval).max(Instant::now());
        n += 1;
        let cmid = format!("{user}-{n}");
        let text = format!("failover {cmid}");
        let data = json!({"roomId": room, "text": text, "clientMsgId": cmid});
        let first = Instant::now();
        let deadline = first + ctx.retry_for;
        let mut attempts = 0u32;
        let mut backoff = Duration::from_millis(50);
        loop {
            if attempts >= ctx.max_attempts || Instant::now() > deadline {
                ctx.abandoned.fetch_add(1, Relaxed);
                ctx.unexpected(format!(
                    "{cmid} in {room}: abandoned after {attempts} attempts"
                ));
                break;
            }
            if session.is_none() {
                session = sender_session(&ctx, &token, &room, &mut node, deadline).await;
                if session.is_none() {
                    continue; // the deadline check above abandons the message
                }
            }
            let conn = session.as_ref().expect("a session");
            attempts += 1;
            ctx.attempts.fetch_add(1, Relaxed);
            let mut pause = backoff;
            match conn
                .request("sendMessage", data.clone(), ctx.request_timeout)
                .await
            {
                Ok(ack) => match error_code(&ack) {
                    None => {
                        let d = &ack["data"];
                        let seq = d["seq"].as_u64().unwrap_or(0);
                        if d["roomId"] != room.as_str()
                            || d["clientMsgId"] != cmid.as_str()
                            || seq == 0
                        {
                            ctx.unexpected(format!("the ack of {cmid} ({room}) is not it: {ack}"));
                        } else {
                            let lat = first.elapsed().as_micros() as u64;
                            ctx.ack_latency
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .saturating_record(lat.max(1));
                            ctx.acks
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(Acked {
                                    sender: index,
                                    room: room.clone(),
                                    seq,
                                    client_msg_id: cmid.clone(),
                                    attempts,
                                    at: Instant::now().into_std(),
                                });
                        }
                        break;
                    }
                    Some(code) => {
                        ctx.count(&format!("sendMessage:{code}"));
                        if code == "not_in_room" {
                            // The session lost its membership: join again on a fresh session.
                            session = None;
                        } else if !retryable(&code) {
                            ctx.unexpected(format!("{cmid} in {room}: not retryable: {ack}"));
                            ctx.abandoned.fetch_add(1, Relaxed);
                            break;
                        } else if code == "rate_limited" {
                            pause = Duration::from_secs(1);
                        }
                    }
                },
                Err(e) => {
                    ctx.count(match e {
                        ReqError::Timeout => "sendMessage:no_answer",
                        ReqError::Closed => "sendMessage:session_closed",
                    });
                    ctx.closed(conn);
                    session = None;
                    node += 1;
                }
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
    if let Some(conn) = session {
        conn.close().await;
    }
}

/// A session on the first node from `node` on that answers, joined to `room`; `None` at
/// `deadline`.
async fn sender_session(
    ctx: &Ctx,
    token: &str,
    room: &str,
    node: &mut usize,
    deadline: Instant,
) -> Option<Conn> {
    let n = ctx.nodes.len();
    'nodes: while Instant::now() < deadline {
        *node %= n;
        let Ok((conn, _pushes)) = ctx.open(*node, token).await else {
            *node += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        ctx.sender_sessions.fetch_add(1, Relaxed);
        loop {
            match conn
                .request("joinRoom", json!({"roomId": room}), ctx.request_timeout)
                .await
            {
                Ok(ack) => match error_code(&ack) {
                    None => return Some(conn),
                    Some(code) => {
                        ctx.count(&format!("joinRoom:{code}"));
                        if !retryable(&code) {
                            ctx.unexpected(format!("join {room}: {ack}"));
                        }
                        if !retryable(&code) || Instant::now() > deadline {
                            *node += 1;
                            continue 'nodes;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                Err(e) => {
                    if e == ReqError::Timeout {
                        ctx.count("joinRoom:no_answer");
                    }
                    ctx.closed(&conn);
                    *node += 1;
                    continue 'nodes;
                }
            }
        }
    }
    None
}
