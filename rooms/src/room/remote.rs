//! The room in a cluster: members on other nodes, fan-out with one frame per node, and the
//! end of an ownership (handoff, fence).
//!
//! A room's owner keeps, for every session of another node, that node's name; a push goes
//! to this node's hub directly and to every other node with members as ONE `Deliver` frame,
//! whose hub then delivers to its own sessions. The frame is encoded once for all nodes.

use cluster_proto::wire::{Cast, RemoteMember, Request, RoomHandoff, WirePush};

use super::*;

impl RoomState {
    /// Pushes to every member except `except`: this node's through the hub, each other
    /// node's with one frame.
    pub(super) fn fan_out(&self, push: &Arc<Push>, except: Option<SessionId>) {
        self.deps.hub.deliver(&self.room, push, except);
        if self.remote_nodes.is_empty() {
            return;
        }
        self.deps.cluster.cast_to(
            self.remote_nodes.keys().map(|n| &**n),
            Cast::Deliver {
                room: self.room.clone(),
                except,
                push: WirePush::from_push(push),
            },
        );
    }

    /// Pushes to one member, wherever it is.
    pub(super) fn deliver_to(&self, session: SessionId, push: &Arc<Push>) {
        match self.remote.get(&session) {
            Some(node) => self.deps.cluster.cast(
                node,
                Cast::DeliverTo {
                    session,
                    push: WirePush::from_push(push),
                },
            ),
            None => {
                self.deps.hub.deliver_to(session, push);
            }
        }
    }

    /// Drops a session's node bookkeeping (the caller removes the session itself).
    pub(super) fn forget_remote(&mut self, session: SessionId) {
        if let Some(node) = self.remote.remove(&session) {
            if let Some(n) = self.remote_nodes.get_mut(&node) {
                *n -= 1;
                if *n == 0 {
                    self.remote_nodes.remove(&node);
                }
            }
        }
    }

    /// Members re-registered after an owner change: added without `userJoined` (for the
    /// others they never left) and pushed `resync`, since pushes may have been lost while the
    /// room moved. Sessions that join before the history is loaded get it with the load.
    pub(super) fn rejoin(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        node: Option<Arc<str>>,
        members: Vec<(SessionId, Member)>,
    ) {
        if self.retiring.is_some() {
            return;
        }
        let mut fresh = Vec::new();
        for (session, member) in members {
            self.add_session(session, &member, node.clone());
            fresh.push(session);
        }
        self.idle_gen += 1;
        if self.loaded && !self.loading {
            let push = self.resync_push();
            for s in fresh {
                self.deliver_to(s, &push);
            }
        } else {
            self.degraded.extend(fresh);
            self.start_load(myself);
        }
    }

    /// A node is gone: its sessions leave (with `userLeft` where it was a user's last).
    pub(super) fn node_down(&mut self, myself: &ActorRef<RoomMsg>, node: &str) {
        let gone: Vec<SessionId> = self
            .remote
            .iter()
            .filter(|(_, n)| &***n == node)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.leave(myself, s);
        }
    }

    pub(super) fn moved(&self) -> ApiError {
        let owner = self.deps.cluster.room_owner(self.room.as_str());
        self.deps.cluster.not_owner("the room", &owner)
    }

    /// Stops serving: requests waiting for a load and every new one get `room_moved` (the
    /// caller retries at the new owner); writes in flight finish (or are fenced), then the
    /// actor stops.
    pub(super) fn retire(&mut self, myself: &ActorRef<RoomMsg>, why: Retiring) {
        if self.retiring.is_none() {
            tracing::debug!(room = %self.room, ?why, "room retiring");
            self.deps
                .cluster
                .counters
                .handoffs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("parley_cluster_handoffs_total", "reason" => match why {
                Retiring::Moved => "moved",
                Retiring::Fenced => "fenced",
            })
            .increment(1);
        }
        self.retiring = Some(why);
        let err = self.moved();
        for w in std::mem::take(&mut self.waiting) {
            match w {
                Waiting::Join { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Waiting::Send { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Waiting::MarkRead { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
        if self.pending.is_empty() {
            self.finish_retirement(myself);
        }
    }

    /// The last step of a retirement, once no write is in flight: in a planned move (this
    /// node still runs and knows the room's state), hand the state to the new owner, then
    /// stop. A fenced room hands nothing over: a newer owner already has the room.
    pub(super) fn finish_retirement(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.retiring == Some(Retiring::Moved) && self.loaded && !self.stale {
            let owner = self.deps.cluster.room_owner(self.room.as_str());
            if !self.deps.cluster.is_local(&owner) {
                let local = self.deps.cluster.local().to_string();
                let state = RoomHandoff {
                    last_seq: self.durable,
                    recent: self.recent.iter().map(|m| (**m).clone()).collect(),
                    dedupe: self
                        .dedupe
                        .iter()
                        .map(|((u, c), s)| (u.clone(), c.clone(), *s))
                        .collect(),
                    receipts: self.receipts.iter().map(|(u, s)| (u.clone(), *s)).collect(),
                    members: self
                        .sessions
                        .iter()
                        .filter_map(|(session, user)| {
                            let username = self.members.get(user)?.username.clone();
                            let node = self
                                .remote
                                .get(session)
                                .map_or(local.clone(), |n| n.to_string());
                            Some((
                                node,
                                RemoteMember {
                                    session: *session,
                                    member: Member {
                                        user_id: user.clone(),
                                        username,
                                    },
                                },
                            ))
                        })
                        .collect(),
                };
                let (cluster, room) = (self.deps.cluster.clone(), self.room.clone());
                let timeout = self.cfg().join_history_wait;
                tokio::spawn(async move {
                    let req = Request::Handoff {
                        room: room.clone(),
                        state,
                    };
                    if let Err(e) = cluster.call(&owner, req, timeout).await {
                        tracing::debug!(%room, %owner, error = %e, "state handoff not taken; the new owner loads from the store");
                    }
                });
            }
        }
        myself.stop(Some("ownership moved".into()));
    }
}
