//! The supervisor with a tiny child that logs the numbers it is sent and hibernates on request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use ractor::{ActorProcessingErr, RpcReplyPort};
use tokio::sync::oneshot;

use super::*;

enum TestMsg {
    Add(u64),
    /// The log, and whether this child was started by a restart.
    Get(RpcReplyPort<(Vec<u64>, bool)>),
    /// Hibernates now.
    Hibernate,
    /// Hibernates, says so on `draining`, then holds its mailbox until `release`.
    HibernateHeld {
        draining: oneshot::Sender<()>,
        release: oneshot::Receiver<()>,
    },
    /// Stops for good (as an idle user): nothing is kept.
    Stop,
    Panic,
}

impl ractor::Message for TestMsg {}

struct TestChild;

struct TestState {
    log: Vec<u64>,
    restarted: bool,
    hibernating: bool,
}

impl Actor for TestChild {
    type Msg = TestMsg;
    type State = TestState;
    type Arguments = (bool, Option<Vec<u64>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<TestMsg>,
        (restarted, dormant): Self::Arguments,
    ) -> Result<TestState, ActorProcessingErr> {
        Ok(TestState {
            log: dormant.unwrap_or_default(),
            restarted,
            hibernating: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TestMsg>,
        msg: TestMsg,
        state: &mut TestState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TestMsg::Add(n) => state.log.push(n),
            TestMsg::Get(reply) => {
                let _ = reply.send((state.log.clone(), state.restarted));
            }
            TestMsg::Hibernate => {
                state.hibernating = true;
                myself.drain()?;
            }
            TestMsg::HibernateHeld { draining, release } => {
                state.hibernating = true;
                myself.drain()?;
                let _ = draining.send(());
                let _ = release.await;
            }
            TestMsg::Stop => myself.stop(None),
            TestMsg::Panic => panic!("test panic"),
        }
        Ok(())
    }
}

#[derive(Default)]
struct TestSpec {
    starts: Arc<AtomicUsize>,
}

impl ChildSpec for TestSpec {
    type Key = String;
    type Child = TestChild;
    type Dormant = Vec<u64>;
    const KIND: &'static str = "test";
    fn child(&self) -> TestChild {
        TestChild
    }
    fn args(
        &self,
        _key: &String,
        restarted: bool,
        dormant: Option<Vec<u64>>,
    ) -> (bool, Option<Vec<u64>>) {
        self.starts.fetch_add(1, Ordering::SeqCst);
        (restarted, dormant)
    }
    fn dormant(&self, _key: &String, mut state: BoxedState) -> Option<Vec<u64>> {
        let s: TestState = state.take().ok()?;
        s.hibernating.then_some(s.log)
    }
}

async fn directory() -> (Directory<TestSpec>, Arc<AtomicUsize>) {
    let spec = TestSpec::default();
    let starts = spec.starts.clone();
    let dir = Directory::start(spec, RestartPolicy::default())
        .await
        .unwrap();
    (dir, starts)
}

async fn log_of(child: &ChildRef<TestSpec>) -> (Vec<u64>, bool) {
    match child.call(TestMsg::Get, None).await {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        _ => panic!("child did not answer"),
    }
}

/// Waits (bounded) until `done` holds; the children work on other tasks.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn key(k: &str) -> String {
    k.to_string()
}

#[tokio::test]
async fn a_hibernated_child_is_woken_by_get_with_its_state() {
    let (dir, starts) = directory().await;
    let a = dir.get(&key("a")).await.unwrap();
    a.cast(TestMsg::Add(1)).unwrap();
    a.cast(TestMsg::Add(2)).unwrap();
    a.cast(TestMsg::Hibernate).unwrap();
    until("dormant", || dir.is_dormant(&key("a"))).await;
    assert_eq!((dir.len(), dir.dormant_len()), (0, 1));
    assert!(dir.peek(&key("a")).is_none(), "no actor while dormant");

    let b = dir.get(&key("a")).await.unwrap();
    assert_ne!(a.get_id(), b.get_id());
    assert_eq!(log_of(&b).await, (vec![1, 2], false));
    assert_eq!((dir.len(), dir.dormant_len()), (1, 0));
    assert_eq!(starts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_child_that_stops_for_good_leaves_nothing() {
    let (dir, _) = directory().await;
    let a = dir.get(&key("a")).await.unwrap();
    a.cast(TestMsg::Add(1)).unwrap();
    a.cast(TestMsg::Stop).unwrap();
    until("forgotten", || dir.is_empty()).await;
    assert_eq!(dir.dormant_len(), 0);
    // A cast to a key with neither child nor dormant state starts nothing.
    dir.cast(&key("a"), TestMsg::Add(2)).unwrap();
    let b = dir.get(&key("b")).await.unwrap(); // served after the cast
    assert_eq!(log_of(&b).await, (vec![], false));
    assert_eq!(dir.len(), 1);
}

#[tokio::test]
async fn casts_and_gets_during_the_drain_reach_the_successor_in_order() {
    let (dir, starts) = directory().await;
    let a = dir.get(&key("a")).await.unwrap();
    dir.cast(&key("a"), TestMsg::Add(1)).unwrap();
    let (draining, is_draining) = oneshot::channel();
    let (release, released) = oneshot::channel();
    a.cast(TestMsg::HibernateHeld {
        draining,
        release: released,
    })
    .unwrap();
    is_draining.await.unwrap();
    assert!(
        dir.peek(&key("a")).is_none(),
        "a draining child is not live"
    );
    assert!(
        a.cast(TestMsg::Add(99)).is_err(),
        "sends to it fail at once"
    );

    dir.cast(&key("a"), TestMsg::Add(2)).unwrap();
    // Each `get` sends its request on its first poll.
    let a_key = key("a");
    let mut gets: Vec<_> = (0..3).map(|_| Box::pin(dir.get(&a_key))).collect();
    for g in &mut gets {
        assert!(futures::poll!(g.as_mut()).is_pending());
    }
    dir.cast(&key("a"), TestMsg::Add(3)).unwrap();
    // Served after all of the above: they are queued behind the draining child.
    dir.get(&key("z")).await.unwrap();
    assert_eq!(
        starts.load(Ordering::SeqCst),
        2,
        "no successor while draining"
    );
    release.send(()).unwrap();

    let ids: Vec<_> = futures::future::join_all(gets)
        .await
        .into_iter()
        .map(|r| r.unwrap().get_id())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one successor for all");
    assert_ne!(ids[0], a.get_id());
    let b = dir.get(&key("a")).await.unwrap();
    assert_eq!(b.get_id(), ids[0]);
    assert_eq!(log_of(&b).await, (vec![1, 2, 3], false));
    assert_eq!(starts.load(Ordering::SeqCst), 3);
    assert_eq!((dir.len(), dir.dormant_len()), (2, 0));
}

#[tokio::test]
async fn a_cast_wakes_a_dormant_child() {
    let (dir, _) = directory().await;
    let a = dir.get(&key("a")).await.unwrap();
    a.cast(TestMsg::Add(1)).unwrap();
    a.cast(TestMsg::Hibernate).unwrap();
    until("dormant", || dir.is_dormant(&key("a"))).await;
    dir.cast(&key("a"), TestMsg::Add(2)).unwrap();
    dir.cast(&key("a"), TestMsg::Add(3)).unwrap();
    until("awake", || dir.peek(&key("a")).is_some()).await;
    let b = dir.get(&key("a")).await.unwrap();
    assert_eq!(log_of(&b).await, (vec![1, 2, 3], false));
}

#[tokio::test]
async fn a_panic_restarts_fresh() {
    let (dir, _) = directory().await;
    let a = dir.get(&key("a")).await.unwrap();
    a.cast(TestMsg::Add(1)).unwrap();
    a.cast(TestMsg::Panic).unwrap();
    until("restarted", || {
        dir.peek(&key("a"))
            .is_some_and(|b| b.get_id() != a.get_id())
    })
    .await;
    let b = dir.get(&key("a")).await.unwrap();
    assert_eq!(log_of(&b).await, (vec![], true), "state lost, restarted");
    assert_eq!(dir.dormant_len(), 0);
}

#[tokio::test]
async fn broadcast_wakes_only_the_dormant_children_it_concerns() {
    let (dir, starts) = directory().await;
    for (k, n) in [("a", 1), ("b", 2), ("c", 3)] {
        let c = dir.get(&key(k)).await.unwrap();
        c.cast(TestMsg::Add(n)).unwrap();
        if k != "c" {
            c.cast(TestMsg::Hibernate).unwrap();
        }
    }
    until("a and b dormant", || dir.dormant_len() == 2).await;
    // Live children get `None`; dormant ones are woken only for a message.
    dir.broadcast(|_, dormant| match dormant {
        None => Some(TestMsg::Add(10)),
        Some(log) if log.contains(&1) => Some(TestMsg::Add(10)),
        Some(_) => None,
    })
    .unwrap();
    until("a awake", || dir.peek(&key("a")).is_some()).await;
    assert!(dir.is_dormant(&key("b")));
    assert_eq!((dir.len(), dir.dormant_len()), (2, 1));
    let a = dir.get(&key("a")).await.unwrap();
    let c = dir.get(&key("c")).await.unwrap();
    assert_eq!(log_of(&a).await.0, vec![1, 10]);
    assert_eq!(log_of(&c).await.0, vec![3, 10]);
    assert_eq!(starts.load(Ordering::SeqCst), 4);
    dir.retain_dormant(|k, _| k != "b");
    assert_eq!(dir.dormant_len(), 0);
}

/// Records gauges (this thread only: `#[tokio::test]` runs every task on it).
#[derive(Default)]
struct Gauges(Arc<Mutex<HashMap<String, f64>>>);

struct GaugeCell(Arc<Mutex<HashMap<String, f64>>>, String);

impl GaugeFn for GaugeCell {
    fn increment(&self, v: f64) {
        *self.0.lock().unwrap().entry(self.1.clone()).or_default() += v;
    }
    fn decrement(&self, v: f64) {
        self.increment(-v);
    }
    fn set(&self, v: f64) {
        self.0.lock().unwrap().insert(self.1.clone(), v);
    }
}

impl Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        struct Nothing;
        impl CounterFn for Nothing {
            fn increment(&self, _: u64) {}
            fn absolute(&self, _: u64) {}
        }
        Counter::from_arc(Arc::new(Nothing))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        Gauge::from_arc(Arc::new(GaugeCell(self.0.clone(), name)))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test]
async fn gauges_count_live_and_dormant_children() {
    let gauges = Gauges::default();
    let values = gauges.0.clone();
    let _local = metrics::set_default_local_recorder(&gauges);
    let gauge = |name: &str| {
        let v = values.lock().unwrap();
        v.get(&format!("{name}{{kind=test}}"))
            .copied()
            .unwrap_or(0.0)
    };
    let (dir, _) = directory().await;
    for k in ["a", "b", "c"] {
        dir.get(&key(k)).await.unwrap();
    }
    for k in ["a", "b"] {
        dir.peek(&key(k)).unwrap().cast(TestMsg::Hibernate).unwrap();
    }
    until("two dormant", || dir.dormant_len() == 2).await;
    assert_eq!(gauge("parley_live_actors"), 1.0);
    assert_eq!(gauge("parley_dormant_actors"), 2.0);
    dir.get(&key("a")).await.unwrap();
    assert_eq!(gauge("parley_live_actors"), 2.0);
    assert_eq!(gauge("parley_dormant_actors"), 1.0);
    dir.retain_dormant(|_, _| false);
    assert_eq!(gauge("parley_dormant_actors"), 0.0);
}
