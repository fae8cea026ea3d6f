//! Members, presence pushes, typing indicators and the idle timer.
//!
//! Two sessions of one user are one member: `userJoined`/`userLeft` fire on a user's first and
//! last session. Typing is relayed, never stored, and expires after `typing_ttl`.

use super::*;

impl RoomState {
    /// Adds a session (of `node`, or of this node when `None`); true if it is its user's
    /// first session here.
    pub(super) fn add_session(
        &mut self,
        session: SessionId,
        member: &Member,
        node: Option<Arc<str>>,
    ) -> bool {
        if self
            .sessions
            .insert(session, member.user_id.clone())
            .is_some()
        {
            return false;
        }
        if let Some(node) = node {
            *self.remote_nodes.entry(node.clone()).or_insert(0) += 1;
            self.remote.insert(session, node);
        }
        let entry = self
            .members
            .entry(member.user_id.clone())
            .or_insert_with(|| MemberEntry {
                username: member.username.clone(),
                sessions: Vec::new(),
            });
        entry.sessions.push(session);
        entry.sessions.len() == 1
    }

    pub(super) fn presence_push(&self, kind: PushKind, user: &UserId, username: &str) -> Arc<Push> {
        Push::new(
            kind,
            Some(self.room.clone()),
            None,
            &PresenceEvent {
                room_id: &self.room,
                user_id: user,
                username,
            },
        )
    }

    /// A join: the session is a member at once (presence and typing need no store); the
    /// reply carries the history, waiting for the first load if there is none yet.
    pub(super) fn join(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        node: Option<Arc<str>>,
        reply: Reply<JoinReply>,
    ) {
        if self.add_session(session, &member, node) {
            let p = self.presence_push(PushKind::UserJoined, &member.user_id, &member.username);
            self.fan_out(&p, Some(session));
        }
        self.idle_gen += 1;
        if self.loaded {
            let _ = reply.send(Ok(self.join_reply(&member, false)));
        } else {
            self.wait_for_load(
                myself,
                Waiting::Join {
                    session,
                    member,
                    reply,
                },
            );
        }
    }

    pub(super) fn join_reply(&self, member: &Member, degraded: bool) -> JoinReply {
        let members = self
            .members
            .iter()
            .take(self.cfg().max_listed_members)
            .map(|(u, e)| Member {
                user_id: u.clone(),
                username: e.username.clone(),
            })
            .collect();
        JoinReply {
            room_id: self.room.clone(),
            last_seq: (!degraded).then_some(self.durable),
            member_count: self.members.len(),
            members,
            messages: if degraded {
                Vec::new()
            } else {
                self.recent.iter().cloned().collect()
            },
            read_up_to: (!degraded)
                .then(|| self.receipts.get(&member.user_id).copied().unwrap_or(0)),
            history_unavailable: degraded,
        }
    }

    pub(super) fn leave(&mut self, myself: &ActorRef<RoomMsg>, session: SessionId) {
        let Some(user) = self.sessions.remove(&session) else {
            return;
        };
        self.forget_remote(session);
        self.degraded.remove(&session);
        let last = match self.members.get_mut(&user) {
            Some(e) => {
                e.sessions.retain(|s| *s != session);
                e.sessions.is_empty()
            }
            None => false,
        };
        if last {
            if let Some(e) = self.members.remove(&user) {
                self.typing.remove(&user);
                let p = self.presence_push(PushKind::UserLeft, &user, &e.username);
                self.fan_out(&p, None);
            }
        }
        self.schedule_idle_check(myself);
    }

    /// Nothing keeps the room alive: no members, no write in flight, no load or waiting request.
    pub(super) fn idle(&self) -> bool {
        self.members.is_empty()
            && self.pending.is_empty()
            && !self.loading
            && self.waiting.is_empty()
    }

    pub(super) fn schedule_idle_check(&mut self, myself: &ActorRef<RoomMsg>) {
        if !self.idle() {
            return;
        }
        self.idle_gen += 1;
        let gen = self.idle_gen;
        myself.send_after(self.cfg().idle_timeout, move || RoomMsg::IdleCheck(gen));
    }

    pub(super) fn typing(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        session: SessionId,
        member: Member,
        is_typing: bool,
    ) {
        if !self.sessions.contains_key(&session) {
            return;
        }
        let now = Instant::now();
        let broadcast = if is_typing {
            let entry = self.typing.entry(member.user_id.clone());
            let fresh = matches!(entry, std::collections::hash_map::Entry::Vacant(_));
            let e = entry.or_insert(TypingEntry {
                session,
                last_update: now,
                last_broadcast: now,
            });
            e.last_update = now;
            e.session = session;
            // Refreshes within a second are not re-broadcast: clients send one per keystroke.
            let again = fresh || now.duration_since(e.last_broadcast) >= Duration::from_secs(1);
            if again {
                e.last_broadcast = now;
            }
            again
        } else {
            self.typing.remove(&member.user_id).is_some()
        };
        if broadcast {
            self.typing_push(&member.user_id, &member.username, is_typing, Some(session));
        }
        if is_typing && !self.typing_timer {
            self.typing_timer = true;
            myself.send_after(self.cfg().typing_ttl, || RoomMsg::TypingExpiry);
        }
    }

    pub(super) fn typing_push(
        &self,
        user: &UserId,
        username: &str,
        is_typing: bool,
        except: Option<SessionId>,
    ) {
        let p = Push::new(
            PushKind::UserTyping,
            Some(self.room.clone()),
            None,
            &TypingEvent {
                room_id: &self.room,
                user_id: user,
                username,
                is_typing,
            },
        );
        self.fan_out(&p, except);
    }

    pub(super) fn expire_typing(&mut self, myself: &ActorRef<RoomMsg>) {
        self.typing_timer = false;
        let ttl = self.cfg().typing_ttl;
        let expired: Vec<(UserId, SessionId)> = self
            .typing
            .iter()
            .filter(|(_, e)| e.last_update.elapsed() >= ttl)
            .map(|(u, e)| (u.clone(), e.session))
            .collect();
        for (user, session) in expired {
            self.typing.remove(&user);
            if let Some(name) = self.members.get(&user).map(|e| e.username.clone()) {
                self.typing_push(&user, &name, false, Some(session));
            }
        }
        if let Some(next) = self
            .typing
            .values()
            .map(|e| ttl.saturating_sub(e.last_update.elapsed()))
            .min()
        {
            self.typing_timer = true;
            myself.send_after(next.max(Duration::from_millis(50)), || {
                RoomMsg::TypingExpiry
            });
        }
    }
}
