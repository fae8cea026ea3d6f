//! One `chat` member connection: the receive path (nothing allocated per frame: frames
//! are parsed in place, classified by their first bytes, and the send timestamp is found
//! in the raw text) and, for senders, the open-loop send schedule.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;

use crate::chat_shard::{Ctx, PlanRx, Tally};
use crate::net::Ws;
use crate::pacing::Schedule;
use crate::proto::{self, Incoming};
use crate::series::TimedBatch;
use crate::stats::{self, Batch};
use crate::sys::{instant_at, mono_ns, mono_us};
use crate::ws::Frame;

/// Receive-side state of one connection.
struct Recv {
    t: Tally,
    e2e: Batch,
    ack: Batch,
    series: TimedBatch,
    /// Measured window in µs; (MAX, MAX) until the plan arrives.
    win: (u64, u64),
}

impl Recv {
    #[inline]
    fn in_win(&self, ts: u64) -> bool {
        ts >= self.win.0 && ts < self.win.1
    }

    fn on_text(&mut self, ctx: &Ctx, frame: &[u8]) {
        let p = ctx.protocol;
        let now = mono_us();
        let (kind, slow) = p.classify(frame);
        self.t.slow_frames += u64::from(slow);
        match kind {
            Incoming::NewMessage => {
                if let Some(ts) = proto::find_timestamp(frame) {
                    self.t.delivered_all += 1;
                    if self.in_win(ts) {
                        self.t.delivered += 1;
                        self.e2e.record(now.saturating_sub(ts));
                        self.series.record(ts, now.saturating_sub(ts));
                        ctx.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Incoming::Ack { error: None, .. } => {
                if let Some(ts) = proto::find_timestamp(frame) {
                    if self.in_win(ts) {
                        self.t.acked += 1;
                        self.ack.record(now.saturating_sub(ts));
                    }
                }
            }
            Incoming::Ack {
                error: Some(code), ..
            } => stats::bump(&mut self.t.ack_errors, &code),
            Incoming::Event(name) if name == "error" => {
                let code = proto::error_code(frame).unwrap_or("unknown");
                stats::bump(&mut self.t.push_errors, code);
            }
            Incoming::Event(_) => {}
            Incoming::Unknown => self.t.unknown_frames += 1,
        }
    }
}

/// One member connection: receives everything from the moment it joined, and once the
/// plan arrives sends on its schedule if it is one of its room's senders. Returns its
/// counters when stopped.
pub async fn conn_task(
    mut ws: Ws,
    room: String,
    room_index: u64,
    member: u64,
    ctx: Arc<Ctx>,
    mut plan_rx: PlanRx,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut rx = Recv {
        t: Tally::default(),
        e2e: Batch::new(ctx.e2e.clone()),
        ack: Batch::new(ctx.ack.clone()),
        series: TimedBatch::new(ctx.series.clone()),
        win: (u64::MAX, u64::MAX),
    };
    let mut lag = Batch::new(ctx.lag.clone());
    let (mut send_end, mut fanout, mut planned) = (0u64, 0u64, false);
    let mut sched: Option<Schedule> = None;
    let mut text = String::with_capacity(ctx.size + 32);
    let mut frame = String::with_capacity(ctx.size + room.len() + 96);
    let (mut n, mut id) = (0u64, 2u64);
    let mut next_due = u64::MAX;
    let mut sending = false;
    let sleep = tokio::time::sleep(std::time::Duration::from_secs(3600));
    tokio::pin!(sleep);
    let stopped = stopped(&mut stop);
    tokio::pin!(stopped);
    let mut closed = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut stopped => break,
            _ = plan_rx.changed(), if !planned => {
                planned = true;
                let Some(plan) = plan_rx.borrow_and_update().clone() else { continue };
                rx.win = plan.win;
                rx.series.origin_us = plan.win.0;
                send_end = plan.send_end_ns;
                fanout = plan.fanout[(room_index - plan.first_room) as usize];
                if member < ctx.senders {
                    let g = room_index * ctx.senders + member;
                    let s = Schedule::new(plan.t0, ctx.rate, ctx.total_senders, g);
                    next_due = s.due_ns(0);
                    sending = next_due < send_end;
                    sched = Some(s);
                    sleep.as_mut().reset(instant_at(next_due.min(send_end)));
                }
            }
            _ = &mut sleep, if sending => {
                let sched = sched.expect("only senders send");
                loop {
                    let now = mono_ns();
                    if next_due > now {
                        break;
                    }
                    if next_due >= send_end {
                        sending = false;
                        break;
                    }
                    let ts = now / 1_000;
                    proto::write_text(&mut text, ts, ctx.size);
                    ctx.protocol.encode_send(&room, &text, id, &mut frame);
                    if ws.send_text(frame.as_bytes()).await.is_err() {
                        rx.t.send_failures += 1;
                        sending = false;
                        break;
                    }
                    rx.t.sent_all += 1;
                    if rx.in_win(ts) {
                        rx.t.sent += 1;
                        rx.t.expected += fanout;
                        lag.record((now - next_due) / 1_000);
                    }
                    n += 1;
                    id += 1;
                    next_due = sched.due_ns(n);
                }
                if sending {
                    sleep.as_mut().reset(instant_at(next_due));
                }
            }
            r = ws.r.fill() => {
                let reason = match r {
                    Ok(0) => Some("eof".to_string()),
                    Ok(_) => drain(&mut ws, &mut rx, &ctx).await,
                    Err(_) => Some("error".to_string()),
                };
                if let Some(reason) = reason {
                    stats::bump(&mut rx.t.dropped, &reason);
                    closed = true;
                    break;
                }
            }
        }
    }
    if !closed {
        ws.close().await;
    }
    rx.t
}

/// Handles every complete frame in the read buffer; returns why the connection ended,
/// if it did.
async fn drain(ws: &mut Ws, rx: &mut Recv, ctx: &Ctx) -> Option<String> {
    loop {
        match ws.r.next() {
            Ok(None) => return None,
            Ok(Some(Frame::Text(b"2"))) if ws.eio => {
                if ws.w.send_text(b"3").await.is_err() {
                    return Some("error".to_string());
                }
            }
            Ok(Some(Frame::Text(f))) => rx.on_text(ctx, f),
            Ok(Some(Frame::Ping(data))) => {
                if ws.w.pong(data).await.is_err() {
                    return Some("error".to_string());
                }
            }
            Ok(Some(Frame::Close(code))) => return Some(format!("close_{code}")),
            Ok(Some(Frame::Binary(_) | Frame::Pong)) => {}
            Err(_) => return Some("protocol_error".to_string()),
        }
    }
}

/// Resolves once `stop` is (or becomes) true, or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        let now = *stop.borrow_and_update();
        if now || stop.changed().await.is_err() {
            return;
        }
    }
}
