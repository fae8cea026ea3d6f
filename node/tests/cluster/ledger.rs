//! The bookkeeping of the cluster tests, kept apart from any socket so that it is unit-tested on
//! its own: what a reader learned about a room ([`RoomLog`]), what the senders were told
//! ([`Acked`]), and the checks over both.
//!
//! The guarantees checked (docs/protocol.md, and the cluster spec on top of it):
//! * a room's seqs are 1, 2, 3, ... with no gap and no repeat, and one seq is one message forever
//!   (an owner change, a partition or a retry never gives a seq to a second message);
//! * every acknowledged send is stored exactly once, at the seq its ack gave;
//! * a session never pushes the same seq twice, and pushes a room's messages in seq order;
//!   a reader that reconnects never gets again, as a push, a seq it already got as a push;
//! * one sender's acks in one room have increasing seqs (it sends one message at a time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use serde_json::Value;

/// A stored message, as far as the checks care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub seq: u64,
    pub id: String,
    pub client_msg_id: Option<String>,
    pub text: String,
}

impl Msg {
    /// From a protocol message (`newMessage` data, a `resume` or `joinRoom` entry, an ack).
    pub fn from_json(v: &Value) -> Result<Msg, String> {
        Ok(Msg {
            seq: v["seq"]
                .as_u64()
                .filter(|&s| s > 0)
                .ok_or_else(|| format!("message without a positive seq: {v}"))?,
            id: v["id"]
                .as_str()
                .ok_or_else(|| format!("message without an id: {v}"))?
                .to_string(),
            client_msg_id: v["clientMsgId"].as_str().map(str::to_string),
            text: v["text"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// One acknowledged `sendMessage`.
#[derive(Debug, Clone)]
pub struct Acked {
    pub sender: String,
    pub room: String,
    pub seq: u64,
    pub client_msg_id: String,
    pub text: String,
    /// When the ack arrived.
    pub at: Instant,
    /// How many times it was sent (1 = no retry).
    pub attempts: u32,
}

/// How a reader learned of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Push,
    /// The join's history or a `resume` page.
    Fetch,
}

/// Everything one reader learned about one room, and what was wrong with it.
#[derive(Debug, Default, Clone)]
pub struct RoomLog {
    /// Every message seen, by seq.
    pub known: BTreeMap<u64, Msg>,
    /// Seqs received as `newMessage` pushes, over every session of the reader.
    pushed: HashSet<u64>,
    /// The session and seq of the last push.
    last_push: Option<(u64, u64)>,
    pub pushes: u64,
    pub fetched: u64,
    pub violations: Vec<String>,
}

impl RoomLog {
    /// A `newMessage` push received on the reader's session number `session`.
    pub fn push(&mut self, session: u64, m: Msg) {
        self.pushes += 1;
        if !self.pushed.insert(m.seq) {
            self.violations.push(format!(
                "seq {} pushed twice (second time on session {session})",
                m.seq
            ));
        }
        if let Some((s, last)) = self.last_push {
            if s == session && m.seq <= last {
                self.violations.push(format!(
                    "push of seq {} after seq {last} on session {session}: out of seq order",
                    m.seq
                ));
            }
        }
        self.last_push = Some((session, m.seq));
        self.learn(m, Via::Push);
    }

    /// A message from a join's history or a `resume` page.
    pub fn fetched(&mut self, m: Msg) {
        self.fetched += 1;
        self.learn(m, Via::Fetch);
    }

    fn learn(&mut self, m: Msg, via: Via) {
        match self.known.get(&m.seq) {
            Some(old) if *old != m => self.violations.push(format!(
                "seq {} is two different messages: {old:?} and then ({via:?}) {m:?}",
                m.seq
            )),
            Some(_) => {}
            None => {
                self.known.insert(m.seq, m);
            }
        }
    }

    /// The highest n such that every seq of 1..=n is known (what `resume` asks after).
    pub fn contiguous(&self) -> u64 {
        let mut n = 0;
        for &seq in self.known.keys() {
            if seq != n + 1 {
                break;
            }
            n = seq;
        }
        n
    }

    pub fn max_seq(&self) -> u64 {
        self.known.keys().next_back().copied().unwrap_or(0)
    }

    /// Whether the message `client_msg_id` was received as a push.
    pub fn pushed_client_msg(&self, client_msg_id: &str) -> bool {
        self.known.values().any(|m| {
            m.client_msg_id.as_deref() == Some(client_msg_id) && self.pushed.contains(&m.seq)
        })
    }
}

/// The violations of one reader's log of `room` against the acks of sends into that room:
/// everything recorded while reading, gaps, acked messages missing or at another seq, and
/// messages seen at more than one seq.
pub fn check_room(who: &str, room: &str, log: &RoomLog, acked: &[&Acked]) -> Vec<String> {
    let mut out: Vec<String> = log
        .violations
        .iter()
        .map(|v| format!("{who} {room}: {v}"))
        .collect();
    let (contiguous, max) = (log.contiguous(), log.max_seq());
    if contiguous != max {
        let missing: Vec<u64> = (1..=max)
            .filter(|s| !log.known.contains_key(s))
            .take(20)
            .collect();
        out.push(format!(
            "{who} {room}: gap: knows up to seq {max} but not {missing:?} (first 20)"
        ));
    }
    for a in acked {
        match log.known.get(&a.seq) {
            None => out.push(format!(
                "{who} {room}: acked {} (seq {}) never seen",
                a.client_msg_id, a.seq
            )),
            Some(m)
                if m.client_msg_id.as_deref() != Some(a.client_msg_id.as_str())
                    || m.text != a.text =>
            {
                out.push(format!(
                    "{who} {room}: seq {} was acked as {} ({:?}) but is {m:?}",
                    a.seq, a.client_msg_id, a.text
                ))
            }
            Some(_) => {}
        }
    }
    out.extend(
        duplicates(log.known.values())
            .into_iter()
            .map(|d| format!("{who} {room}: {d}")),
    );
    out
}

/// Client ids found at more than one seq.
fn duplicates<'a>(msgs: impl Iterator<Item = &'a Msg>) -> Vec<String> {
    let mut at: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for m in msgs {
        if let Some(c) = m.client_msg_id.as_deref() {
            at.entry(c).or_default().push(m.seq);
        }
    }
    at.into_iter()
        .filter(|(_, seqs)| seqs.len() > 1)
        .map(|(c, seqs)| format!("{c} stored more than once, at seqs {seqs:?}"))
        .collect()
}

/// The violations among the acks themselves: one seq acked for two messages of a room (seq
/// reuse), one message acked at two seqs (a duplicate), and a sender's acks in one room not
/// increasing.
pub fn check_acks(acked: &[Acked]) -> Vec<String> {
    let mut out = Vec::new();
    let mut by_seq: HashMap<(&str, u64), &str> = HashMap::new();
    let mut by_id: HashMap<(&str, &str), u64> = HashMap::new();
    let mut last: HashMap<(&str, &str), u64> = HashMap::new();
    for a in acked {
        let room = a.room.as_str();
        match by_seq.insert((room, a.seq), &a.client_msg_id) {
            Some(other) if other != a.client_msg_id => out.push(format!(
                "{room}: seq {} acked for both {other} and {}",
                a.seq, a.client_msg_id
            )),
            _ => {}
        }
        match by_id.insert((room, &a.client_msg_id), a.seq) {
            Some(s) if s != a.seq => out.push(format!(
                "{room}: {} acked at seq {s} and at seq {}",
                a.client_msg_id, a.seq
            )),
            _ => {}
        }
        if let Some(prev) = last.insert((a.sender.as_str(), room), a.seq) {
            if a.seq <= prev {
                out.push(format!(
                    "{room}: {} acked {} at seq {} after an ack at seq {prev}",
                    a.sender, a.client_msg_id, a.seq
                ));
            }
        }
    }
    out
}

/// The violations of a room's full history (every `resume` page from seq 0, in order): its seqs
/// must be exactly 1..=N, every client id at most once, every acked message at its acked seq.
pub fn check_history(room: &str, history: &[Msg], acked: &[&Acked]) -> Vec<String> {
    let mut out = Vec::new();
    let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
    let n = seqs.len() as u64;
    if seqs != (1..=n).collect::<Vec<_>>() {
        let mut seen = HashSet::new();
        let repeated: Vec<u64> = seqs.iter().copied().filter(|s| !seen.insert(*s)).collect();
        let max = seqs.iter().copied().max().unwrap_or(0);
        let missing: Vec<u64> = (1..=max).filter(|s| !seen.contains(s)).take(20).collect();
        let unordered = seqs.windows(2).filter(|w| w[0] >= w[1]).count();
        out.push(format!(
            "{room}: history of {n} messages is not seqs 1..={n}: repeated {repeated:?}, \
             missing {missing:?} (first 20), {unordered} out of order"
        ));
    }
    let mut ids = HashSet::new();
    for m in history {
        if !ids.insert(m.id.as_str()) {
            out.push(format!("{room}: message id {} stored twice", m.id));
        }
    }
    out.extend(
        duplicates(history.iter())
            .into_iter()
            .map(|d| format!("{room}: {d}")),
    );
    let by_id: HashMap<&str, &Msg> = history
        .iter()
        .filter_map(|m| m.client_msg_id.as_deref().map(|c| (c, m)))
        .collect();
    for a in acked {
        match by_id.get(a.client_msg_id.as_str()) {
            None => out.push(format!(
                "{room}: acked {} (seq {}) is not in the history",
                a.client_msg_id, a.seq
            )),
            Some(m) if m.seq != a.seq => out.push(format!(
                "{room}: {} was acked at seq {} but is stored at seq {}",
                a.client_msg_id, a.seq, m.seq
            )),
            Some(m) if m.text != a.text => out.push(format!(
                "{room}: {} is stored with text {:?}, its ack said {:?}",
                a.client_msg_id, m.text, a.text
            )),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, c: &str) -> Msg {
        Msg {
            seq,
            id: format!("r:{seq}:{c}"),
            client_msg_id: Some(c.to_string()),
            text: format!("text of {c}"),
        }
    }

    fn ack(sender: &str, seq: u64, c: &str) -> Acked {
        Acked {
            sender: sender.to_string(),
            room: "r".to_string(),
            seq,
            client_msg_id: c.to_string(),
            text: format!("text of {c}"),
            at: Instant::now(),
            attempts: 1,
        }
    }

    fn refs(a: &[Acked]) -> Vec<&Acked> {
        a.iter().collect()
    }

    #[test]
    fn msg_from_protocol_json() {
        let v = serde_json::json!({"id": "x", "roomId": "r", "seq": 3, "userId": "u",
            "text": "hi", "clientMsgId": "c3", "timestamp": 1});
        assert_eq!(
            Msg::from_json(&v).unwrap(),
            Msg {
                seq: 3,
                id: "x".into(),
                client_msg_id: Some("c3".into()),
                text: "hi".into()
            }
        );
        assert!(Msg::from_json(&serde_json::json!({"id": "x", "seq": 0})).is_err());
        assert!(Msg::from_json(&serde_json::json!({"seq": 1})).is_err());
    }

    #[test]
    fn pushes_in_order_with_every_ack_pass() {
        let mut log = RoomLog::default();
        for i in 1..=5 {
            log.push(1, msg(i, &format!("c{i}")));
        }
        let acked: Vec<Acked> = (1..=5).map(|i| ack("s", i, &format!("c{i}"))).collect();
        assert_eq!(
            check_room("rd", "r", &log, &refs(&acked)),
            Vec::<String>::new()
        );
        assert_eq!(check_acks(&acked), Vec::<String>::new());
        assert_eq!((log.contiguous(), log.max_seq(), log.pushes), (5, 5, 5));
        assert!(log.pushed_client_msg("c3"));
        assert!(!log.pushed_client_msg("c9"));
    }

    #[test]
    fn a_gap_filled_by_resume_passes_and_counts_as_fetched() {
        let mut log = RoomLog::default();
        log.push(1, msg(1, "c1"));
        log.push(1, msg(2, "c2"));
        // Session 1 dies; 3 and 4 are missed; session 2 gets 5 by push, 3..=5 by resume.
        log.push(2, msg(5, "c5"));
        assert_eq!(log.contiguous(), 2);
        assert_eq!(log.max_seq(), 5);
        for i in 3..=5 {
            log.fetched(msg(i, &format!("c{i}")));
        }
        assert_eq!(log.contiguous(), 5);
        assert_eq!((log.pushes, log.fetched), (3, 3));
        let acked: Vec<Acked> = (1..=5).map(|i| ack("s", i, &format!("c{i}"))).collect();
        assert_eq!(
            check_room("rd", "r", &log, &refs(&acked)),
            Vec::<String>::new()
        );
        assert!(!log.pushed_client_msg("c3"), "c3 was fetched, not pushed");
    }

    #[test]
    fn a_duplicate_push_is_caught_in_one_session_and_across_sessions() {
        let mut log = RoomLog::default();
        log.push(1, msg(1, "c1"));
        log.push(1, msg(1, "c1"));
        assert_eq!(log.violations.len(), 2, "{:?}", log.violations); // twice + order
        let mut log = RoomLog::default();
        log.push(1, msg(1, "c1"));
        log.push(2, msg(1, "c1"));
        assert_eq!(log.violations.len(), 1, "{:?}", log.violations);
        assert!(log.violations[0].contains("pushed twice"));
        let found = check_room("rd", "r", &log, &[]);
        assert!(
            found[0].starts_with("rd r: seq 1 pushed twice"),
            "{found:?}"
        );
    }

    #[test]
    fn an_out_of_order_push_is_caught() {
        let mut log = RoomLog::default();
        log.push(1, msg(2, "c2"));
        log.push(1, msg(1, "c1"));
        assert_eq!(log.violations.len(), 1);
        assert!(log.violations[0].contains("out of seq order"));
        // A new session may start anywhere above what was pushed.
        let mut log = RoomLog::default();
        log.push(1, msg(2, "c2"));
        log.push(2, msg(3, "c3"));
        assert!(log.violations.is_empty());
    }

    #[test]
    fn a_seq_given_to_two_messages_is_caught() {
        let mut log = RoomLog::default();
        log.push(1, msg(1, "c1"));
        log.fetched(msg(1, "other"));
        assert_eq!(log.violations.len(), 1);
        assert!(log.violations[0].contains("two different messages"));
        // The same message fetched again is fine.
        let mut log = RoomLog::default();
        log.push(1, msg(1, "c1"));
        log.fetched(msg(1, "c1"));
        assert!(log.violations.is_empty());
    }

    #[test]
    fn gaps_missing_and_misplaced_acks_and_duplicates_are_reported() {
        let mut log = RoomLog::default();
        log.fetched(msg(1, "c1"));
        log.fetched(msg(3, "c3"));
        log.fetched(msg(4, "c1"));
        let acked = vec![ack("s", 1, "c1"), ack("s", 2, "c2"), ack("s", 3, "cX")];
        let found = check_room("rd", "r", &log, &refs(&acked));
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].contains("gap") && found[0].contains("[2]"));
        assert!(found[1].contains("c2 (seq 2) never seen"));
        assert!(found[2].contains("seq 3 was acked as cX"));
        assert!(found[3].contains("c1 stored more than once, at seqs [1, 4]"));
    }

    #[test]
    fn a_reader_seeing_other_text_at_an_acked_seq_is_reported() {
        let mut log = RoomLog::default();
        let mut m = msg(1, "c1");
        m.text = "not what was sent".into();
        log.push(1, m);
        let found = check_room("rd", "r", &log, &refs(&[ack("s", 1, "c1")]));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("seq 1 was acked as c1"), "{found:#?}");
    }

    #[test]
    fn contradicting_acks_are_reported() {
        let acked = vec![
            ack("s1", 1, "a"),
            ack("s2", 1, "b"),  // seq reuse
            ack("s1", 2, "a"),  // one message at two seqs (and s1 went 1 -> 2: fine)
            ack("s2", 1, "b2"), // s2 went back to seq 1, and seq 1 reused again
        ];
        let found = check_acks(&acked);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].contains("seq 1 acked for both a and b"));
        assert!(found[1].contains("a acked at seq 1 and at seq 2"));
        assert!(found[2].contains("seq 1 acked for both b and b2"));
        assert!(found[3].contains("s2 acked b2 at seq 1 after an ack at seq 1"));
        // Two senders interleaving in one room are fine.
        assert!(check_acks(&[ack("s1", 1, "a"), ack("s2", 2, "b"), ack("s1", 3, "c")]).is_empty());
    }

    #[test]
    fn history_checks() {
        let good: Vec<Msg> = (1..=4).map(|i| msg(i, &format!("c{i}"))).collect();
        let acked: Vec<Acked> = (1..=4).map(|i| ack("s", i, &format!("c{i}"))).collect();
        assert!(check_history("r", &good, &refs(&acked)).is_empty());
        // An unacknowledged message in the history is fine (its ack may have been lost).
        let mut more = good.clone();
        more.push(msg(5, "unacked"));
        assert!(check_history("r", &more, &refs(&acked)).is_empty());

        let gap = vec![msg(1, "c1"), msg(3, "c3")];
        let found = check_history("r", &gap, &refs(&acked[..1]));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].contains("missing [2]"), "{found:#?}");

        let repeated = vec![msg(1, "c1"), msg(2, "c2"), msg(2, "c2b")];
        let found = check_history("r", &repeated, &[]);
        assert!(found[0].contains("repeated [2]"), "{found:#?}");

        let twice = vec![msg(1, "c1"), msg(2, "c1")];
        let found = check_history("r", &twice, &refs(&acked[..1]));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("c1 stored more than once"));
        assert!(found[1].contains("c1 was acked at seq 1 but is stored at seq 2"));

        let mut other_text = good.clone();
        other_text[1].text = "changed".into();
        let found = check_history("r", &other_text, &refs(&acked));
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].contains("c2 is stored with text \"changed\""),
            "{found:#?}"
        );

        let found = check_history("r", &good[..2], &refs(&acked));
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("acked c3 (seq 3) is not in the history"));
    }
}
