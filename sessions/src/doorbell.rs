//! One wake-up per worker thread for a burst of pushes, instead of one per session.
//!
//! Sessions run on actix's worker threads (a tokio current-thread runtime with a `LocalSet`
//! each); room fan-out runs on the core threads. Waking a session's task from another thread
//! costs a lock on the worker's remote queue and an `eventfd` write to unpark it, every time:
//! a fan-out of one message to 100 sessions made ~100 `write(2)` calls, as many as the socket
//! writes themselves (issue 6: 85,000 of each per second at 100,000 deliveries/s with 10 rooms
//! of 100 members, most of a core on this 2-core VM).
//!
//! A [`Doorbell`] belongs to one worker thread. A remote waker hands its session's waker to the
//! worker's doorbell; the first one since the worker last looked rings it (one remote wake-up),
//! the others only join the list. The doorbell's relay task, on the worker, wakes every listed
//! session from the worker's own thread: a local queue push, no syscall. Latency is unchanged
//! (the ring is immediate); only the number of cross-thread wake-ups falls to one per worker
//! per burst.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;

use futures::task::AtomicWaker;

/// A worker thread's relay of wake-ups.
pub struct Doorbell {
    thread: ThreadId,
    pending: Mutex<Vec<Waker>>,
    /// Set by the first waker since the relay last drained `pending`.
    rung: AtomicBool,
    /// The relay task runs: false once its runtime dropped it.
    alive: AtomicBool,
    relay: AtomicWaker,
}

thread_local! {
    static LOCAL: RefCell<Option<Arc<Doorbell>>> = const { RefCell::new(None) };
}

/// Most wakers a relay keeps room for while idle.
const IDLE_CAPACITY: usize = 256;

impl Doorbell {
    /// Starts this thread's doorbell (its relay task) unless one runs. Call it on a worker
    /// thread, inside its runtime: the relay is spawned with `tokio::task::spawn_local`, so
    /// the thread must run a `LocalSet` or a local runtime (actix's workers do).
    pub fn install() -> Arc<Doorbell> {
        LOCAL.with(|slot| {
            let mut slot = slot.borrow_mut();
            if let Some(d) = slot.as_ref().filter(|d| d.alive.load(Ordering::Acquire)) {
                return d.clone();
            }
            let bell = Arc::new(Doorbell {
                thread: std::thread::current().id(),
                pending: Mutex::new(Vec::new()),
                rung: AtomicBool::new(false),
                alive: AtomicBool::new(true),
                relay: AtomicWaker::new(),
            });
            tokio::task::spawn_local(Relay(bell.clone()));
            *slot = Some(bell.clone());
            bell
        })
    }

    /// This thread's doorbell, if [`Doorbell::install`] started one that still runs. `None`:
    /// wakers are woken directly.
    pub fn current() -> Option<Arc<Doorbell>> {
        LOCAL.with(|slot| {
            slot.borrow()
                .as_ref()
                .filter(|d| d.alive.load(Ordering::Acquire))
                .cloned()
        })
    }

    fn pending(&self) -> MutexGuard<'_, Vec<Waker>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes `waker`, a task of this doorbell's thread: directly when called on that thread,
    /// else through the relay.
    pub fn wake(&self, waker: Waker) {
        if std::thread::current().id() == self.thread || !self.alive.load(Ordering::Acquire) {
            waker.wake();
            return;
        }
        self.pending().push(waker);
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.relay.wake();
        }
        // The relay may have stopped between the check and the push: nothing else would
        // ever wake what was just listed.
        if !self.alive.load(Ordering::Acquire) {
            self.wake_all();
        }
    }

    fn wake_all(&self) {
        let wakers = {
            let mut p = self.pending();
            if p.capacity() > IDLE_CAPACITY {
                std::mem::take(&mut *p)
            } else {
                p.drain(..).collect()
            }
        };
        for w in wakers {
            w.wake();
        }
    }
}

/// The relay task: never finishes; when its runtime drops it the doorbell goes direct.
struct Relay(Arc<Doorbell>);

impl Future for Relay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let bell = &self.0;
        bell.relay.register(cx.waker());
        bell.rung.store(false, Ordering::Release);
        bell.wake_all();
        Poll::Pending
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        self.0.wake_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task that counts its polls and finishes at `target`.
    struct Counted(Arc<AtomicUsize>, Arc<Mutex<Option<Waker>>>);

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            *self.1.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[actix_web::test]
    async fn wakes_from_other_threads_reach_the_worker_tasks() {
        let bell = Doorbell::install();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (n, w) = (Arc::new(AtomicUsize::new(0)), Arc::new(Mutex::new(None)));
                actix::spawn(Counted(n.clone(), w.clone()));
                (n, w)
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(tasks.iter().all(|(n, _)| n.load(Ordering::SeqCst) == 1));
        let wakers: Vec<Waker> = tasks
            .iter()
            .map(|(_, w)| w.lock().unwrap().clone().unwrap())
            .collect();
        let remote = bell.clone();
        std::thread::spawn(move || {
            for w in wakers {
                remote.wake(w);
            }
        })
        .join()
        .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(tasks.iter().all(|(n, _)| n.load(Ordering::SeqCst) == 2));
        // The same thread gets the same doorbell.
        assert!(Arc::ptr_eq(&bell, &Doorbell::current().unwrap()));
    }

    #[test]
    fn none_until_installed() {
        assert!(std::thread::spawn(Doorbell::current)
            .join()
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_new_system_on_the_same_thread_gets_a_live_doorbell() {
        let first = actix::System::new().block_on(async { Doorbell::install() });
        assert!(!first.alive.load(Ordering::SeqCst));
        assert!(Doorbell::current().is_none());
        drop(first);
        let sys = actix::System::new();
        let (alive, same) = sys.block_on(async {
            let d = Doorbell::install();
            (d.alive.load(Ordering::SeqCst), d)
        });
        assert!(alive);
        drop(same);
    }
}
