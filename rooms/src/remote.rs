//! The room layer's side of the cluster: requests from other nodes, and what a membership
//! change does.
//!
//! Inbound: [`Rooms::handle_call`] answers another node's request for a room or user this
//! node owns (or `room_moved` when, in this node's view, it does not); [`Rooms::handle_cast`]
//! applies one-way frames: leaves and typing for owned rooms, and pushes from other owners
//! for this node's sessions (`Deliver`: one frame per node, delivered through the hub).
//!
//! Membership change ([`Rooms::membership_changed`]):
//! 1. rooms this node no longer owns are handed off: they refuse new requests with
//!    `room_moved`, finish their writes in flight, and stop (the new owner claims the room in
//!    the store, which fences any write of the old owner that is still on its way);
//! 2. sessions of departed nodes are dropped from every owned room and user (a hibernated
//!    user is woken for it only if it had sessions there);
//! 3. this node's sessions are registered again with every room and user whose owner changed
//!    ([`Rooms::sync_registrations`]): the new owner adds them and pushes them `resync`, so
//!    clients fetch with `resume` whatever was in flight during the move.
//!
//! Registration is also re-checked periodically (the node calls `sync_registrations` every
//! second), which repairs a registration that failed because views had not converged yet.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cluster_proto::wire::{Cast, RemoteMember, Request, Response, RoomHandoff};
use cluster_proto::{ApiError, ErrorCode, RoomId, SessionId, UserId};

use crate::cluster::ClusterView;
use crate::facade::{supervisor_error, Rooms};
use crate::ring::Ring;
use crate::room::RoomMsg;
use crate::user::UserMsg;

/// Members per `Rejoin` frame (keeps frames far below the cluster frame limit).
const REJOIN_CHUNK: usize = 500;

impl Rooms {
    fn owns_room(&self, room: &RoomId) -> Result<(), ApiError> {
        let owner = self.cluster.room_owner(room.as_str());
        if self.cluster.is_local(&owner) {
            Ok(())
        } else {
            Err(self.cluster.not_owner("the room", &owner))
        }
    }

    /// Answers a request of node `from`.
    pub async fn handle_call(&self, from: &str, request: Request) -> Response {
        self.cluster
            .counters
            .cross_node_received
            .fetch_add(1, Ordering::Relaxed);
        let node = self.cluster.intern(from);
        match request {
            Request::Join {
                session,
                member,
                room,
            } => Response::Join(
                self.ask_room(&room, true, |reply| RoomMsg::Join {
                    session,
                    member: member.clone(),
                    node: Some(node.clone()),
                    reply,
                })
                .await,
            ),
            Request::Send {
                session,
                member,
                req,
            } => {
                let room = req.room.clone();
                Response::Send(
                    self.ask_room(&room, false, |reply| RoomMsg::Send {
                        session,
                        member: member.clone(),
                        node: Some(node.clone()),
                        req: req.clone(),
                        reply,
                    })
                    .await
                    .map(|m| (*m).clone()),
                )
            }
            Request::MarkRead {
                session,
                member,
                room,
                up_to_seq,
            } => Response::MarkRead(
                self.ask_room(&room, true, |reply| RoomMsg::MarkRead {
                    session,
                    member: member.clone(),
                    node: Some(node.clone()),
                    up_to_seq,
                    reply,
                })
                .await,
            ),
            Request::UserConnect { user, sessions } => {
                let owner = self.cluster.user_owner(user.as_str());
                if !self.cluster.is_local(&owner) {
                    return Response::UserConnect(Err(self.cluster.not_owner("the user", &owner)));
                }
                Response::UserConnect(self.user_connect(&user, sessions, Some(node)).await)
            }
            Request::Rejoin { room, members } => {
                Response::Rejoin(self.rejoin(&room, Some(node), members).await)
            }
            Request::Handoff { room, state } => Response::Handoff(self.adopt(&room, state).await),
            Request::Hello(_) | Request::Ping => {
                Response::Refused("handled by the cluster layer".into())
            }
        }
    }

    async fn rejoin(
        &self,
        room: &RoomId,
        node: Option<Arc<str>>,
        members: Vec<RemoteMember>,
    ) -> Result<(), ApiError> {
        self.owns_room(room)?;
        let actor = self.rooms.get(room).await.map_err(supervisor_error)?;
        actor
            .cast(RoomMsg::Rejoin {
                node,
                members: members.into_iter().map(|m| (m.session, m.member)).collect(),
            })
            .map_err(|_| ApiError::new(ErrorCode::RoomUnavailable, "the room restarted; retry"))
    }

    /// A planned move's state from the old owner: kept for the room's first load (which uses
    /// it if its claim shows nothing committed since), and its members registered at once.
    async fn adopt(&self, room: &RoomId, mut state: RoomHandoff) -> Result<(), ApiError> {
        self.owns_room(room)?;
        let members = std::mem::take(&mut state.members);
        self.room_deps
            .handoffs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(room.clone(), state);
        let mut by_node: HashMap<String, Vec<RemoteMember>> = HashMap::new();
        for (node, m) in members {
            by_node.entry(node).or_default().push(m);
        }
        for (node, members) in by_node {
            let node = (!self.cluster.is_local(&node)).then(|| self.cluster.intern(&node));
            self.rejoin(room, node, members).await?;
        }
        // A room that was already running has its own state: drop the handed one.
        if let Some(actor) = self.rooms.peek(room) {
            let _ = actor.cast(RoomMsg::DropHandoff);
        }
        Ok(())
    }

    /// Applies a one-way frame of node `from`.
    pub fn handle_cast(&self, from: &str, cast: Cast) {
        self.cluster
            .counters
            .cross_node_received
            .fetch_add(1, Ordering::Relaxed);
        match cast {
            Cast::Deliver { room, except, push } => {
                if let Some(p) = push.into_push() {
                    self.hub.deliver(&room, &p, except);
                }
            }
            Cast::DeliverTo { session, push } => {
                if let Some(p) = push.into_push() {
                    self.hub.deliver_to(session, &p);
                }
            }
            Cast::Leave { session, room } => {
                if let Some(r) = self.rooms.peek(&room) {
                    let _ = r.cast(RoomMsg::Leave { session });
                }
            }
            Cast::Typing {
                session,
                member,
                room,
                is_typing,
            } => {
                if let Some(r) = self.rooms.peek(&room) {
                    let _ = r.cast(RoomMsg::Typing {
                        session,
                        member,
                        is_typing,
                    });
                }
            }
            Cast::UserDisconnect { session, user } => {
                let _ = self.users.cast(&user, UserMsg::Disconnect { session });
            }
            Cast::Reregister { room } => {
                // Forget the registration: the next sync registers this node's members again.
                self.registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&room);
            }
            Cast::UserShare { user, nodes } => self.buckets.set_share(&user, nodes),
            Cast::ReregisterUser { user } => {
                // Forget the registration: the next sync registers this node's sessions again.
                self.users_registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&user);
            }
            Cast::Leaving => {
                // Handled by the cluster layer (it changes the membership).
                tracing::debug!(%from, "leaving frame reached the room layer");
            }
        }
    }

    /// The membership changed from `old` to the current view.
    pub fn membership_changed(&self, old: &Ring) {
        let now = self.cluster.ring();
        let gone: Vec<Arc<str>> = old
            .nodes()
            .filter(|n| !now.contains(n))
            .map(|n| self.cluster.intern(n))
            .collect();
        for (room, actor) in self.rooms.entries() {
            if !self
                .cluster
                .is_local(&self.cluster.room_owner(room.as_str()))
            {
                let _ = actor.cast(RoomMsg::Handoff);
                continue;
            }
            for n in &gone {
                let _ = actor.cast(RoomMsg::NodeDown(n.clone()));
            }
        }
        let owned = |cluster: &ClusterView, user: &UserId| {
            cluster.is_local(&cluster.user_owner(user.as_str()))
        };
        for (user, actor) in self.users.entries() {
            if !owned(&self.cluster, &user) {
                actor.stop(Some("ownership moved".into()));
            }
        }
        self.users
            .retain_dormant(|user, _| owned(&self.cluster, user));
        // Through the supervisor, so a user that is hibernating at this moment is not missed;
        // only dormant users with sessions on the departed node are woken.
        for n in gone {
            let cluster = self.cluster.clone();
            let _ = self.users.broadcast(move |user, dormant| {
                let concerned = dormant.is_none_or(|d| d.has_sessions_on(&n));
                (concerned && owned(&cluster, user)).then(|| UserMsg::NodeDown(n.clone()))
            });
        }
    }

    /// Registers this node's sessions with every room and user owner that does not have them
    /// yet (after an owner change, a restart of a room elsewhere, or a failed attempt).
    /// Returns how many registrations were sent.
    pub async fn sync_registrations(&self) -> usize {
        let mut sent = 0;
        let rooms = self.hub.rooms();
        let live: HashSet<RoomId> = rooms.iter().map(|(r, _)| r.clone()).collect();
        let todo: Vec<_> = {
            let mut reg = self.registered.lock().unwrap_or_else(|p| p.into_inner());
            reg.retain(|r, _| live.contains(r));
            rooms
                .into_iter()
                .filter_map(|(room, members)| {
                    let owner = self.cluster.room_owner(room.as_str());
                    (reg.get(&room) != Some(&owner)).then_some((room, owner, members))
                })
                .collect()
        };
        for (room, owner, members) in todo {
            let members: Vec<RemoteMember> = members
                .into_iter()
                .map(|m| RemoteMember {
                    session: m.session,
                    member: m.member,
                })
                .collect();
            let mut ok = true;
            for chunk in members.chunks(REJOIN_CHUNK) {
                sent += 1;
                let r = if self.cluster.is_local(&owner) {
                    self.rejoin(&room, None, chunk.to_vec()).await
                } else {
                    let req = Request::Rejoin {
                        room: room.clone(),
                        members: chunk.to_vec(),
                    };
                    match self.cluster.call(&owner, req, self.cfg.call_timeout).await {
                        Ok(Response::Rejoin(r)) => r,
                        Ok(_) => Err(ApiError::new(ErrorCode::Internal, "unexpected answer")),
                        Err(e) => Err(e),
                    }
                };
                if let Err(e) = r {
                    tracing::debug!(%room, %owner, error = %e, "registration failed; will retry");
                    ok = false;
                    break;
                }
            }
            if ok {
                self.registered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(room, owner);
            }
        }
        // Users whose owner changed.
        let users: Vec<(UserId, Vec<SessionId>)> = {
            let reg = self
                .users_registered
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.hub
                .sessions_by_user()
                .into_iter()
                .filter(|(u, _)| reg.get(u) != Some(&self.cluster.user_owner(u.as_str())))
                .collect()
        };
        for (user, sessions) in users {
            sent += 1;
            if let Err(e) = self.register_user(&user, sessions).await {
                tracing::debug!(%user, error = %e, "user registration failed; will retry");
            }
        }
        sent
    }
}
