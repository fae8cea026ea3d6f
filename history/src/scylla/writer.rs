//! The write path: one bounded queue (`scylla-history-writer`) and one writer task per store,
//! with a *lane* per room.
//!
//! The writer pulls calls from the queue into their room's lane. A lane that is idle starts a
//! group at once with every call waiting in it (up to `max_round_calls`): a room's calls are
//! group-committed while its previous group is in flight, and the groups of different rooms run
//! concurrently, bounded by `write_concurrency` CQL requests in flight. A room has at most one
//! group in flight, so its calls are applied and answered in submission order.
//!
//! A group (see [`super::group`] and [`super::write_ops`]) checks that this handle owns the
//! room (its claim, kept here) and each call's seqs against the room's last seq (cached here,
//! read from `room_state` on first touch or after a failure), writes the rows, then commits
//! `room_state.last_seq` if the room's epoch is still this handle's (see [`super::fence`]),
//! then answers its calls. On any failure the room's cached seq is forgotten; rows written
//! above `last_seq` stay invisible to reads and are overwritten when the room writes those
//! seqs again. `room_meta` and `claim` take their place in the room's lane, so they are
//! answered after the room's earlier writes, from `room_state` (which also refreshes the
//! cache). A claim replaces the room's claim here with its new epoch, or drops it if it fails;
//! a commit that finds a newer epoch marks the room fenced here, and only a claim ends that.
//!
//! A call that spans several rooms (messages of one room plus receipts of others; rare) is a
//! barrier: the writer finishes everything before it, runs it alone, then goes on. `shutdown`
//! is a barrier too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use cluster_proto::RoomId;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};

use super::breaker::Admit;
use super::core::Core;
use super::group::{run_group, CacheUpdate, Call, Held, HeldUpdate, Outcome, Reply, Target};
use crate::store::{message_room, Claim, RoomMeta, StoreError, WriteOp};

/// Name of the write queue and its task, as it appears in errors, logs and metrics.
pub(crate) const QUEUE_NAME: &str = "scylla-history-writer";

pub(crate) enum Job {
    Write {
        ops: Vec<WriteOp>,
        reply: Reply<()>,
        queued: Instant,
    },
    Meta {
        room: RoomId,
        reply: Reply<RoomMeta>,
    },
    Claim {
        room: RoomId,
        reply: Reply<Claim>,
    },
    Shutdown(oneshot::Sender<()>),
}

enum Item {
    Call(Vec<WriteOp>, Call),
    Meta(Reply<RoomMeta>),
    Claim(Reply<Claim>),
}

#[derive(Default)]
struct Lane {
    busy: bool,
    items: VecDeque<Item>,
}

enum Barrier {
    MultiRoom(Vec<WriteOp>, Call),
    Shutdown(oneshot::Sender<()>),
}

/// A finished lane item: its lane, what it learnt, whether it was the breaker's probe.
type Done = (RoomId, Outcome, bool);

pub(crate) struct Writer {
    core: Arc<Core>,
    /// Last committed seq per room as this writer knows it.
    last_seq: HashMap<RoomId, u64>,
    /// This handle's claim per room. Never evicted (unlike `last_seq`): forgetting a claim
    /// would fence the room's owner.
    claims: HashMap<RoomId, Held>,
    lanes: HashMap<RoomId, Lane>,
    inflight: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Calls pulled from the queue and not yet handed to a group.
    waiting: usize,
    /// Bound of `waiting`: the writer stops pulling (and the queue fills) beyond it.
    max_waiting: usize,
    max_group: usize,
    barrier: Option<Barrier>,
}

fn rooms_of(ops: &[WriteOp]) -> Vec<&RoomId> {
    let mut rooms: Vec<&RoomId> = ops
        .iter()
        .map(|op| match op {
            WriteOp::Message(m) => &m.room_id,
            WriteOp::Receipt { room, .. } => room,
        })
        .collect();
    rooms.sort_unstable();
    rooms.dedup();
    rooms
}

impl Writer {
    const MAX_CACHED_ROOMS: usize = 200_000;

    pub fn new(core: Arc<Core>, max_group: usize, max_waiting: usize) -> Self {
        Self {
            max_waiting: max_waiting.max(max_group).max(1),
            core,
            last_seq: HashMap::new(),
            claims: HashMap::new(),
            lanes: HashMap::new(),
            inflight: FuturesUnordered::new(),
            waiting: 0,
            max_group: max_group.max(1),
            barrier: None,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut closed = false;
        loop {
            while self.barrier.is_none() && !closed && self.waiting < self.max_waiting {
                match rx.try_recv() {
                    Ok(job) => self.accept(job),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
                }
            }
            if self.inflight.is_empty() {
                match self.barrier.take() {
                    Some(Barrier::Shutdown(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    Some(Barrier::MultiRoom(ops, call)) => {
                        self.run_alone(ops, call).await;
                        continue;
                    }
                    None if closed => break,
                    None => {}
                }
            }
            tokio::select! {
                Some((room, outcome, probe)) = self.inflight.next(), if !self.inflight.is_empty() => {
                    self.finish(room, outcome, probe);
                }
                job = rx.recv(), if self.barrier.is_none() && !closed && self.waiting < self.max_waiting => {
                    match job {
                        Some(job) => self.accept(job),
                        None => closed = true,
                    }
                }
                else => break,
            }
        }
        tracing::debug!("{QUEUE_NAME} stopped");
    }

    fn accept(&mut self, job: Job) {
        let (room, item) = match job {
            Job::Shutdown(done) => {
                self.barrier = Some(Barrier::Shutdown(done));
                return;
            }
            Job::Meta { room, reply } => (room, Item::Meta(reply)),
            Job::Claim { room, reply } => (room, Item::Claim(reply)),
            Job::Write { ops, reply, queued } => {
                let call = Call { reply, queued };
                let room = match rooms_of(&ops).as_slice() {
                    [] => return call.answer(Ok(())),
                    [room] => (*room).clone(),
                    _ => {
                        self.barrier = Some(Barrier::MultiRoom(ops, call));
                        return;
                    }
                };
                (room, Item::Call(ops, call))
            }
        };
        self.waiting += 1;
        self.lanes
            .entry(room.clone())
            .or_default()
            .items
            .push_back(item);
        self.dispatch(room);
    }

    /// Starts the next group of `room`'s lane unless one is in flight.
    fn dispatch(&mut self, room: RoomId) {
        let Some(lane) = self.lanes.get_mut(&room) else {
            return;
        };
        if lane.busy || lane.items.is_empty() {
            if !lane.busy {
                self.lanes.remove(&room);
            }
            return;
        }
        let admit = self.core.retrier.breaker().admit();
        if admit == Admit::Reject {
            let err = StoreError::Unavailable("scylla circuit breaker open".into());
            for item in lane.items.drain(..) {
                self.waiting -= 1;
                match item {
                    Item::Call(_, call) => call.answer(Err(err.clone())),
                    Item::Meta(reply) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    Item::Claim(reply) => {
                        // A failed claim leaves no claim (see the trait).
                        self.claims.remove(&room);
                        let _ = reply.send(Err(err.clone()));
                    }
                }
            }
            self.lanes.remove(&room);
            return;
        }
        let probe = admit == Admit::Probe;
        let core = self.core.clone();
        lane.busy = true;
        let fut = match lane.items.pop_front() {
            Some(Item::Meta(reply)) => {
                self.waiting -= 1;
                async move {
                    let r = core.load_last_seq(&room).await.map_err(StoreError::from);
                    let outcome = Outcome {
                        room: Some(room.clone()),
                        last_seq: match &r {
                            Ok(s) => CacheUpdate::Set(*s),
                            Err(_) => CacheUpdate::Forget,
                        },
                        held: HeldUpdate::Keep,
                    };
                    let _ = reply.send(r.map(|last_seq| RoomMeta { last_seq }));
                    (room, outcome, probe)
                }
                .boxed()
            }
            Some(Item::Claim(reply)) => {
                self.waiting -= 1;
                async move {
                    let r = core.claim_room(&room).await;
                    let outcome = match &r {
                        Ok(c) => Outcome {
                            room: Some(room.clone()),
                            last_seq: CacheUpdate::Set(c.last_seq),
                            held: HeldUpdate::Set(Held::Owner {
                                epoch: c.epoch,
                                counter: 0,
                            }),
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, %room, "claim failed");
                            Outcome {
                                room: Some(room.clone()),
                                last_seq: CacheUpdate::Forget,
                                held: HeldUpdate::Drop,
                            }
                        }
                    };
                    let _ = reply.send(r);
                    (room, outcome, probe)
                }
                .boxed()
            }
            Some(Item::Call(ops, call)) => {
                let mut calls = vec![(ops, call)];
                while calls.len() < self.max_group
                    && matches!(lane.items.front(), Some(Item::Call(..)))
                {
                    if let Some(Item::Call(ops, call)) = lane.items.pop_front() {
                        calls.push((ops, call));
                    }
                }
                self.waiting -= calls.len();
                let target = self.target(&room);
                async move { (room, run_group(core, calls, Some(target)).await, probe) }.boxed()
            }
            None => {
                lane.busy = false;
                return;
            }
        };
        self.inflight.push(fut);
    }

    /// What a group writing messages of `room` needs to know of it.
    fn target(&self, room: &RoomId) -> Target {
        Target {
            room: room.clone(),
            known_last: self.last_seq.get(room).copied(),
            held: self.claims.get(room).copied(),
        }
    }

    fn finish(&mut self, room: RoomId, outcome: Outcome, probe: bool) {
        if probe {
            // A group that sent no request leaves the probe slot free again.
            self.core.retrier.breaker().release_probe();
        }
        if self.last_seq.len() > Self::MAX_CACHED_ROOMS {
            self.last_seq.clear();
        }
        self.apply(outcome);
        if let Some(lane) = self.lanes.get_mut(&room) {
            lane.busy = false;
        }
        self.dispatch(room);
    }

    fn apply(&mut self, outcome: Outcome) {
        let Some(room) = outcome.room else {
            return;
        };
        match outcome.last_seq {
            CacheUpdate::Keep => {}
            CacheUpdate::Set(s) => {
                self.last_seq.insert(room.clone(), s);
            }
            CacheUpdate::Forget => {
                self.last_seq.remove(&room);
            }
        }
        match outcome.held {
            HeldUpdate::Keep => {}
            HeldUpdate::Set(h) => {
                self.claims.insert(room, h);
            }
            HeldUpdate::Drop => {
                self.claims.remove(&room);
            }
        }
    }

    /// Runs a call that spans rooms while nothing else is in flight.
    async fn run_alone(&mut self, ops: Vec<WriteOp>, call: Call) {
        if self.core.retrier.breaker().is_open() {
            return call.answer(Err(StoreError::Unavailable(
                "scylla circuit breaker open".into(),
            )));
        }
        // `submit` refused calls with messages of several rooms.
        let target = match message_room(&ops) {
            Ok(room) => room.map(|r| self.target(r)),
            Err(e) => return call.answer(Err(e)),
        };
        let outcome = run_group(self.core.clone(), vec![(ops, call)], target).await;
        self.apply(outcome);
    }
}
