//! Loading a room's state from the history store, in the background.
//!
//! A room never assigns a seq before it knows the last stored one. The load runs as a task
//! so the mailbox keeps serving presence and typing while the store is slow or down; sends
//! that arrive meanwhile wait (bounded) or fail with `store_unavailable`.

use super::*;

impl RoomState {
    pub(super) fn cfg(&self) -> &RoomConfig {
        &self.deps.cfg
    }

    /// Adds the hub's sessions of this room: members never depend on the store.
    pub(super) fn rebuild_members(&mut self) {
        for lm in self.deps.hub.members_of(&self.room) {
            self.add_session(lm.session, &lm.member, None);
        }
    }

    /// True when a send may be given a seq now.
    pub(super) fn seq_known(&self) -> bool {
        self.loaded && !self.stale && !self.loading
    }

    /// Starts reading the room's history state in the background, unless a load is running.
    pub(super) fn start_load(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.loading {
            return;
        }
        self.loading = true;
        let store = self.deps.store.clone();
        let room = self.room.clone();
        let want = self.cfg().history_on_join.max(self.cfg().dedupe_window);
        let max_receipts = self.cfg().max_receipts;
        let me = myself.clone();
        // The first load claims the room in the store (the ownership fence: any write of an
        // earlier owner still on its way is refused from now on, and `last_seq` includes
        // everything acknowledged to it). Reloads of a loaded room keep the claim and only
        // reread the last seq.
        let claim = !self.claimed;
        // A state handed over by the old owner saves the history reads, if the claim shows
        // that nothing was committed since it was taken.
        let handed = claim
            .then(|| {
                self.deps
                    .handoffs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&room)
            })
            .flatten();
        tokio::spawn(async move {
            let result = async {
                let last_seq = if claim {
                    store.claim(&room).await?.last_seq
                } else {
                    store.room_meta(&room).await?.last_seq
                };
                if let Some(h) = handed {
                    let used = h.last_seq == last_seq;
                    metrics::counter!("parley_cluster_handoff_states_total",
                        "result" => if used { "used" } else { "stale" })
                    .increment(1);
                    if used {
                        return Ok(Snapshot {
                            claimed: claim,
                            last_seq,
                            dedupe: h.dedupe,
                            latest: h.recent,
                            receipts: h
                                .receipts
                                .into_iter()
                                .map(|(user, seq)| Receipt { user, seq })
                                .collect(),
                        });
                    }
                }
                let latest = store.latest(&room, want).await?;
                let receipts = store.receipts(&room, max_receipts).await?;
                Ok(Snapshot {
                    claimed: claim,
                    last_seq,
                    dedupe: Vec::new(),
                    latest,
                    receipts,
                })
            }
            .await;
            // The room may have stopped meanwhile; then nobody needs the result.
            let _ = me.cast(RoomMsg::Loaded(Box::new(result)));
        });
    }

    /// Queues a request until the load ends (starting one if needed), at most
    /// `join_history_wait`.
    pub(super) fn wait_for_load(&mut self, myself: &ActorRef<RoomMsg>, w: Waiting) {
        if self.waiting.is_empty() {
            self.wait_gen += 1;
            let gen = self.wait_gen;
            myself.send_after(self.cfg().join_history_wait, move || {
                RoomMsg::LoadWaitExpired(gen)
            });
        }
        self.waiting.push_back(w);
        self.start_load(myself);
    }

    pub(super) fn on_loaded(
        &mut self,
        myself: &ActorRef<RoomMsg>,
        result: Result<Snapshot, StoreError>,
    ) {
        self.loading = false;
        if let Err(StoreError::Fenced { .. }) = &result {
            // A newer owner claimed the room while this one reloaded.
            return self.retire(myself, Retiring::Fenced);
        }
        match result {
            Ok(snap) => {
                self.claimed |= snap.claimed;
                metrics::counter!("parley_room_loads_total", "result" => "ok").increment(1);
                if self.load_failures > 0 {
                    tracing::info!(room = %self.room, failures = self.load_failures, "room history loaded");
                    self.load_failures = 0;
                }
                self.apply_snapshot(snap);
                // Answer the waiting requests in arrival order, now against loaded state.
                for w in std::mem::take(&mut self.waiting) {
                    match w {
                        Waiting::Join { member, reply, .. } => {
                            let _ = reply.send(Ok(self.join_reply(&member, false)));
                        }
                        Waiting::Send {
                            session,
                            member,
                            req,
                            reply,
                        } => self.send(myself, session, member, req, reply),
                        Waiting::MarkRead {
                            session,
                            member,
                            up_to_seq,
                            reply,
                        } => self.mark_read(myself, session, member, up_to_seq, reply),
                    }
                }
            }
            Err(e) => {
                metrics::counter!("parley_room_loads_total", "result" => "error").increment(1);
                // Once per outage at warn level: a down store fails every load of every room.
                if self.load_failures == 0 {
                    tracing::warn!(room = %self.room, error = %e, "room history load failed; will retry");
                } else {
                    tracing::debug!(room = %self.room, error = %e, failures = self.load_failures, "room history load failed again");
                }
                self.load_failures += 1;
                self.fail_waiting(&store_error(&e));
                self.schedule_retry(myself);
            }
        }
        self.schedule_idle_check(myself);
    }

    /// Takes the store's view of the room. Only called with nothing in flight (sends wait
    /// while a load runs), so `durable` and `last_assigned` can simply be replaced.
    pub(super) fn apply_snapshot(&mut self, snap: Snapshot) {
        let was_loaded = self.loaded;
        let previous = self.durable;
        if was_loaded && snap.last_seq < previous {
            tracing::error!(
                room = %self.room,
                store = snap.last_seq,
                acknowledged = previous,
                "the store's last seq is below an acknowledged one; following the store"
            );
        }
        let snap_last_seq = snap.last_seq;
        self.last_assigned = snap.last_seq;
        self.durable = snap.last_seq;
        self.last_timestamp = self
            .last_timestamp
            .max(snap.latest.last().map(|m| m.timestamp).unwrap_or(0));
        self.recent.clear();
        self.dedupe.clear();
        self.dedupe_order.clear();
        for (user, id, seq) in snap.dedupe {
            self.remember_client_id(user, id, seq);
        }
        let keep_from = snap.latest.len().saturating_sub(self.cfg().history_on_join);
        for (i, m) in snap.latest.into_iter().enumerate() {
            if let Some(c) = &m.client_msg_id {
                self.remember_client_id(m.user_id.clone(), c.clone(), m.seq);
            }
            if i >= keep_from {
                self.recent.push_back(Arc::new(m));
            }
        }
        // A receipt acknowledged while the load was reading must not go back.
        for r in snap.receipts {
            let e = self.receipts.entry(r.user).or_insert(0);
            *e = (*e).max(r.seq);
        }
        self.loaded = true;
        self.stale = false;
        self.retry_delay = self.cfg().load_retry_min;
        let degraded = std::mem::take(&mut self.degraded);
        // Messages may have been stored without being pushed: by a crashed incarnation, or a
        // commit whose ack was lost (a seq reported failed is in the store after all; a later
        // write may even have succeeded on top of it). Everyone resumes.
        let lost_ack = self
            .lowest_failed
            .take()
            .is_some_and(|l| l <= snap_last_seq);
        if self.restarted || lost_ack || (was_loaded && self.durable != previous) {
            self.restarted = false;
            let push = self.resync_push();
            self.fan_out(&push, None);
        } else if !degraded.is_empty() {
            // Sessions that joined without history fetch it now.
            let push = self.resync_push();
            for s in degraded {
                if self.sessions.contains_key(&s) {
                    self.deliver_to(s, &push);
                }
            }
        }
    }

    pub(super) fn resync_push(&self) -> Arc<Push> {
        Push::new(
            PushKind::Resync,
            Some(self.room.clone()),
            None,
            &ResyncEvent {
                room_id: &self.room,
                last_seq: self.durable,
            },
        )
    }

    /// Answers every waiting request without history: joins succeed degraded, sends and
    /// receipts fail with `err` (nothing was written).
    pub(super) fn fail_waiting(&mut self, err: &ApiError) {
        for w in std::mem::take(&mut self.waiting) {
            match w {
                Waiting::Join {
                    session,
                    member,
                    reply,
                } => {
                    // A join that waited for a reload of a loaded room is not degraded.
                    let degraded = !self.loaded;
                    if degraded && self.sessions.contains_key(&session) {
                        self.degraded.insert(session);
                        metrics::counter!("parley_degraded_joins_total").increment(1);
                    }
                    let _ = reply.send(Ok(self.join_reply(&member, degraded)));
                }
                Waiting::Send { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Waiting::MarkRead { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    pub(super) fn load_wait_expired(&mut self, gen: u64) {
        if gen != self.wait_gen || self.waiting.is_empty() {
            return;
        }
        let err = ApiError::new(
            ErrorCode::StoreUnavailable,
            format!(
                "message history unavailable: the store did not answer within {:?}",
                self.cfg().join_history_wait
            ),
        );
        // The load goes on; whoever comes next gets its result.
        self.fail_waiting(&err);
    }

    /// Schedules a background load while members are waiting for history or a known seq.
    pub(super) fn schedule_retry(&mut self, myself: &ActorRef<RoomMsg>) {
        if self.retry_scheduled || self.members.is_empty() || (self.loaded && !self.stale) {
            return;
        }
        self.retry_scheduled = true;
        let delay = self.retry_delay;
        self.retry_delay = (delay * 2).min(self.cfg().load_retry_max);
        myself.send_after(delay, || RoomMsg::RetryLoad);
    }

    pub(super) fn retry_load(&mut self, myself: &ActorRef<RoomMsg>) {
        self.retry_scheduled = false;
        if (!self.loaded || self.stale) && !self.members.is_empty() {
            self.start_load(myself);
        }
    }
}
