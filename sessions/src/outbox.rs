//! A session's bounded outbound queue, as handed to the room layer.
//!
//! The queue ([`OutboxRx`]) is read by the session actor (`ctx.add_stream`). Fan-out
//! uses `try_send`: it never waits. When the queue is full the hub calls [`PushSink::evict`],
//! which wakes the session (through the same stream: [`Delivery::Evicted`]) to close with 4008
//! (`slow_consumer`). A client that stops reading entirely also stops its actor from being
//! polled; for that case the node sets `TCP_USER_TIMEOUT` on every socket and, as a last
//! resort, [`crate::conn::KillSwitch`] shuts the socket down if the actor has not stopped
//! `grace` after the eviction.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use cluster_proto::{Push, PushError, PushSink};
use futures::Stream;
use smallvec::SmallVec;

use crate::conn::KillSwitch;
use crate::doorbell::Doorbell;

/// Capacity of a new queue (pushes, 8 B each): fewer regrowths under load.
const FIRST_CAPACITY: usize = 8;
/// A drained queue keeps up to this capacity (128 B) for the next pushes, so a session that
/// gets one push at a time allocates nothing per push; a larger one (after a burst) is freed.
const KEEP_CAPACITY: usize = 16;

pub struct Outbox {
    queue: Arc<Queue>,
    kill: Arc<KillSwitch>,
    grace: Duration,
}

/// The session's ends of its outbox.
pub struct OutboxEnds {
    pub rx: OutboxRx,
    pub kill: Arc<KillSwitch>,
}

/// A bounded single-consumer queue: a lock around a `VecDeque` and the reader's waker.
///
/// Not a tokio mpsc: one costs ~1 KiB per session before its first message (a cache-padded
/// channel of ~512 B and a first block of 32 slots), about an eighth of an idle connection's
/// budget (issue 6: ≤ 8 KiB). This one is ~100 B, plus at most 128 B of queue kept once it
/// has carried a push. Producers (room fan-out, on the core threads) and the one consumer (the
/// session's task) hold the lock for a push or a pop only.
struct Queue {
    cap: usize,
    /// The reader's worker thread's doorbell: wakes from other threads go through it.
    doorbell: Option<Arc<Doorbell>>,
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Arc<Push>>,
    reader: Option<Waker>,
    /// The reader is gone: refuse pushes.
    reader_gone: bool,
    /// The [`Outbox`] (every producer's handle) is gone: end the stream once drained.
    writer_gone: bool,
    /// The room layer evicted the session (its queue was full); not yet told to the reader.
    evicted: bool,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Outbox {
    /// A queue of `capacity` pushes; `kill` is fired `grace` after an eviction.
    pub fn new(capacity: usize, kill: KillSwitch, grace: Duration) -> (Arc<Outbox>, OutboxEnds) {
        let queue = Arc::new(Queue {
            cap: capacity.max(1),
            doorbell: Doorbell::current(),
            state: Mutex::new(QueueState::default()),
        });
        let kill = Arc::new(kill);
        let outbox = Arc::new(Outbox {
            queue: queue.clone(),
            kill: kill.clone(),
            grace,
        });
        let rx = OutboxRx { queue, spent: 0 };
        (outbox, OutboxEnds { rx, kill })
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let waker = {
            let mut st = self.queue.state();
            st.writer_gone = true;
            st.reader.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl PushSink for Outbox {
    fn try_push(&self, push: &Arc<Push>) -> Result<(), PushError> {
        let waker = {
            let mut st = self.queue.state();
            if st.reader_gone {
                return Err(PushError::Closed);
            }
            if st.items.len() >= self.queue.cap {
                return Err(PushError::Full);
            }
            if st.items.capacity() == 0 {
                // The reader took the last batch: start the next one with room for a few.
                st.items.reserve_exact(FIRST_CAPACITY);
            }
            st.items.push_back(push.clone());
            st.reader.take()
        };
        self.queue.wake(waker);
        Ok(())
    }

    fn evict(&self) {
        let waker = {
            let mut st = self.queue.state();
            st.evicted = true;
            st.reader.take()
        };
        self.queue.wake(waker);
        self.kill.clone().fire_after(self.grace);
    }
}

impl Queue {
    fn wake(&self, waker: Option<Waker>) {
        if let Some(w) = waker {
            match &self.doorbell {
                Some(bell) => bell.wake(w),
                None => w.wake(),
            }
        }
    }
}

/// The session's end of its outbox: the pushes in order, as batches of what is queued when the
/// session looks (one lock, one actor message and one pass of the session's encoder per batch,
/// not per push); ends when the outbox is dropped and drained.
///
/// A session takes at most [`POLL_BYTES`] of payload (and [`MAX_BATCH`] pushes) per poll: past
/// that the stream says `Pending` and wakes its task again, so the connection writes, or stops
/// polling the session while its socket is full, before more is encoded. So a connection holds
/// at most its write-pause threshold plus about `POLL_BYTES` (plus one push) of encoded frames;
/// the rest wait here as `Arc`s shared with the other recipients.
pub struct OutboxRx {
    queue: Arc<Queue>,
    /// Payload bytes handed out in the current poll of the session.
    spent: usize,
}

/// Most pushes in one batch.
pub const MAX_BATCH: usize = 256;
/// Payload bytes a session takes per poll before letting its connection write.
pub const POLL_BYTES: usize = 64 * 1024;

/// Pushes taken from the outbox at once, oldest first; up to 8 without an allocation.
pub type Batch = SmallVec<[Arc<Push>; 8]>;

/// What the outbox hands its session.
pub enum Delivery {
    Pushes(Batch),
    /// The room layer evicted the session as a slow consumer: close with 4008.
    Evicted,
}

impl Stream for OutboxRx {
    type Item = Delivery;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        let this = self.get_mut();
        let mut st = this.queue.state();
        if std::mem::take(&mut st.evicted) {
            return Poll::Ready(Some(Delivery::Evicted));
        }
        if st.items.is_empty() {
            this.spent = 0;
            if st.writer_gone {
                return Poll::Ready(None);
            }
            match &mut st.reader {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        if this.spent >= POLL_BYTES {
            // Let the connection write what this poll produced first.
            this.spent = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let (mut n, mut bytes) = (0, 0);
        for p in st.items.iter().take(MAX_BATCH) {
            if n > 0 && this.spent + bytes + p.data().len() > POLL_BYTES {
                break;
            }
            n += 1;
            bytes += p.data().len();
        }
        this.spent += bytes.max(1);
        let batch: Batch = st.items.drain(..n).collect();
        if st.items.is_empty() && st.items.capacity() > KEEP_CAPACITY {
            // After a burst: the next push starts a small queue again.
            st.items = VecDeque::new();
        }
        Poll::Ready(Some(Delivery::Pushes(batch)))
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut st = self.queue.state();
        st.reader_gone = true;
        st.reader = None;
        st.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_proto::{Push, PushKind};
    use futures::StreamExt;

    fn push(n: u64) -> Arc<Push> {
        Push::new(PushKind::NewMessage, None, Some(n), &n)
    }

    fn outbox(cap: usize) -> (Arc<Outbox>, OutboxRx) {
        let (o, ends) = Outbox::new(cap, KillSwitch::new(None), Duration::from_secs(1));
        (o, ends.rx)
    }

    #[tokio::test]
    async fn pushes_arrive_in_order_and_the_stream_ends_with_the_outbox() {
        let (o, mut rx) = outbox(8);
        let sent: Vec<_> = (0..5).map(push).collect();
        for p in &sent {
            o.try_push(p).unwrap();
        }
        drop(o);
        let got: Vec<_> = (&mut rx)
            .collect::<Vec<Delivery>>()
            .await
            .into_iter()
            .flat_map(pushes)
            .collect();
        assert_eq!(got.len(), 5);
        for (a, b) in got.iter().zip(&sent) {
            assert!(Arc::ptr_eq(a, b));
        }
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_a_gone_reader_closes() {
        let (o, rx) = outbox(2);
        o.try_push(&push(1)).unwrap();
        o.try_push(&push(2)).unwrap();
        assert!(matches!(o.try_push(&push(3)), Err(PushError::Full)));
        drop(rx);
        assert!(matches!(o.try_push(&push(4)), Err(PushError::Closed)));
    }

    #[tokio::test]
    async fn a_waiting_reader_is_woken_by_a_push_from_another_thread() {
        let (o, mut rx) = outbox(4);
        let reader =
            tokio::spawn(async move { rx.next().await.map(pushes).is_some_and(|b| b.len() == 1) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::thread::spawn(move || o.try_push(&push(1)).unwrap())
            .join()
            .unwrap();
        assert!(reader.await.unwrap());
    }

    #[tokio::test]
    async fn batches_take_what_is_queued_in_order_and_a_burst_leaves_no_buffer() {
        let (o, mut rx) = outbox(1024);
        for n in 0..20 {
            o.try_push(&push(n)).unwrap();
        }
        let batch = pushes(rx.next().await.unwrap());
        assert_eq!(batch.len(), 20);
        assert!(batch.iter().zip(0..).all(|(p, n)| p.seq == Some(n)));
        assert_eq!(rx.queue.state().items.capacity(), 0);
        // One at a time: the small queue is kept for the next push.
        o.try_push(&push(20)).unwrap();
        assert_eq!(pushes(rx.next().await.unwrap()).len(), 1);
        assert!(rx.queue.state().items.capacity() <= KEEP_CAPACITY);
        assert!(rx.queue.state().items.capacity() > 0);
    }

    #[tokio::test]
    async fn an_eviction_reaches_the_reader_once_before_its_pushes() {
        let (o, mut rx) = outbox(2);
        o.try_push(&push(1)).unwrap();
        o.evict();
        assert!(matches!(rx.next().await, Some(Delivery::Evicted)));
        assert_eq!(pushes(rx.next().await.unwrap()).len(), 1);
    }

    fn pushes(d: Delivery) -> Batch {
        match d {
            Delivery::Pushes(b) => b,
            Delivery::Evicted => panic!("unexpected eviction"),
        }
    }

    #[tokio::test]
    async fn a_long_queue_comes_in_batches_bounded_per_poll() {
        let (o, mut rx) = outbox(1024);
        // 1 KiB payloads: 64 fit in one poll's budget.
        let text = "x".repeat(1024);
        let sent: Vec<_> = (0..200)
            .map(|n| Push::new(PushKind::NewMessage, None, Some(n), &text))
            .collect();
        for p in &sent {
            o.try_push(p).unwrap();
        }
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (mut seen, mut in_poll, mut most_in_poll, mut yields) = (Vec::new(), 0, 0, 0);
        while seen.len() < 200 {
            match Pin::new(&mut rx).poll_next(&mut cx) {
                Poll::Ready(Some(d)) => {
                    let b = pushes(d);
                    in_poll += b.iter().map(|p| p.data().len()).sum::<usize>();
                    seen.extend(b.iter().map(|p| p.seq.unwrap()));
                }
                Poll::Pending => {
                    yields += 1;
                    most_in_poll = most_in_poll.max(in_poll);
                    in_poll = 0;
                }
                Poll::Ready(None) => unreachable!("the outbox is alive"),
            }
        }
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        assert!(yields >= 3, "yielded {yields} times");
        // The budget, plus at most the one push that crossed it.
        let one = sent[0].data().len();
        assert!(
            most_in_poll <= POLL_BYTES + one,
            "{most_in_poll} bytes in one poll"
        );
    }
}
