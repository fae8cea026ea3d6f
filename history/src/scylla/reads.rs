//! The read path: history pages over `(room, bucket)` partitions, receipts, dedupe look-ups.
//!
//! Every read first takes the room's committed `last_seq` from `room_state` and never returns a
//! message above it: rows of a write whose commit failed may exist above `last_seq` until the
//! room writes that seq again, and they were never acknowledged. Because committed seqs are
//! gap-free, the partitions to visit are computed: from `bucket(upper)` down (newest first) or
//! from `bucket(lower)` up (oldest first), stopping once `limit` rows are in. A page rarely
//! touches more than two partitions.

use cluster_proto::{ChatMessage, RoomId, UserId};
use scylla::response::query_result::QueryResult;
use scylla::value::CqlTimestamp;
use scylla::DeserializeRow;

use super::core::Core;
use super::error::ScyllaError;
use crate::store::{Receipt, StoreError};

/// One row of `messages` (columns as in [`super::core::MESSAGE_COLUMNS`]).
#[derive(Debug, DeserializeRow)]
pub(crate) struct MessageRow {
    room_id: String,
    #[allow(dead_code)]
    bucket: i64,
    seq: i64,
    msg_id: String,
    user_id: String,
    username: String,
    body: String,
    attachments: String,
    sent_at: CqlTimestamp,
    client_msg_id: Option<String>,
}

impl TryFrom<MessageRow> for ChatMessage {
    type Error = StoreError;

    fn try_from(r: MessageRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("message row: bad {what}"));
        Ok(ChatMessage {
            id: r.msg_id,
            room_id: RoomId::new(&r.room_id).map_err(|_| corrupt("room_id"))?,
            seq: u64::try_from(r.seq).map_err(|_| corrupt("seq"))?,
            user_id: UserId::new(&r.user_id).map_err(|_| corrupt("user_id"))?,
            username: r.username,
            text: r.body,
            attachments: r.attachments,
            timestamp: r.sent_at.0,
            client_msg_id: r.client_msg_id,
        })
    }
}

fn row_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// CQL's LIMIT is an int; a page never needs more than a bucket anyway.
fn cql_limit(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl Core {
    /// The room's committed last seq (0 for an unknown room).
    pub async fn load_last_seq(&self, room: &RoomId) -> Result<u64, ScyllaError> {
        let res = self
            .retrier
            .run("select room_state", || {
                self.session
                    .execute_unpaged(&self.st.get_last_seq, (room.as_str(),))
            })
            .await?;
        let row = res
            .into_rows_result()
            .map_err(|e| ScyllaError::Row(e.to_string()))?
            .maybe_first_row::<(Option<i64>,)>()
            .map_err(|e| ScyllaError::Row(e.to_string()))?;
        match row {
            None | Some((None,)) => Ok(0),
            Some((Some(s),)) => {
                u64::try_from(s).map_err(|_| ScyllaError::Row(format!("room_state.last_seq {s}")))
            }
        }
    }

    fn to_messages(res: QueryResult) -> Result<Vec<ChatMessage>, StoreError> {
        let rows = res.into_rows_result().map_err(row_err)?;
        let iter = rows.rows::<MessageRow>().map_err(row_err)?;
        iter.map(|r| r.map_err(row_err).and_then(ChatMessage::try_from))
            .collect()
    }

    /// Up to `limit` messages with `seq <= upper` (and `<= last_seq`), returned oldest first.
    pub async fn read_newest(
        &self,
        room: &RoomId,
        upper: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let last = self.load_last_seq(room).await?;
        let upper = upper.min(last);
        if upper == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out: Vec<ChatMessage> = Vec::with_capacity(limit.min(1024));
        let mut bucket = self.bucket(upper);
        while out.len() < limit && bucket >= 0 {
            let top = out.last().map_or(upper, |m| m.seq.saturating_sub(1));
            if top == 0 {
                break;
            }
            let want = cql_limit(limit - out.len());
            let res = self
                .retrier
                .run("select messages desc", || {
                    self.session.execute_unpaged(
                        &self.st.select_desc,
                        (room.as_str(), bucket, top as i64, want),
                    )
                })
                .await?;
            let mut page = Self::to_messages(res)?;
            out.append(&mut page);
            bucket -= 1;
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` messages with `seq >= lower` (and `<= last_seq`), oldest first.
    pub async fn read_oldest(
        &self,
        room: &RoomId,
        lower: u64,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let last = self.load_last_seq(room).await?;
        let lower = lower.max(1);
        if lower > last || limit == 0 {
            return Ok(Vec::new());
        }
        let mut out: Vec<ChatMessage> = Vec::with_capacity(limit.min(1024));
        let (mut bucket, last_bucket) = (self.bucket(lower), self.bucket(last));
        while out.len() < limit && bucket <= last_bucket {
            let from = out.last().map_or(lower, |m| m.seq + 1);
            let want = cql_limit(limit - out.len());
            let res = self
                .retrier
                .run("select messages asc", || {
                    self.session.execute_unpaged(
                        &self.st.select_asc,
                        (room.as_str(), bucket, from as i64, last as i64, want),
                    )
                })
                .await?;
            let mut page = Self::to_messages(res)?;
            out.append(&mut page);
            bucket += 1;
        }
        Ok(out)
    }

    /// Up to `limit` receipts of `room`, by user id.
    pub async fn read_receipts(
        &self,
        room: &RoomId,
        limit: usize,
    ) -> Result<Vec<Receipt>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let res = self
            .retrier
            .run("select receipts", || {
                self.session
                    .execute_unpaged(&self.st.get_receipts, (room.as_str(), cql_limit(limit)))
            })
            .await?;
        let rows = res.into_rows_result().map_err(row_err)?;
        let mut out = Vec::new();
        for r in rows.rows::<(String, Option<i64>)>().map_err(row_err)? {
            let (user, seq) = r.map_err(row_err)?;
            let Some(seq) = seq else { continue };
            out.push(Receipt {
                user: UserId::new(&user).map_err(|_| row_err("receipt: bad user_id"))?,
                seq: u64::try_from(seq).map_err(|_| row_err("receipt: bad seq"))?,
            });
        }
        Ok(out)
    }

    /// The committed seq of the message `user` sent with `client_msg_id`, if it is still
    /// remembered: its dedupe row is in one of the room's newest two buckets and younger than
    /// `dedupe_ttl`. The row is checked against the message itself, so a row left by a failed
    /// write whose seq was then reused by another message is ignored.
    pub async fn find_client_msg(
        &self,
        room: &RoomId,
        user: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<u64>, StoreError> {
        let last = self.load_last_seq(room).await?;
        if last == 0 {
            return Ok(None);
        }
        let newest = self.bucket(last);
        for bucket in [newest, newest - 1].into_iter().filter(|b| *b >= 0) {
            let res = self
                .retrier
                .run("select client_msg_ids", || {
                    self.session.execute_unpaged(
                        &self.st.get_client_msg,
                        (room.as_str(), bucket, user.as_str(), client_msg_id),
                    )
                })
                .await?;
            let row = res
                .into_rows_result()
                .map_err(row_err)?
                .maybe_first_row::<(Option<i64>,)>()
                .map_err(row_err)?;
            let Some((Some(seq),)) = row else { continue };
            let seq = u64::try_from(seq).map_err(|_| row_err("client_msg_ids: bad seq"))?;
            if seq > last {
                continue;
            }
            let res = self
                .retrier
                .run("select message", || {
                    self.session.execute_unpaged(
                        &self.st.get_message,
                        (room.as_str(), self.bucket(seq), seq as i64),
                    )
                })
                .await?;
            let found = Self::to_messages(res)?
                .into_iter()
                .find(|m| &m.user_id == user && m.client_msg_id.as_deref() == Some(client_msg_id));
            if let Some(m) = found {
                return Ok(Some(m.seq));
            }
        }
        Ok(None)
    }
}
