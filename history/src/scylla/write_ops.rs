//! The CQL requests of one write group (see [`super::writer`] for the protocol).
//!
//! Phase 1 sends, all at once (bounded by the in-flight semaphore): the message rows of each
//! `(room, bucket)` partition together with their dedupe rows (same partition key), either as
//! UNLOGGED batches of at most `batch_max_bytes` (a batch within one partition key is a single
//! mutation: atomic, isolated, one replica round trip) or as pipelined single INSERTs, all
//! with the group's epoch-derived timestamp (see [`super::fence`]); one receipt update per
//! receipt of the receipt-only calls. Phase 2, only after phase 1 is fully acknowledged,
//! commits `room_state.last_seq` with a lightweight transaction conditioned on this handle's
//! epoch (the fence). Phase 3 writes the receipts of calls that also carry messages, so a
//! fenced call leaves nothing visible.

use std::collections::BTreeMap;

use cluster_proto::{ChatMessage, RoomId, UserId};
use futures::future::{try_join_all, BoxFuture};
use futures::FutureExt;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::serialize::SerializationError;
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlTimestamp;

use super::config::WriteMode;
use super::core::Core;
use super::error::ScyllaError;
use super::fence::write_timestamp;
use super::group::Group;
use super::writer::QUEUE_NAME;
use crate::store::StoreError;

/// The columns of [`super::core::MESSAGE_COLUMNS`], then the write timestamp.
type MessageValues<'a> = (
    &'a str,
    i64,
    i64,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    &'a str,
    CqlTimestamp,
    Option<&'a str>,
    i64,
);

/// `room_id, bucket, user_id, client_msg_id, seq, ttl, timestamp`.
type ClientIdValues<'a> = (&'a str, i64, &'a str, &'a str, i64, i32, i64);

/// A row of a mixed batch (messages and their dedupe rows).
enum BatchRow<'a> {
    Message(MessageValues<'a>),
    ClientId(ClientIdValues<'a>),
}

impl SerializeRow for BatchRow<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter,
    ) -> Result<(), SerializationError> {
        match self {
            BatchRow::Message(v) => v.serialize(ctx, writer),
            BatchRow::ClientId(v) => v.serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Rough size of a message's bound values (and its dedupe row's), for splitting batches.
fn value_bytes(m: &ChatMessage) -> usize {
    let cmid = m.client_msg_id.as_ref().map_or(0, |c| {
        32 + c.len() + m.room_id.as_str().len() + m.user_id.as_str().len()
    });
    64 + m.id.len()
        + m.room_id.as_str().len()
        + m.user_id.as_str().len()
        + m.username.len()
        + m.text.len()
        + m.attachments.len()
        + cmid
}

impl Core {
    fn message_values<'a>(&self, m: &'a ChatMessage, ts: i64) -> MessageValues<'a> {
        (
            m.room_id.as_str(),
            self.bucket(m.seq),
            m.seq as i64,
            &m.id,
            m.user_id.as_str(),
            &m.username,
            &m.text,
            &m.attachments,
            CqlTimestamp(m.timestamp),
            m.client_msg_id.as_deref(),
            ts,
        )
    }

    fn client_id_values<'a>(&self, m: &'a ChatMessage, ts: i64) -> Option<ClientIdValues<'a>> {
        m.client_msg_id.as_deref().map(|cmid| {
            (
                m.room_id.as_str(),
                self.bucket(m.seq),
                m.user_id.as_str(),
                cmid,
                m.seq as i64,
                self.dedupe_ttl_secs,
                ts,
            )
        })
    }

    /// Runs one request under the in-flight bound, with retries.
    pub(super) async fn limited<T, F, Fut>(
        &self,
        what: &'static str,
        f: F,
    ) -> Result<T, ScyllaError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, scylla::errors::ExecutionError>>,
    {
        let _permit = self
            .inflight
            .acquire()
            .await
            .map_err(|_| ScyllaError::Config(format!("{QUEUE_NAME} semaphore closed")))?;
        self.retrier.run(what, f).await
    }

    async fn insert_batch(&self, rows: &[&ChatMessage], ts: i64) -> Result<(), ScyllaError> {
        let mut batch = Batch::new(BatchType::Unlogged);
        batch.set_is_idempotent(true);
        let mut values: Vec<BatchRow<'_>> = Vec::with_capacity(rows.len() * 2);
        for m in rows {
            batch.append_statement(self.st.insert_message.clone());
            values.push(BatchRow::Message(self.message_values(m, ts)));
            if let Some(v) = self.client_id_values(m, ts) {
                batch.append_statement(self.st.insert_client_msg.clone());
                values.push(BatchRow::ClientId(v));
            }
        }
        self.limited("batch insert messages", || {
            self.session.batch(&batch, &values)
        })
        .await
        .map(|_| ())
    }

    async fn insert_one(&self, m: &ChatMessage, ts: i64) -> Result<(), ScyllaError> {
        let values = self.message_values(m, ts);
        let insert = self.limited("insert message", || {
            self.session
                .execute_unpaged(&self.st.insert_message, values)
        });
        match self.client_id_values(m, ts) {
            None => insert.await.map(|_| ()),
            Some(v) => {
                let dedupe = self.limited("insert client_msg_id", || {
                    self.session.execute_unpaged(&self.st.insert_client_msg, v)
                });
                futures::try_join!(insert, dedupe).map(|_| ())
            }
        }
    }

    /// One receipt update per receipt, as futures.
    fn receipt_writes<'a>(
        &'a self,
        receipts: &'a [(RoomId, UserId, u64)],
    ) -> impl Iterator<Item = BoxFuture<'a, Result<(), ScyllaError>>> + 'a {
        receipts.iter().map(move |(room, user, seq)| {
            // USING TIMESTAMP seq: the highest seq wins, whatever the order of arrival.
            let values = (*seq as i64, *seq as i64, room.as_str(), user.as_str());
            self.limited("update receipt", move || {
                self.session.execute_unpaged(&self.st.set_receipt, values)
            })
            .map(|r| r.map(|_| ()))
            .boxed()
        })
    }

    /// Writes a group without messages: its receipts.
    pub async fn write_unfenced(&self, g: &Group) -> Result<(), StoreError> {
        let all: Vec<_> = self
            .receipt_writes(&g.receipts)
            .chain(self.receipt_writes(&g.late_receipts))
            .collect();
        try_join_all(all).await?;
        Ok(())
    }

    /// Writes a group with messages of `room`, owned by this handle at `epoch`: rows with
    /// the timestamp of the claim's `counter`-th group, then the fenced commit of `new_last`,
    /// then the receipts of the calls with messages.
    pub async fn write_fenced(
        &self,
        room: &RoomId,
        epoch: u64,
        counter: u64,
        new_last: u64,
        g: &Group,
    ) -> Result<(), StoreError> {
        let ts = write_timestamp(epoch, counter);
        let mut phase1: Vec<BoxFuture<'_, Result<(), ScyllaError>>> = Vec::new();

        let mut partitions: BTreeMap<i64, Vec<&ChatMessage>> = BTreeMap::new();
        for m in &g.messages {
            partitions.entry(self.bucket(m.seq)).or_default().push(m);
        }
        for rows in partitions.into_values() {
            match self.write_mode {
                WriteMode::Individual => {
                    phase1.extend(rows.into_iter().map(|m| self.insert_one(m, ts).boxed()));
                }
                WriteMode::Batch => {
                    let mut chunk: Vec<&ChatMessage> = Vec::new();
                    let mut bytes = 0;
                    for m in rows {
                        let b = value_bytes(m);
                        if !chunk.is_empty() && bytes + b > self.batch_max_bytes {
                            let full = std::mem::take(&mut chunk);
                            phase1.push(async move { self.insert_batch(&full, ts).await }.boxed());
                            bytes = 0;
                        }
                        bytes += b;
                        chunk.push(m);
                    }
                    if !chunk.is_empty() {
                        phase1.push(async move { self.insert_batch(&chunk, ts).await }.boxed());
                    }
                }
            }
        }
        phase1.extend(self.receipt_writes(&g.receipts));
        try_join_all(phase1).await?;

        self.commit_last_seq(room, epoch, new_last).await?;

        try_join_all(self.receipt_writes(&g.late_receipts)).await?;
        Ok(())
    }
}
