//! The embedded store's writer thread: group commit of queued writes, the gap-free seq check
//! against its cache of each room's last seq, and claims in order with the writes (see the
//! parent module's doc).

use super::*;

pub(super) struct Writer {
    tables: Tables,
    /// Last durable seq per room seen by this writer (a cache of the disk's truth).
    last_seq: HashMap<RoomId, u64>,
    /// The epoch of each room this handle claimed since it was opened. There is no other
    /// handle, so it is also the room's current epoch (never evicted: forgetting a claim
    /// would fence the room's owner).
    claimed: HashMap<RoomId, u64>,
    max_batch: usize,
}

/// The effect of the writes accepted into the batch being built.
#[derive(Default)]
struct Pending {
    seqs: HashMap<RoomId, u64>,
    receipts: HashMap<Vec<u8>, u64>,
    replies: Vec<(oneshot::Sender<Result<(), StoreError>>, Instant)>,
}

impl Writer {
    pub(super) fn new(tables: Tables, max_batch: usize) -> Self {
        Writer {
            tables,
            last_seq: HashMap::new(),
            claimed: HashMap::new(),
            max_batch,
        }
    }

    const MAX_CACHED_ROOMS: usize = 200_000;

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut jobs = Vec::with_capacity(self.max_batch);
        while let Some(job) = rx.blocking_recv() {
            jobs.push(job);
            while jobs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
            if !self.process(&mut jobs) {
                return;
            }
        }
    }

    /// Processes one drained group; returns false after a shutdown request.
    fn process(&mut self, jobs: &mut Vec<Job>) -> bool {
        if self.last_seq.len() > Self::MAX_CACHED_ROOMS {
            self.last_seq.clear();
        }
        let mut batch = self.new_batch();
        let mut pending = Pending::default();
        for job in jobs.drain(..) {
            match job {
                Job::Write { ops, reply, queued } => {
                    match self.stage(&ops, &mut pending, &mut batch) {
                        Ok(()) => pending.replies.push((reply, queued)),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Job::Meta { room, reply } => {
                    // A meta read is ordered after the writes before it: commit them first.
                    self.commit(
                        std::mem::replace(&mut batch, self.new_batch()),
                        std::mem::take(&mut pending),
                    );
                    let _ = reply.send(
                        self.cached_last_seq(&room)
                            .map(|last_seq| RoomMeta { last_seq }),
                    );
                }
                Job::Claim { room, reply } => {
                    // Ordered after the writes before it, like a meta read.
                    self.commit(
                        std::mem::replace(&mut batch, self.new_batch()),
                        std::mem::take(&mut pending),
                    );
                    let _ = reply.send(self.claim(room));
                }
                Job::Shutdown(done) => {
                    self.commit(batch, pending);
                    let _ = done.send(());
                    return false;
                }
            }
        }
        self.commit(batch, pending);
        true
    }

    fn new_batch(&self) -> fjall::OwnedWriteBatch {
        self.tables
            .db
            .batch()
            .durability(Some(PersistMode::SyncData))
    }

    /// Raises the room's persisted epoch by one and makes it this handle's claim.
    fn claim(&mut self, room: RoomId) -> Result<Claim, StoreError> {
        // Until the new epoch is durable the handle holds no claim (a failed claim leaves none).
        let held = self.claimed.remove(&room);
        let result = (|| {
            let previous = match held {
                Some(e) => e,
                None => match self.tables.claims.get(room.as_str()).map_err(unavailable)? {
                    Some(v) => be_u64(&v)?,
                    None => 0,
                },
            };
            let epoch = previous
                .checked_add(1)
                .ok_or_else(|| StoreError::Corrupt(format!("epoch of room {room} overflows")))?;
            let last_seq = self.cached_last_seq(&room)?;
            let mut batch = self.new_batch();
            batch.insert(
                &self.tables.claims,
                room.as_str().as_bytes().to_vec(),
                epoch.to_be_bytes().to_vec(),
            );
            batch.commit().map_err(unavailable)?;
            Ok(Claim { epoch, last_seq })
        })();
        match &result {
            Ok(c) => {
                self.claimed.insert(room, c.epoch);
            }
            Err(e) => tracing::error!(error = %e, %room, "claim failed"),
        }
        result
    }

    fn cached_last_seq(&mut self, room: &RoomId) -> Result<u64, StoreError> {
        if let Some(&s) = self.last_seq.get(room) {
            return Ok(s);
        }
        let s = self.tables.last_seq(room)?;
        self.last_seq.insert(room.clone(), s);
        Ok(s)
    }

    /// Validates one call's ops against the batch so far and adds them to it, all or nothing.
    fn stage(
        &mut self,
        ops: &[WriteOp],
        pending: &mut Pending,
        batch: &mut fjall::OwnedWriteBatch,
    ) -> Result<(), StoreError> {
        let mut seqs: Vec<(RoomId, u64)> = Vec::new();
        let mut rows: Vec<(bool, Vec<u8>, Vec<u8>)> = Vec::with_capacity(ops.len());
        let mut receipts: Vec<(Vec<u8>, u64)> = Vec::new();
        for op in ops {
            match op {
                WriteOp::Message(m) => {
                    // The fence: see the module docs (this handle is the only one).
                    if !self.claimed.contains_key(&m.room_id) {
                        return Err(StoreError::Fenced {
                            room: m.room_id.clone(),
                            epoch: 0,
                        });
                    }
                    let last = match seqs.iter().rev().find(|(r, _)| r == &m.room_id) {
                        Some((_, s)) => *s,
                        None => match pending.seqs.get(&m.room_id) {
                            Some(s) => *s,
                            None => self.cached_last_seq(&m.room_id)?,
                        },
                    };
                    if m.seq != last + 1 {
                        return Err(StoreError::SeqConflict {
                            room: m.room_id.clone(),
                            expected: last + 1,
                            got: m.seq,
                        });
                    }
                    seqs.push((m.room_id.clone(), m.seq));
                    let value = codec::encode(m).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    rows.push((true, message_key(&m.room_id, m.seq), value));
                }
                WriteOp::Receipt { room, user, seq } => {
                    let key = receipt_key(room, user);
                    let current = match receipts.iter().rev().find(|(k, _)| k == &key) {
                        Some((_, s)) => *s,
                        None => match pending.receipts.get(&key) {
                            Some(s) => *s,
                            None => match self.tables.receipts.get(&key).map_err(unavailable)? {
                                Some(v) => be_u64(&v)?,
                                None => 0,
                            },
                        },
                    };
                    if *seq > current {
                        receipts.push((key.clone(), *seq));
                        rows.push((false, key, seq.to_be_bytes().to_vec()));
                    }
                }
            }
        }
        for (is_msg, k, v) in rows {
            let ks = if is_msg {
                &self.tables.messages
            } else {
                &self.tables.receipts
            };
            batch.insert(ks, k, v);
        }
        pending.seqs.extend(seqs);
        pending.receipts.extend(receipts);
        Ok(())
    }

    fn commit(&mut self, batch: fjall::OwnedWriteBatch, pending: Pending) {
        if pending.replies.is_empty() && batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = if batch.is_empty() {
            Ok(())
        } else {
            batch.commit().map_err(unavailable)
        };
        metrics::histogram!("parley_store_commit_ms").record(started.elapsed().as_secs_f64() * 1e3);
        match &result {
            Ok(()) => self.last_seq.extend(pending.seqs),
            Err(e) => {
                tracing::error!(error = %e, "history commit failed");
                // The disk is the truth again: forget what this batch would have changed.
                for room in pending.seqs.keys() {
                    self.last_seq.remove(room);
                }
            }
        }
        for (reply, queued) in pending.replies {
            metrics::histogram!("parley_store_write_latency_ms")
                .record(queued.elapsed().as_secs_f64() * 1e3);
            let _ = reply.send(result.clone());
        }
    }
}
