//! The bookkeeping of the `failover` scenario, apart from any socket so that it is unit-tested
//! on its own: what a reader learned about a room ([`RoomLog`]), what the senders were told
//! ([`Acked`]), and the checks over both ([`verify`]).
//!
//! What is counted (docs/consistency.md, guarantees 1–4):
//! * **lost**: an acknowledged message that a reader (a member of its room from the start to
//!   the end, rejoining after every reconnect) does not know after its final `resume`;
//! * **duplicated push**: one session received the same seq of a room twice as `newMessage`;
//! * **out-of-order push**: one session received a seq below one it had already received;
//! * **seq reused**: one seq of a room carried two different messages (two acks, or two
//!   readers' views, or an ack and a reader's view disagree);
//! * **stored twice**: one `clientMsgId` acknowledged or seen at two seqs (a resend that was
//!   stored again instead of being answered with the original).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use serde::Serialize;

/// One acknowledged `sendMessage`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub sender: usize,
    pub room: String,
    pub seq: u64,
    pub client_msg_id: String,
    /// How many times it was sent (1 = no retry).
    pub attempts: u32,
    /// When the ack arrived.
    pub at: Instant,
}

/// Everything one reader learned about one room.
#[derive(Debug, Default, Clone)]
pub struct RoomLog {
    /// seq → clientMsgId (None for a message without one) of every message seen.
    pub known: BTreeMap<u64, Option<String>>,
    /// Every seq of 1..=contiguous is known.
    contiguous: u64,
    /// The session of the pushes below, its pushed seqs and its last pushed seq.
    session: u64,
    session_pushed: HashSet<u64>,
    last_push: u64,
    /// Seqs received as pushes over every session.
    ever_pushed: HashSet<u64>,
    pub pushes: u64,
    pub fetched: u64,
    pub duplicate_pushes: u64,
    pub out_of_order_pushes: u64,
    /// A seq pushed again on a later session (after a reconnect); allowed, counted.
    pub repushed: u64,
    /// Seqs that arrived as two different messages.
    pub conflicts: BTreeSet<u64>,
    pub samples: Vec<String>,
}

const SAMPLES: usize = 10;

impl RoomLog {
    /// A `newMessage` push of `seq` received on the reader's session number `session`.
    pub fn push(&mut self, session: u64, seq: u64, cmid: Option<String>) {
        self.pushes += 1;
        if session != self.session {
            self.session = session;
            self.session_pushed.clear();
            self.last_push = 0;
        }
        if !self.session_pushed.insert(seq) {
            self.duplicate_pushes += 1;
            self.sample(format!("seq {seq} pushed twice on session {session}"));
        } else if seq < self.last_push {
            self.out_of_order_pushes += 1;
            self.sample(format!(
                "seq {seq} pushed after seq {} on session {session}",
                self.last_push
            ));
        } else if !self.ever_pushed.insert(seq) {
            self.repushed += 1;
        }
        self.ever_pushed.insert(seq);
        self.last_push = self.last_push.max(seq);
        self.learn(seq, cmid);
    }

    /// A message from a join's history or a `resume` page.
    pub fn fetched(&mut self, seq: u64, cmid: Option<String>) {
        self.fetched += 1;
        self.learn(seq, cmid);
    }

    fn learn(&mut self, seq: u64, cmid: Option<String>) {
        match self.known.get(&seq) {
            Some(old) if *old != cmid => {
                if self.conflicts.insert(seq) {
                    self.sample(format!("seq {seq} is both {old:?} and {cmid:?}"));
                }
            }
            Some(_) => {}
            None => {
                self.known.insert(seq, cmid);
                while self.known.contains_key(&(self.contiguous + 1)) {
                    self.contiguous += 1;
                }
            }
        }
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < SAMPLES {
            self.samples.push(s);
        }
    }

    /// The highest n such that every seq of 1..=n is known (what `resume` asks after).
    pub fn contiguous(&self) -> u64 {
        self.contiguous
    }

    pub fn max_seq(&self) -> u64 {
        self.known.keys().next_back().copied().unwrap_or(0)
    }
}

/// What one reader brings to the final check.
pub struct ReaderView<'a> {
    pub name: &'a str,
    pub rooms: &'a BTreeMap<String, RoomLog>,
    /// It gave up at some point: it was not a member throughout, so it is not checked for
    /// lost messages.
    pub failed: bool,
}

/// The figures of the final check.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged messages missing at one reader or more.
    pub lost: u64,
    /// (reader, message) pairs missing.
    pub lost_copies: u64,
    pub duplicate_pushes: u64,
    pub out_of_order_pushes: u64,
    /// (room, seq) pairs that carried two different messages.
    pub seq_reused: u64,
    /// (room, clientMsgId) pairs stored at two seqs.
    pub stored_twice: u64,
    /// Seqs missing below a reader's highest known seq after its final resume.
    pub gaps: u64,
    /// Seqs pushed again on a later session of the same reader (allowed).
    pub repushed_after_reconnect: u64,
    /// Up to 20 examples of what went wrong.
    pub samples: Vec<String>,
}

impl Verdict {
    /// Violations of the guarantees (`gaps` and `repushed_after_reconnect` excluded).
    pub fn violations(&self) -> u64 {
        self.lost
            + self.duplicate_pushes
            + self.out_of_order_pushes
            + self.seq_reused
            + self.stored_twice
    }

    fn sample(&mut self, s: String) {
        if self.samples.len() < 20 {
            self.samples.push(s);
        }
    }
}

/// Acknowledged messages of `acked` that `log` does not know (or knows as another message).
pub fn missing(log: &RoomLog, acked: &[&Acked]) -> u64 {
    acked
        .iter()
        .filter(|a| {
            log.known.get(&a.seq).and_then(|c| c.as_deref()) != Some(a.client_msg_id.as_str())
        })
        .count() as u64
}

/// The final check over every ack and every reader's logs.
pub fn verify(acked: &[Acked], readers: &[ReaderView<'_>]) -> Verdict {
    let mut v = Verdict::default();
    let mut reused: BTreeSet<(&str, u64)> = BTreeSet::new();
    let mut twice: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut by_seq: HashMap<(&str, u64), &str> = HashMap::new();
    let mut by_id: HashMap<(&str, &str), u64> = HashMap::new();
    for a in acked {
        let (room, id) = (a.room.as_str(), a.client_msg_id.as_str());
        if let Some(other) = by_seq.insert((room, a.seq), id) {
            if other != id && reused.insert((room, a.seq)) {
                v.sample(format!("{room}: seq {} acked for {other} and {id}", a.seq));
            }
        }
        if let Some(s) = by_id.insert((room, id), a.seq) {
            if s != a.seq && twice.insert((room, id)) {
                v.sample(format!("{room}: {id} acked at seqs {s} and {}", a.seq));
            }
        }
    }
    let mut lost: BTreeSet<(&str, u64)> = BTreeSet::new();
    for r in readers {
        for (room, log) in r.rooms {
            v.duplicate_pushes += log.duplicate_pushes;
            v.out_of_order_pushes += log.out_of_order_pushes;
            v.repushed_after_reconnect += log.repushed;
            for s in &log.samples {
                v.sample(format!("{} {room}: {s}", r.name));
            }
            for &seq in &log.conflicts {
                reused.insert((room.as_str(), seq));
            }
            let mut at: HashMap<&str, u64> = HashMap::new();
            for (&seq, id) in &log.known {
                let Some(id) = id.as_deref() else { continue };
                if let Some(s) = at.insert(id, seq) {
                    if twice.insert((room.as_str(), id)) {
                        v.sample(format!("{} {room}: {id} at seqs {s} and {seq}", r.name));
                    }
                }
                if let Some(&acked_id) = by_seq.get(&(room.as_str(), seq)) {
                    if acked_id != id && reused.insert((room.as_str(), seq)) {
                        v.sample(format!(
                            "{} {room}: seq {seq} acked as {acked_id}, seen as {id}",
                            r.name
                        ));
                    }
                }
            }
            v.gaps += log.max_seq() - log.known.len() as u64;
        }
        if r.failed {
            continue;
        }
        for a in acked {
            let Some(log) = r.rooms.get(&a.room) else {
                continue;
            };
            if !log.known.contains_key(&a.seq) {
                v.lost_copies += 1;
                if lost.insert((a.room.as_str(), a.seq)) {
                    v.sample(format!(
                        "{} {}: acked {} (seq {}) never seen",
                        r.name, a.room, a.client_msg_id, a.seq
                    ));
                }
            }
        }
    }
    v.lost = lost.len() as u64;
    v.seq_reused = reused.len() as u64;
    v.stored_twice = twice.len() as u64;
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(sender: usize, room: &str, seq: u64, id: &str) -> Acked {
        Acked {
            sender,
            room: room.into(),
            seq,
            client_msg_id: id.into(),
            attempts: 1,
            at: Instant::now(),
        }
    }

    fn log_of(msgs: &[(u64, &str)]) -> RoomLog {
        let mut l = RoomLog::default();
        for &(seq, id) in msgs {
            l.fetched(seq, Some(id.into()));
        }
        l
    }

    fn view<'a>(name: &'a str, rooms: &'a BTreeMap<String, RoomLog>) -> ReaderView<'a> {
        ReaderView {
            name,
            rooms,
            failed: false,
        }
    }

    #[test]
    fn pushes_are_checked_per_session() {
        let mut l = RoomLog::default();
        l.push(1, 1, Some("a".into()));
        l.push(1, 2, Some("b".into()));
        l.push(1, 2, Some("b".into())); // twice on one session
        l.push(1, 1, Some("a".into())); // twice, not counted again as out of order
        assert_eq!((l.duplicate_pushes, l.out_of_order_pushes), (2, 0));
        l.push(1, 4, Some("d".into()));
        l.push(1, 3, Some("c".into())); // below 4: out of order
        assert_eq!(l.out_of_order_pushes, 1);
        // A new session may push an old seq again (counted, not a violation).
        l.push(2, 4, Some("d".into()));
        assert_eq!((l.duplicate_pushes, l.repushed), (2, 1));
        assert_eq!((l.contiguous(), l.max_seq()), (4, 4));
        assert_eq!(l.pushes, 7);
    }

    #[test]
    fn contiguous_follows_fetches_in_any_order() {
        let mut l = log_of(&[(2, "b"), (3, "c")]);
        assert_eq!(l.contiguous(), 0);
        l.fetched(1, Some("a".into()));
        assert_eq!(l.contiguous(), 3);
        l.fetched(5, Some("e".into()));
        assert_eq!((l.contiguous(), l.max_seq()), (3, 5));
    }

    #[test]
    fn a_clean_run_has_no_violations() {
        let acked = vec![
            ack(0, "r", 1, "a"),
            ack(1, "r", 2, "b"),
            ack(0, "r", 3, "c"),
        ];
        let rooms: BTreeMap<String, RoomLog> =
            [("r".to_string(), log_of(&[(1, "a"), (2, "b"), (3, "c")]))].into();
        let v = verify(&acked, &[view("x", &rooms), view("y", &rooms)]);
        assert_eq!(v, Verdict::default());
        assert_eq!(v.violations(), 0);
    }

    #[test]
    fn lost_reused_and_stored_twice_are_found() {
        let acked = vec![
            ack(0, "r", 1, "a"),
            ack(1, "r", 2, "b"),
            ack(0, "r", 2, "c"), // seq 2 acked twice: reused
            ack(0, "r", 4, "a"), // a at seqs 1 and 4: stored twice
        ];
        let rooms: BTreeMap<String, RoomLog> =
            [("r".to_string(), log_of(&[(1, "a"), (2, "b")]))].into();
        let failed_rooms: BTreeMap<String, RoomLog> = [("r".to_string(), log_of(&[]))].into();
        let readers = [
            view("x", &rooms),
            ReaderView {
                name: "gave-up",
                rooms: &failed_rooms,
                failed: true,
            },
        ];
        let v = verify(&acked, &readers);
        assert_eq!(v.lost, 1, "{v:?}"); // seq 4 at x; the failed reader is not counted
        assert_eq!(v.lost_copies, 1);
        assert_eq!(v.seq_reused, 1);
        assert_eq!(v.stored_twice, 1);
        assert_eq!(v.violations(), 3);
        assert!(!v.samples.is_empty());
    }

    #[test]
    fn a_reader_seeing_another_message_at_an_acked_seq_is_reuse() {
        let acked = vec![ack(0, "r", 1, "a")];
        let mut l = log_of(&[(1, "z"), (3, "c")]);
        l.push(1, 1, Some("a".into())); // the same seq as two messages within one log
        let rooms: BTreeMap<String, RoomLog> = [("r".to_string(), l)].into();
        let v = verify(&acked, &[view("x", &rooms)]);
        assert_eq!((v.seq_reused, v.lost, v.gaps), (1, 0, 1), "{v:?}");
        assert_eq!(missing(&rooms["r"], &acked.iter().collect::<Vec<_>>()), 1);
    }
}
