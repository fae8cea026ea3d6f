//! The node-local hub: which of this node's sessions are subscribed to which room.
//!
//! A room's owner decides *what* is sent and in which order; the hub of each node with members
//! delivers it to that node's sessions. This split is what lets the cluster fan out with one
//! message per node instead of one per member, and it survives a room actor's crash: the
//! restarted room rebuilds its member list from the hub.
//!
//! Delivery takes one read lock per room and per push, never a lock or an await per member:
//! each member costs one `try_push` into its bounded queue. A member whose queue is full is
//! evicted (removed from every room here and told to close as a slow consumer); the room
//! never waits for it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use cluster_proto::{Member, Push, PushError, PushSink, RoomId, SessionId, UserId};

const SHARDS: usize = 16;

#[derive(Clone)]
struct Subscriber {
    user: UserId,
    username: Arc<str>,
    sink: Arc<dyn PushSink>,
}

/// A session known to the hub.
#[derive(Clone)]
struct SessionEntry {
    user: UserId,
    username: Arc<str>,
    sink: Arc<dyn PushSink>,
    rooms: Vec<RoomId>,
}

type RoomSubs = HashMap<SessionId, Subscriber>;

/// The node-local subscription table.
pub struct Hub {
    shards: Vec<RwLock<HashMap<RoomId, RoomSubs>>>,
    sessions: RwLock<HashMap<SessionId, SessionEntry>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: RwLock::new(HashMap::new()),
        }
    }
}

/// A session subscribed to a room on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMember {
    pub session: SessionId,
    pub member: Member,
}

fn local_members(subs: &RoomSubs) -> Vec<LocalMember> {
    subs.iter()
        .map(|(s, sub)| LocalMember {
            session: *s,
            member: Member {
                user_id: sub.user.clone(),
                username: sub.username.to_string(),
            },
        })
        .collect()
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    fn shard(&self, room: &RoomId) -> &RwLock<HashMap<RoomId, RoomSubs>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Registers a connected session and its outbound queue.
    pub fn register(
        &self,
        session: SessionId,
        user: UserId,
        username: &str,
        sink: Arc<dyn PushSink>,
    ) {
        write(&self.sessions).insert(
            session,
            SessionEntry {
                user,
                username: Arc::from(username),
                sink,
                rooms: Vec::new(),
            },
        );
    }

    /// Forgets a session and all its subscriptions; returns the rooms it was in.
    pub fn unregister(&self, session: SessionId) -> Vec<RoomId> {
        let Some(entry) = write(&self.sessions).remove(&session) else {
            return Vec::new();
        };
        for room in &entry.rooms {
            self.remove_sub(room, session);
        }
        entry.rooms
    }

    /// Subscribes a registered session to `room`. False if the session is unknown.
    pub fn subscribe(&self, room: &RoomId, session: SessionId) -> bool {
        let sub = {
            let mut sessions = write(&self.sessions);
            let Some(entry) = sessions.get_mut(&session) else {
                return false;
            };
            if !entry.rooms.contains(room) {
                entry.rooms.push(room.clone());
            }
            Subscriber {
                user: entry.user.clone(),
                username: entry.username.clone(),
                sink: entry.sink.clone(),
            }
        };
        write(self.shard(room))
            .entry(room.clone())
            .or_default()
            .insert(session, sub);
        true
    }

    /// Removes one subscription.
    pub fn unsubscribe(&self, room: &RoomId, session: SessionId) {
        if let Some(entry) = write(&self.sessions).get_mut(&session) {
            entry.rooms.retain(|r| r != room);
        }
        self.remove_sub(room, session);
    }

    fn remove_sub(&self, room: &RoomId, session: SessionId) {
        let mut shard = write(self.shard(room));
        if let Some(subs) = shard.get_mut(room) {
            subs.remove(&session);
            if subs.is_empty() {
                shard.remove(room);
            }
        }
    }

    /// Sessions of this node subscribed to `room`.
    pub fn members_of(&self, room: &RoomId) -> Vec<LocalMember> {
        read(self.shard(room))
            .get(room)
            .map(local_members)
            .unwrap_or_default()
    }

    /// Number of sessions registered on this node.
    pub fn session_count(&self) -> usize {
        read(&self.sessions).len()
    }

    /// Pushes to every session subscribed to `room` except `except`; returns how many got it.
    /// Sessions whose queue is full are evicted.
    pub fn deliver(&self, room: &RoomId, push: &Arc<Push>, except: Option<SessionId>) -> usize {
        let mut delivered = 0;
        let mut slow: Vec<SessionId> = Vec::new();
        {
            let shard = read(self.shard(room));
            let Some(subs) = shard.get(room) else {
                return 0;
            };
            for (session, sub) in subs {
                if Some(*session) == except {
                    continue;
                }
                match sub.sink.try_push(push) {
                    Ok(()) => delivered += 1,
                    Err(PushError::Full) => slow.push(*session),
                    Err(PushError::Closed) => {}
                }
            }
        }
        for session in slow {
            self.evict(session);
        }
        delivered
    }

    /// Pushes to one session (for example a join's history). False if it is unknown or slow.
    pub fn deliver_to(&self, session: SessionId, push: &Arc<Push>) -> bool {
        let sink = match read(&self.sessions).get(&session) {
            Some(e) => e.sink.clone(),
            None => return false,
        };
        match sink.try_push(push) {
            Ok(()) => true,
            Err(PushError::Full) => {
                self.evict(session);
                false
            }
            Err(PushError::Closed) => false,
        }
    }

    /// Drops a slow consumer from every room's delivery and tells it to close. The session
    /// stays registered (with its room list) until it disconnects, so that its disconnect
    /// still tells each room's owner that it left.
    pub fn evict(&self, session: SessionId) {
        let (sink, rooms) = match read(&self.sessions).get(&session) {
            Some(e) => (e.sink.clone(), e.rooms.clone()),
            None => return,
        };
        for room in &rooms {
            self.remove_sub(room, session);
        }
        metrics::counter!("parley_slow_consumer_evictions_total").increment(1);
        sink.evict();
    }

    /// Every room with sessions of this node, with those sessions.
    pub fn rooms(&self) -> Vec<(RoomId, Vec<LocalMember>)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for (room, subs) in read(shard).iter() {
                out.push((room.clone(), local_members(subs)));
            }
        }
        out
    }

    /// True while `session` is subscribed to `room` on this node.
    pub fn is_subscribed(&self, room: &RoomId, session: SessionId) -> bool {
        read(self.shard(room))
            .get(room)
            .is_some_and(|subs| subs.contains_key(&session))
    }

    /// This node's sessions, per user.
    pub fn sessions_by_user(&self) -> HashMap<UserId, Vec<SessionId>> {
        let mut out: HashMap<UserId, Vec<SessionId>> = HashMap::new();
        for (s, e) in read(&self.sessions).iter() {
            out.entry(e.user.clone()).or_default().push(*s);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_proto::PushKind;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[derive(Default)]
    struct TestSink {
        got: AtomicUsize,
        cap: usize,
        evicted: AtomicBool,
    }
    impl PushSink for TestSink {
        fn try_push(&self, _: &Arc<Push>) -> Result<(), PushError> {
            if self.got.load(Ordering::SeqCst) >= self.cap {
                return Err(PushError::Full);
            }
            self.got.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn evict(&self) {
            self.evicted.store(true, Ordering::SeqCst);
        }
    }

    fn sink(cap: usize) -> Arc<TestSink> {
        Arc::new(TestSink {
            cap,
            ..Default::default()
        })
    }

    #[test]
    fn delivers_to_subscribers_and_evicts_the_slow_one() {
        let hub = Hub::default();
        let room = RoomId::new("r").unwrap();
        let (fast, slow) = (sink(100), sink(1));
        hub.register(SessionId(1), UserId::new("a").unwrap(), "A", fast.clone());
        hub.register(SessionId(2), UserId::new("b").unwrap(), "B", slow.clone());
        assert!(hub.subscribe(&room, SessionId(1)));
        assert!(hub.subscribe(&room, SessionId(2)));
        let p = Push::new(PushKind::NewMessage, Some(room.clone()), Some(1), &1);
        assert_eq!(hub.deliver(&room, &p, None), 2);
        assert_eq!(hub.deliver(&room, &p, None), 1);
        assert!(slow.evicted.load(Ordering::SeqCst));
        assert_eq!(hub.members_of(&room).len(), 1);
        // The evicted session's disconnect still lists its rooms (its owner must hear of it).
        assert_eq!(hub.unregister(SessionId(2)), vec![room.clone()]);
        assert_eq!(hub.deliver(&room, &p, Some(SessionId(1))), 0);
        assert_eq!(fast.got.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn unregister_leaves_every_room() {
        let hub = Hub::default();
        let (r1, r2) = (RoomId::new("r1").unwrap(), RoomId::new("r2").unwrap());
        hub.register(SessionId(1), UserId::new("a").unwrap(), "A", sink(10));
        hub.subscribe(&r1, SessionId(1));
        hub.subscribe(&r2, SessionId(1));
        let mut rooms = hub.unregister(SessionId(1));
        rooms.sort();
        assert_eq!(rooms, vec![r1.clone(), r2]);
        assert!(hub.members_of(&r1).is_empty());
        assert!(!hub.subscribe(&r1, SessionId(1)));
    }
}
