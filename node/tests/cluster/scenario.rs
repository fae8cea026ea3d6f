//! What every scenario does the same way: run alone and within a bound, probe live fan-out,
//! read full histories, and the final checks over readers and senders.

use std::future::Future;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::conn::{error_code, retryable, Conn, RequestError};
use crate::ledger::{check_acks, check_room, Acked, Msg};
use crate::reader::{Reader, ReaderState};
use crate::sender::{acked_in, Sender, SenderConfig, SenderLog};
use crate::store::cql_target;

/// Cluster scenarios run one at a time (several processes each, on a small machine); the unit
/// tests of this target do not take it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs a scenario alone, failing it if it takes longer than `limit` (its cluster is then
/// dropped: processes killed, keyspace dropped). Without a CQL store it does not run (see
/// [`cql_target`]).
pub async fn bounded(test: &str, limit: Duration, body: impl Future<Output = ()>) {
    if cql_target(test).is_none() {
        return;
    }
    let _alone = ONE_AT_A_TIME.lock().await;
    let t0 = Instant::now();
    match tokio::time::timeout(limit, body).await {
        Ok(()) => report!("{test}: finished in {:?}", t0.elapsed()),
        Err(_) => panic!("{test}: not finished within {limit:?} (the bound of the whole test)"),
    }
}

/// Sends one message into `room` from a fresh session of `user` on `node` (retried with the
/// same clientMsgId like any send) and returns its ack.
pub async fn probe(node: &str, user: &str, room: &str) -> Acked {
    let mut cfg = SenderConfig::new(user, &[room.to_string()], vec![node.to_string()]);
    cfg.limit = Some(1);
    let log = Sender::start(cfg).finish(Duration::from_secs(40)).await;
    assert!(
        log.unexpected.is_empty() && log.acked.len() == 1,
        "probe {user} in {room}: {}",
        log.summary()
    );
    log.acked[0].clone()
}

/// Waits until every reader got the probe `p` as a push: fan-out works now, not only catch-up.
pub async fn probe_pushed(readers: &[&Reader], p: &Acked, within: Duration) {
    let t0 = Instant::now();
    for r in readers {
        r.wait_pushed(&p.room, &p.client_msg_id, within).await;
    }
    report!(
        "probe {} in {} pushed to {} readers within {:?} of its ack",
        p.client_msg_id,
        p.room,
        readers.len(),
        t0.elapsed()
    );
}

/// Waits until every reader knows every acknowledged message of its rooms **before** any final
/// `resume`: a push the cluster lost must have been announced by `resync` (which the readers
/// answer) or by the end of the session (after which they rejoin and catch up). A reader left
/// with a silent gap fails here.
pub async fn settled(test: &str, readers: &[&Reader], acked: &[Acked], within: Duration) {
    let t0 = Instant::now();
    for r in readers {
        r.wait_for(
            "gap-free without a final resume (a lost push must come with a resync)",
            within,
            |s| {
                s.rooms.iter().all(|(room, log)| {
                    let last = acked_in(acked, room).iter().map(|a| a.seq).max();
                    log.contiguous() >= last.unwrap_or(0)
                })
            },
        )
        .await;
    }
    report!(
        "{test}: {} readers gap-free up to the last ack after {:?}",
        readers.len(),
        t0.elapsed()
    );
}

/// The end of a scenario under traffic: a probe into each of `rooms` from `node` must reach
/// every reader that is a member as a push ([`probe_pushed`]), every reader must be gap-free
/// before its final resume ([`settled`]), then the readers finish. Returns their states and
/// `acked` with the probes added.
pub async fn wind_down(
    test: &str,
    node: &str,
    rooms: &[String],
    readers: Vec<Reader>,
    mut acked: Vec<Acked>,
    finish_within: Duration,
) -> (Vec<ReaderState>, Vec<Acked>) {
    for room in rooms {
        let p = probe(node, "prober", room).await;
        let members: Vec<&Reader> = readers
            .iter()
            .filter(|r| r.snapshot().rooms.contains_key(room))
            .collect();
        probe_pushed(&members, &p, Duration::from_secs(20)).await;
        acked.push(p);
    }
    let all: Vec<&Reader> = readers.iter().collect();
    settled(test, &all, &acked, Duration::from_secs(20)).await;
    let mut states = Vec::new();
    for r in readers {
        states.push(r.finish(finish_within).await);
    }
    (states, acked)
}

/// Every message of `room`, by `resume` pages from seq 0, on a fresh session on `node`
/// (retrying the server's failures for at most `within`).
pub async fn full_history(node: &str, room: &str, within: Duration) -> Vec<Msg> {
    let deadline = Instant::now() + within;
    'session: loop {
        assert!(
            Instant::now() < deadline,
            "history of {room} on {node}: not read within {within:?}"
        );
        let Ok((conn, _events)) = Conn::open(node, "auditor").await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut out: Vec<Msg> = Vec::new();
        loop {
            let after = out.last().map(|m| m.seq).unwrap_or(0);
            let ack = match conn
                .request(
                    "resume",
                    json!({"roomId": room, "afterSeq": after}),
                    Duration::from_secs(10),
                )
                .await
            {
                Ok(ack) => ack,
                Err(RequestError::Closed | RequestError::Timeout) => continue 'session,
            };
            match error_code(&ack) {
                None => {}
                Some(code) if retryable(&code) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Some(code) => panic!("resume {room} after {after} on {node}: {code}: {ack}"),
            }
            let page = &ack["data"];
            let msgs = page["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("resume {room}: no messages: {ack}"));
            for m in msgs {
                out.push(Msg::from_json(m).unwrap_or_else(|e| panic!("resume {room}: {e}")));
            }
            if page["complete"] == true {
                return out;
            }
            assert!(
                !msgs.is_empty(),
                "resume {room} after {after}: an empty page that is not complete: {ack}"
            );
        }
    }
}

/// The final check of a scenario: the acks agree among themselves, every reader saw every
/// acknowledged message of its rooms exactly once and in order (no gap, no duplicate push, no
/// seq carrying two messages), plus `more` violations found by the scenario. Prints the
/// figures of every reader and sender; panics with every violation.
pub fn verify(
    test: &str,
    readers: &[ReaderState],
    senders: &[SenderLog],
    acked: &[Acked],
    more: Vec<String>,
) {
    for s in senders {
        report!("{test}: sender {}", s.summary());
    }
    for r in readers {
        let rooms: Vec<String> = r
            .rooms
            .iter()
            .map(|(room, l)| {
                format!(
                    "{room}: {} msgs ({} pushed, {} fetched)",
                    l.known.len(),
                    l.pushes,
                    l.fetched
                )
            })
            .collect();
        report!(
            "{test}: reader {}: {} sessions, closes {:?}, {} resyncs, errors {:?}; {}",
            r.user,
            r.sessions,
            r.closes,
            r.resyncs,
            r.errors,
            rooms.join("; ")
        );
    }
    let mut violations = more;
    violations.extend(check_acks(acked));
    for r in readers {
        if let Some(f) = &r.fatal {
            violations.push(format!("reader {} gave up: {f}", r.user));
        }
        for (room, log) in &r.rooms {
            violations.extend(check_room(&r.user, room, log, &acked_in(acked, room)));
        }
    }
    if !violations.is_empty() {
        let n = violations.len();
        violations.truncate(60);
        panic!(
            "{test}: {n} violations (first 60):\n  {}",
            violations.join("\n  ")
        );
    }
    report!(
        "{test}: {} acked messages checked on {} readers: each exactly once, in seq order",
        acked.len(),
        readers.len()
    );
}
