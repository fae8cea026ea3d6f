//! The ownership fence of the CQL store (guarantee 6 of [`crate::store`]).
//!
//! **Epochs.** `room_state.epoch` is the room's fence token. [`Core::claim_room`] raises it
//! with a lightweight transaction (Paxos, at the configured serial consistency):
//! `UPDATE room_state SET epoch = ? WHERE room_id = ? IF epoch = ? AND last_seq = ?`, with the
//! values a plain read just saw (`null` for a new room: a missing row or cell matches
//! `= null`). When the condition fails the answer carries the current `epoch` and
//! `last_seq`, and the claim tries again with those (bounded: [`CLAIM_ROUNDS`]). Because
//! `last_seq` is in the condition, the claim learns the room's committed last seq in the same
//! linearizable step that raises the epoch.
//!
//! **Cells of schema 1.** An LWT writes its cells with the Paxos ballot's timestamp, the
//! coordinator's clock. A `last_seq` cell written under schema 1 by a client whose clock was
//! ahead would shadow every fenced commit until that time has passed: a claim meanwhile would
//! read the old value and its owner would overwrite acknowledged messages. So the claim's
//! read also takes `WRITETIME(last_seq)`, and a claim fails with `Unavailable` while that lies
//! more than [`CLOCK_TOLERANCE_MICROS`] in the future of this node's clock (the room actor
//! retries its load later). The tolerance absorbs the ordinary skew between this node and the
//! coordinators, whose clocks stamp the commits of schema 2.
//!
//! **Fenced commit.** Once LWTs touch `room_state`, every write to it must be one (Paxos and
//! plain writes do not order against each other). The commit of a group (phase 2 of
//! [`super::write_ops`]) is `UPDATE room_state SET last_seq = ? WHERE room_id = ? IF epoch = ?`:
//! a stale owner's commit is not applied once a newer claim raised the epoch, and the group
//! fails with `Fenced`. Nothing of it is visible: reads never return rows above `last_seq`.
//! One LWT per commit group (per room and round), not per message.
//!
//! **Row timestamps.** A stale owner's phase-1 rows could still land on seqs the new owner
//! has committed (the stale writer does not know yet that it is stale). Cassandra and
//! ScyllaDB keep, per cell, the write with the highest timestamp; on a timestamp tie the
//! greater value wins (and a tombstone beats a live cell), which is arbitrary here. So every
//! message row and dedupe row is written `USING TIMESTAMP (epoch << 24) | counter`, where
//! `counter` counts the groups this handle wrote under this claim (one timestamp per group:
//! a group writes each seq once). Then:
//!
//! * a newer claim's rows always beat an older claim's: epochs only grow, and the counter
//!   never reaches into the epoch bits;
//! * within one claim a later group's rewrite of a seq (after a failed commit) beats the
//!   earlier rows;
//! * two writers never share a timestamp: each epoch belongs to one claim (the CAS), so no
//!   tie is ever broken by value.
//!
//! A claim chooses `max(previous + 1, (now_µs >> 24) + 2)`: the epoch's timestamps are at
//! least 2^24 µs (16.8 s) ahead of this node's clock, so they also beat rows written under
//! schema 1 with ordinary microsecond timestamps (left above `last_seq` by failed writes)
//! unless the old writer's clock was more than that far ahead. Epochs stay near the clock
//! (one step per 16.8 s) unless a room is claimed more often than that, which moves its
//! timestamps ahead by 16.8 s per extra claim. After 2^24 groups a claim renews its own epoch
//! (`UPDATE ... SET epoch = ? IF epoch = <ours>`): not applied means a newer owner, so the
//! handle is fenced. Any future write to `messages` or `client_msg_ids` (a delete, an edit)
//! must use the same timestamps, or it loses against them. Receipts are not fenced: they are
//! written `USING TIMESTAMP seq`, the highest seq wins.

use std::time::{SystemTime, UNIX_EPOCH};

use cluster_proto::RoomId;
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use super::core::Core;
use super::error::ScyllaError;
use crate::store::{Claim, StoreError};

/// Low bits of a write timestamp that count the groups of one claim.
pub(crate) const COUNTER_BITS: u32 = 24;

/// Epochs above this would not fit a positive 64-bit timestamp.
const MAX_EPOCH: u64 = (1 << (63 - COUNTER_BITS)) - 1;

/// How far in this node's future `WRITETIME(room_state.last_seq)` may be before a claim waits.
pub(crate) const CLOCK_TOLERANCE_MICROS: i64 = 1_000_000;

/// Compare-and-set rounds a claim makes against concurrent claims and commits.
pub(crate) const CLAIM_ROUNDS: usize = 16;

/// The write timestamp of the `counter`-th group of the claim `epoch`.
pub(crate) fn write_timestamp(epoch: u64, counter: u64) -> i64 {
    ((epoch << COUNTER_BITS) | counter) as i64
}

/// The epoch a claim raises `previous` to at `now_micros` (see the module docs).
pub(crate) fn next_epoch(previous: u64, now_micros: u64) -> u64 {
    previous
        .saturating_add(1)
        .max((now_micros >> COUNTER_BITS) + 2)
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The answer of a conditional update.
#[derive(Debug)]
struct Lwt {
    applied: bool,
    /// The current values when not applied (absent when the row does not exist).
    epoch: Option<i64>,
    last_seq: Option<i64>,
}

fn row_err(e: impl std::fmt::Display) -> ScyllaError {
    ScyllaError::Row(e.to_string())
}

fn lwt(res: QueryResult) -> Result<Lwt, ScyllaError> {
    let rows = res.into_rows_result().map_err(row_err)?;
    let specs = rows.column_specs();
    let epoch_at = specs.get_by_name("epoch").map(|(i, _)| i);
    let last_at = specs.get_by_name("last_seq").map(|(i, _)| i);
    let row = rows
        .maybe_first_row::<Row>()
        .map_err(row_err)?
        .ok_or_else(|| row_err("conditional update answered no row"))?;
    let applied = match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => *b,
        other => return Err(row_err(format!("no [applied] column: {other:?}"))),
    };
    let bigint = |at: Option<usize>| match at.and_then(|i| row.columns.get(i)) {
        None | Some(None) => Ok(None),
        Some(Some(CqlValue::BigInt(v))) => Ok(Some(*v)),
        Some(Some(other)) => Err(row_err(format!("room_state: unexpected {other:?}"))),
    };
    Ok(Lwt {
        applied,
        epoch: bigint(epoch_at)?,
        last_seq: bigint(last_at)?,
    })
}

fn non_negative(what: &str, v: Option<i64>) -> Result<u64, StoreError> {
    match v {
        None => Ok(0),
        Some(v) => {
            u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("room_state.{what} is {v}")))
        }
    }
}

fn checked_epoch(room: &RoomId, epoch: u64) -> Result<u64, StoreError> {
    if epoch > MAX_EPOCH {
        return Err(StoreError::Corrupt(format!(
            "epoch of room {room} would exceed {MAX_EPOCH}"
        )));
    }
    Ok(epoch)
}

impl Core {
    /// Raises the room's epoch above every earlier claim and returns it with the room's
    /// committed last seq (see the module docs).
    pub async fn claim_room(&self, room: &RoomId) -> Result<Claim, StoreError> {
        let res = self
            .retrier
            .run("select room_state for a claim", || {
                self.session
                    .execute_unpaged(&self.st.get_claim_state, (room.as_str(),))
            })
            .await?;
        let row = res
            .into_rows_result()
            .map_err(row_err)?
            .maybe_first_row::<(Option<i64>, Option<i64>, Option<i64>)>()
            .map_err(row_err)?;
        let (mut seen_epoch, mut seen_last, written) = row.unwrap_or((None, None, None));
        if let Some(written) = written {
            let now = now_micros() as i64;
            if written > now.saturating_add(CLOCK_TOLERANCE_MICROS) {
                metrics::counter!("parley_store_claim_future_writetime_total").increment(1);
                return Err(StoreError::Unavailable(format!(
                    "room {room}: room_state.last_seq was written {} ms in this node's future \
                     (a schema-1 writer with a fast clock?); a fenced commit would be shadowed \
                     until then",
                    (written - now) / 1000
                )));
            }
        }
        for _ in 0..CLAIM_ROUNDS {
            let previous = non_negative("epoch", seen_epoch)?;
            let epoch = checked_epoch(room, next_epoch(previous, now_micros()))?;
            let res = self
                .retrier
                .run("claim room_state", || {
                    self.session.execute_unpaged(
                        &self.st.claim_epoch,
                        (epoch as i64, room.as_str(), seen_epoch, seen_last),
                    )
                })
                .await?;
            let answer = lwt(res)?;
            if answer.applied {
                metrics::counter!("parley_store_claims_total").increment(1);
                return Ok(Claim {
                    epoch,
                    last_seq: non_negative("last_seq", seen_last)?,
                });
            }
            // Another claim or a commit came first: try again from what is there now.
            seen_epoch = answer.epoch;
            seen_last = answer.last_seq;
        }
        metrics::counter!("parley_store_claim_contended_total").increment(1);
        Err(StoreError::Unavailable(format!(
            "claim of room {room}: still contended after {CLAIM_ROUNDS} rounds"
        )))
    }

    /// Raises this owner's epoch `epoch` to a new one, unless a newer claim came first
    /// (`Ok(None)`: the handle is fenced).
    pub async fn renew_epoch(&self, room: &RoomId, epoch: u64) -> Result<Option<u64>, StoreError> {
        let new = checked_epoch(room, next_epoch(epoch, now_micros()))?;
        let res = self
            .retrier
            .run("renew room_state epoch", || {
                self.session.execute_unpaged(
                    &self.st.renew_epoch,
                    (new as i64, room.as_str(), epoch as i64),
                )
            })
            .await?;
        // A "not applied" after a timed-out first attempt may be that attempt's own effect;
        // reporting it as fenced is safe (the owner claims again), never the reverse.
        Ok(lwt(res)?.applied.then_some(new))
    }

    /// Commits `last_seq` for the room if its epoch is still `epoch` (phase 2).
    pub async fn commit_last_seq(
        &self,
        room: &RoomId,
        epoch: u64,
        last_seq: u64,
    ) -> Result<(), StoreError> {
        let mut attempts = 0u32;
        let res = self
            .limited("commit room_state", || {
                attempts += 1;
                self.session.execute_unpaged(
                    &self.st.commit_last_seq,
                    (last_seq as i64, room.as_str(), epoch as i64),
                )
            })
            .await?;
        if lwt(res)?.applied {
            return Ok(());
        }
        if attempts > 1 {
            // An earlier attempt failed with an unknown outcome and may have committed before
            // the newer claim: the commit is doubtful, not known to be fenced.
            return Err(StoreError::Unavailable(format!(
                "room {room}: commit outcome unknown (an attempt failed, then a newer claim \
                 than epoch {epoch} was found)"
            )));
        }
        metrics::counter!("parley_store_fenced_total").increment(1);
        Err(StoreError::Fenced {
            room: room.clone(),
            epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_order_by_epoch_then_counter() {
        let now = 1_760_000_000_000_000u64; // 2025, in µs
        let e1 = next_epoch(0, now);
        assert!(write_timestamp(e1, 0) as u64 > now + (1 << COUNTER_BITS) - 1);
        // A claim in the same instant still gets a higher epoch.
        let e2 = next_epoch(e1, now);
        assert_eq!(e2, e1 + 1);
        assert!(write_timestamp(e2, 0) > write_timestamp(e1, (1 << COUNTER_BITS) - 1));
        assert!(write_timestamp(e1, 7) > write_timestamp(e1, 6));
        // Later claims follow the clock.
        let later = now + 60_000_000;
        assert!(next_epoch(e2, later) > e2 + 2);
        // Epochs of this century fit the positive timestamp range with room to spare.
        assert!(next_epoch(0, now) < MAX_EPOCH / 1000);
        assert!(write_timestamp(MAX_EPOCH, (1 << COUNTER_BITS) - 1) > 0);
    }
}
