//! User actors through the node's room layer, on paused time: node "a" owns the users, nodes
//! "b" and "c" are peers whose casts are recorded.

use std::sync::Mutex;

use cluster_proto::wire::{self, Request, Response};
use futures::future::BoxFuture;
use history::MemoryStore;
use ractor::rpc::CallResult;

use super::*;
use crate::cluster::{Transport, TransportError};
use crate::facade::{Rooms, RoomsConfig};
use crate::hub::Hub;

/// Records casts to peers; calls to peers fail (the users under test live on "a").
#[derive(Default)]
struct Peers(Mutex<Vec<(String, Cast)>>);

impl Peers {
    /// The `UserShare` frames sent so far, as (node, nodes), and forgets them.
    fn take_shares(&self) -> Vec<(String, u32)> {
        let mut shares: Vec<(String, u32)> = std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .filter_map(|(to, c)| match c {
                Cast::UserShare { nodes, .. } => Some((to, nodes)),
                _ => None,
            })
            .collect();
        shares.sort();
        shares
    }
}

impl Transport for Peers {
    fn cast(&self, node: &str, frame: Vec<u8>) -> Result<(), TransportError> {
        let f = wire::decode_cast(&frame).map_err(|e| TransportError::Link(e.to_string()))?;
        self.0.lock().unwrap().push((node.to_string(), f.cast));
        Ok(())
    }
    /// Calls reach no one, as on a node without peers.
    fn call(
        &self,
        node: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        crate::cluster::Solo.call(node, frame, timeout)
    }
}

const QUIET: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(60);

async fn node() -> (Arc<Rooms>, Arc<Peers>) {
    let peers = Arc::new(Peers::default());
    let view = ClusterView::new("a", peers.clone());
    view.set_members(vec!["b".into(), "c".into()]);
    let cfg = RoomsConfig {
        node_name: "a".into(),
        user: UserConfig {
            rate_per_sec: 1e-9,
            burst: 12.0,
            idle_timeout: IDLE,
            hibernate_after: QUIET,
        },
        ..RoomsConfig::default()
    };
    let rooms = Rooms::start(
        cfg,
        MemoryStore::new().handle(),
        Arc::new(Hub::default()),
        view,
    )
    .await
    .unwrap();
    (rooms, peers)
}

/// The `n`th user owned by "a" (also once "b" or "c" leaves: rendezvous hashing only moves
/// the departed node's keys).
fn owned_user(rooms: &Rooms, n: usize) -> UserId {
    (0..)
        .map(|i| UserId::new(&format!("user-{i}")).unwrap())
        .filter(|u| {
            rooms
                .cluster()
                .is_local(&rooms.cluster().user_owner(u.as_str()))
        })
        .nth(n)
        .unwrap()
}

fn s(n: u64) -> SessionId {
    SessionId(n)
}

async fn remote_connect(rooms: &Rooms, from: &str, user: &UserId, sessions: Vec<SessionId>) {
    let req = Request::UserConnect {
        user: user.clone(),
        sessions,
    };
    match rooms.handle_call(from, req).await {
        Response::UserConnect(Ok(())) => {}
        other => panic!("connect from {from} failed: {other:?}"),
    }
}

/// The user's sessions, sorted (wakes the user).
async fn sessions(rooms: &Rooms, user: &UserId) -> Vec<(SessionId, Option<String>)> {
    let actor = rooms.users.get(user).await.unwrap();
    let Ok(CallResult::Success(list)) = actor.call(UserMsg::Sessions, None).await else {
        panic!("user did not answer");
    };
    let mut list: Vec<_> = list
        .into_iter()
        .map(|(s, n)| (s, n.map(|n| n.to_string())))
        .collect();
    list.sort();
    list
}

/// Waits (on paused time) until `done` holds, at most a minute and a half.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..900 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(start_paused = true)]
async fn a_quiet_user_hibernates_and_a_disconnect_still_reaches_it() {
    let (rooms, _) = node().await;
    let user = owned_user(&rooms, 0);
    rooms
        .user_connect(&user, vec![s(1), s(2)], None)
        .await
        .unwrap();

    tokio::time::sleep(QUIET - Duration::from_secs(1)).await;
    assert_eq!(sessions(&rooms, &user).await.len(), 2, "live, and reset");
    tokio::time::sleep(QUIET - Duration::from_secs(1)).await;
    assert!(
        !rooms.users.is_dormant(&user),
        "each message restarts the quiet period"
    );
    until("hibernated", || rooms.users.is_dormant(&user)).await;
    assert_eq!((rooms.live_users(), rooms.dormant_users()), (0, 1));

    // A disconnect that leaves the user on the same nodes is applied without waking it.
    rooms.disconnect(s(1), &user);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rooms.users.is_dormant(&user), "still dormant");
    assert_eq!(sessions(&rooms, &user).await, [(s(2), None)]);
    assert_eq!(rooms.dormant_users(), 0);

    // Without sessions it stops after the idle timeout, keeping nothing.
    rooms.disconnect(s(2), &user);
    tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
    assert_eq!(rooms.live_users(), 1);
    until("stopped", || rooms.live_users() == 0).await;
    assert_eq!(rooms.dormant_users(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_remote_disconnect_reaches_a_dormant_user() {
    let (rooms, _) = node().await;
    let user = owned_user(&rooms, 0);
    remote_connect(&rooms, "b", &user, vec![s(10), s(11)]).await;
    until("hibernated", || rooms.users.is_dormant(&user)).await;
    rooms.handle_cast(
        "b",
        Cast::UserDisconnect {
            session: s(10),
            user: user.clone(),
        },
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        rooms.users.is_dormant(&user),
        "applied to the dormant state"
    );
    assert_eq!(sessions(&rooms, &user).await, [(s(11), Some("b".into()))]);
}

#[tokio::test(start_paused = true)]
async fn a_dormant_user_wakes_when_its_nodes_change_and_is_forgotten_with_its_last_session() {
    let (rooms, peers) = node().await;
    let user = owned_user(&rooms, 0);
    rooms.user_connect(&user, vec![s(1)], None).await.unwrap();
    remote_connect(&rooms, "b", &user, vec![s(2)]).await;
    until("hibernated", || rooms.users.is_dormant(&user)).await;
    peers.take_shares();

    // b's last session leaves: b's and this node's shares change, so the actor must run.
    rooms.handle_cast(
        "b",
        Cast::UserDisconnect {
            session: s(2),
            user: user.clone(),
        },
    );
    until("woken", || rooms.users.peek(&user).is_some()).await;
    assert_eq!(sessions(&rooms, &user).await, [(s(1), None)]);

    // Dormant again, its last session leaves: nothing is kept, no actor is started.
    until("hibernated again", || rooms.users.is_dormant(&user)).await;
    rooms.disconnect(s(1), &user);
    until("forgotten", || !rooms.users.is_dormant(&user)).await;
    assert_eq!((rooms.live_users(), rooms.dormant_users()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn node_down_reaches_dormant_users_with_sessions_there_only() {
    let (rooms, peers) = node().await;
    let (user, other) = (owned_user(&rooms, 0), owned_user(&rooms, 1));
    rooms.user_connect(&user, vec![s(1)], None).await.unwrap();
    remote_connect(&rooms, "b", &user, vec![s(10), s(11)]).await;
    remote_connect(&rooms, "c", &user, vec![s(20)]).await;
    remote_connect(&rooms, "c", &other, vec![s(30)]).await;
    until("both hibernated", || rooms.dormant_users() == 2).await;
    peers.take_shares();

    let old = rooms.cluster().set_members(vec!["c".into()]);
    rooms.membership_changed(&old);
    until("woken", || rooms.users.peek(&user).is_some()).await;
    assert_eq!(
        sessions(&rooms, &user).await,
        [(s(1), None), (s(20), Some("c".into()))]
    );
    assert!(
        rooms.users.is_dormant(&other),
        "no session on b: left asleep"
    );
    assert_eq!(
        peers.take_shares(),
        [("c".into(), 2)],
        "c runs at a half now"
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_share_survives_a_wake() {
    let (rooms, peers) = node().await;
    let user = owned_user(&rooms, 0);
    let bucket = rooms.buckets.acquire(&user);
    rooms.user_connect(&user, vec![s(1)], None).await.unwrap();
    remote_connect(&rooms, "b", &user, vec![s(10)]).await;
    assert_eq!(peers.take_shares(), [("b".into(), 2)]);
    until("hibernated", || rooms.users.is_dormant(&user)).await;

    // Woken by a session on a node already counted: nobody is told again.
    remote_connect(&rooms, "b", &user, vec![s(11)]).await;
    assert_eq!(peers.take_shares(), []);
    until("hibernated again", || rooms.users.is_dormant(&user)).await;

    // Woken by a session on a third node: every node learns the new share.
    remote_connect(&rooms, "c", &user, vec![s(20)]).await;
    assert_eq!(peers.take_shares(), [("b".into(), 3), ("c".into(), 3)]);
    let tokens = (0..20).filter(|_| bucket.try_acquire()).count();
    assert_eq!(
        tokens, 4,
        "this node's bucket runs at a third of the burst of 12"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hibernated_user_leaves_no_task_behind() {
    let (rooms, _) = node().await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let user = owned_user(&rooms, 0);
    // Started by sessions on two nodes (first sessions on one node start no actor).
    remote_connect(&rooms, "b", &user, vec![s(1)]).await;
    remote_connect(&rooms, "c", &user, vec![s(2)]).await;
    assert!(tasks() > before);
    until("hibernated", || rooms.users.is_dormant(&user)).await;
    // Its task is gone, and no timer task holds its mailbox any more.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tasks(), before);
}

#[tokio::test(start_paused = true)]
async fn a_first_connect_on_the_owner_starts_no_actor() {
    let (rooms, peers) = node().await;
    let user = owned_user(&rooms, 0);
    let bucket = rooms.buckets.acquire(&user);
    rooms.user_connect(&user, vec![s(1)], None).await.unwrap();
    rooms
        .user_connect(&user, vec![s(2), s(1)], None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((rooms.live_users(), rooms.dormant_users()), (0, 1));
    assert_eq!(peers.take_shares(), []);
    let tokens = (0..20).filter(|_| bucket.try_acquire()).count();
    assert_eq!(tokens, 12, "one node: the whole burst");

    // A session on another node needs the actor: it starts from the dormant state and tells
    // both nodes their share.
    remote_connect(&rooms, "b", &user, vec![s(10)]).await;
    assert_eq!(rooms.live_users(), 1);
    assert_eq!(peers.take_shares(), [("b".into(), 2)]);
    assert_eq!(
        sessions(&rooms, &user).await,
        [(s(1), None), (s(2), None), (s(10), Some("b".into()))]
    );

    // Its local sessions leave while it hibernates: the nodes change, it wakes, b's stays.
    until("hibernated", || rooms.users.is_dormant(&user)).await;
    rooms.disconnect(s(1), &user);
    rooms.disconnect(s(2), &user);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sessions(&rooms, &user).await, [(s(10), Some("b".into()))]);
}

#[tokio::test(start_paused = true)]
async fn a_first_connect_from_another_node_starts_no_actor_and_tells_that_node() {
    let (rooms, peers) = node().await;
    let user = owned_user(&rooms, 0);
    remote_connect(&rooms, "b", &user, vec![s(10), s(11)]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!((rooms.live_users(), rooms.dormant_users()), (0, 1));
    assert_eq!(peers.take_shares(), [("b".into(), 1)]);
    // A second node: the actor starts and both nodes learn the new share.
    remote_connect(&rooms, "c", &user, vec![s(20)]).await;
    assert_eq!(rooms.live_users(), 1);
    assert_eq!(peers.take_shares(), [("b".into(), 2), ("c".into(), 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_first_connect_ending_at_once_leaves_nothing() {
    let (rooms, _) = node().await;
    let user = owned_user(&rooms, 0);
    rooms.user_connect(&user, vec![s(1)], None).await.unwrap();
    rooms.disconnect(s(1), &user);
    until("forgotten", || rooms.dormant_users() == 0).await;
    assert_eq!(rooms.live_users(), 0);
}

/// Counts pushes; the restart test only needs a live session in the hub.
struct NullSink;

impl cluster_proto::PushSink for NullSink {
    fn try_push(&self, _: &Arc<cluster_proto::Push>) -> Result<(), cluster_proto::PushError> {
        Ok(())
    }
    fn evict(&self) {}
}

#[tokio::test(start_paused = true)]
async fn a_restarted_user_gets_every_nodes_sessions_registered_again() {
    let (rooms, peers) = node().await;
    let user = owned_user(&rooms, 0);
    let member = cluster_proto::Member {
        user_id: user.clone(),
        username: "U".into(),
    };
    rooms
        .connect(s(1), &member, Arc::new(NullSink))
        .await
        .unwrap();
    remote_connect(&rooms, "b", &user, vec![s(2)]).await;
    peers.0.lock().unwrap().clear();

    // A bug fails the actor: the supervisor restarts it with nothing.
    let actor = rooms.users.get(&user).await.unwrap();
    actor.cast(UserMsg::Crash).unwrap();
    until("restarted", || {
        rooms
            .users
            .peek(&user)
            .is_some_and(|a| a.get_id() != actor.get_id())
    })
    .await;
    assert_eq!(sessions(&rooms, &user).await, []);

    // It asked the peers to register again...
    let asked: Vec<String> = std::mem::take(&mut *peers.0.lock().unwrap())
        .into_iter()
        .filter_map(|(to, c)| match c {
            Cast::ReregisterUser { user: u } if u == user => Some(to),
            _ => None,
        })
        .collect();
    assert_eq!(asked, ["b", "c"]);
    // ...and this node registers its own session with the next sync.
    assert!(rooms.sync_registrations().await >= 1);
    assert_eq!(sessions(&rooms, &user).await, [(s(1), None)]);
    // A peer that got the cast forgets its registration and sends it again (here by hand).
    rooms.handle_cast("b", Cast::ReregisterUser { user: user.clone() });
    remote_connect(&rooms, "b", &user, vec![s(2)]).await;
    assert_eq!(
        sessions(&rooms, &user).await,
        [(s(1), None), (s(2), Some("b".to_string()))]
    );
}
