//! Membership: who gets in, how nodes find each other, and presence across nodes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::scenario::bounded;

fn ring(v: &Value) -> Vec<String> {
    v["ringMembers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Starts {a, b}, then node `name` dialing a with `cookie` (the cluster's when `None`) and `env`;
/// after 3 s asserts that nobody admitted anybody. Returns the cluster for further checks.
async fn outsider_stays_out(
    test: &'static str,
    name: &str,
    ip: &str,
    cookie: Option<String>,
    env: &[(&str, &str)],
) -> Option<Cluster> {
    let mut cluster = Cluster::start(test, &["a", "b"]).await?;
    let seed = cluster.node("a").cluster_addr.clone();
    let cookie = cookie.unwrap_or_else(|| cluster.cookie().to_string());
    let args = ["--cluster-cookie".into(), cookie, "--peers".into(), seed];
    cluster.add_custom(name, ip, &args, env).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in ["a", "b"] {
        let r = ring(&cluster.view(n).await);
        assert_eq!(r, ["a", "b"], "{n} admitted {name}");
    }
    assert_eq!(ring(&cluster.view(name).await), [name]);
    Some(cluster)
}

/// A node with another cookie dials the cluster for 3 s and is never admitted: neither side
/// lists the other (ractor_cluster's cookie handshake fails, the link is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_cookie_is_never_admitted() {
    const TEST: &str = "a_node_with_another_cookie_is_never_admitted";
    bounded(TEST, Duration::from_secs(60), async {
        let wrong = Some("another-cookie-0123456789abcdef".to_string());
        if outsider_stays_out(TEST, "intruder", "127.0.0.20", wrong, &[])
            .await
            .is_some()
        {
            report!("{TEST}: after 3 s of dialing, the intruder is in no view");
        }
    })
    .await;
}

/// A node that speaks another protocol version (test hook) has the right cookie, so its link
/// authenticates, but the handshake refuses it: it never enters a view, and the cluster's
/// nodes say why in an error log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_protocol_version_is_refused() {
    const TEST: &str = "a_node_of_another_protocol_version_is_refused";
    bounded(TEST, Duration::from_secs(60), async {
        let env = [("PARLEY_TEST_HELLO_PROTOCOL", "0")];
        let Some(cluster) = outsider_stays_out(TEST, "old", "127.0.0.22", None, &env).await else {
            return;
        };
        let logs = cluster.node("a").stderr_tail() + &cluster.node("old").stderr_tail();
        assert!(
            logs.contains("refusing an incompatible node") && logs.contains("protocol version"),
            "no refusal in the logs:\n{logs}"
        );
        report!("{TEST}: refused with a log line naming the protocol version");
    })
    .await;
}

/// A node started with only `--discovery dns:localhost:PORT` (no `--peers`) finds the node
/// listening there, and through it (learned peers) the rest of the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_finds_the_cluster() {
    const TEST: &str = "dns_discovery_finds_the_cluster";
    bounded(TEST, Duration::from_secs(60), async {
        let Some(mut cluster) = Cluster::start(TEST, &["a", "b"]).await else {
            return;
        };
        // `localhost` resolves to 127.0.0.1: a third node listens there, found by name only.
        let cookie = cluster.cookie().to_string();
        let seeded = cluster.node("a").cluster_addr.clone();
        cluster
            .add_custom(
                "local",
                "127.0.0.1",
                &[
                    "--cluster-cookie".into(),
                    cookie.clone(),
                    "--peers".into(),
                    seeded,
                ],
                &[],
            )
            .await;
        cluster
            .converge(&["a", "b", "local"], Duration::from_secs(20))
            .await;
        let port = cluster
            .node("local")
            .cluster_addr
            .rsplit_once(':')
            .map(|(_, p)| p.to_string())
            .expect("port");
        cluster
            .add_custom(
                "found",
                "127.0.0.21",
                &[
                    "--cluster-cookie".into(),
                    cookie,
                    "--discovery".into(),
                    format!("dns:localhost:{port}"),
                    "--set".into(),
                    "cluster.discovery_interval=\"500ms\"".into(),
                ],
                &[],
            )
            .await;
        let took = cluster
            .converge(&["a", "b", "local", "found"], Duration::from_secs(20))
            .await;
        report!("{TEST}: a node with only dns:localhost:{port} joined all 4 in {took:?}");
    })
    .await;
}

/// One user with a session on A and one on C, in a room owned by B; a watcher on B:
/// `userJoined` once (the user's first session), no `userLeft` when the session on A closes,
/// `userLeft` when the last one (on C) closes; the member list counts the user once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_of_a_user_spread_over_nodes() {
    const TEST: &str = "presence_of_a_user_spread_over_nodes";
    bounded(TEST, Duration::from_secs(60), async {
        let Some(cluster) = Cluster::start(TEST, &["a", "b", "c"]).await else {
            return;
        };
        let room = cluster
            .room_owned_by("b", "presence", &["a", "b", "c"])
            .await;
        let mut watcher = cluster.client("b", "watcher").await;
        watcher.join(&room).await;
        let mut on_a = cluster.client("a", "dana").await;
        on_a.join(&room).await;
        let joined = watcher.event("userJoined").await;
        assert_eq!(joined["userId"], "dana");
        let mut on_c = cluster.client("c", "dana").await;
        let reply = on_c.join(&room).await;
        assert_eq!(reply["memberCount"], 2, "dana counts once: {reply}");
        watcher
            .no_event("userJoined", Duration::from_millis(500))
            .await;
        drop(on_a);
        watcher.no_event("userLeft", Duration::from_secs(1)).await;
        drop(on_c);
        let left = watcher.event("userLeft").await;
        assert_eq!(left["userId"], "dana");
        report!("{TEST}: one userJoined, one userLeft for a user on two nodes");
    })
    .await;
}

/// Trace ids in OTLP/protobuf export bodies: `Span.trace_id` is field 1, 16 bytes (tag 0x0a,
/// length 0x10). Other fields can look alike, which only adds candidates.
fn trace_ids(body: &[u8]) -> std::collections::HashSet<[u8; 16]> {
    body.windows(18)
        .filter(|w| w[0] == 0x0a && w[1] == 0x10)
        .filter_map(|w| <[u8; 16]>::try_from(&w[2..18]).ok())
        .collect()
}

/// With OTLP export on, a client request on A for a room owned by B is one trace: B's spans
/// (`cluster_request` and the room handler under it) carry the trace id of A's `request` span,
/// propagated as a W3C `traceparent` in the call frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_across_nodes() {
    const TEST: &str = "a_request_is_one_trace_across_nodes";
    bounded(TEST, Duration::from_secs(60), async {
        let Some(mut cluster) = Cluster::start(TEST, &[]).await else {
            return;
        };
        let (sink_a, mut got_a) = crate::harness::otlp_sink().await;
        let (sink_b, mut got_b) = crate::harness::otlp_sink().await;
        let cookie = cluster.cookie().to_string();
        let otlp = |addr: &str| format!("otlp_endpoint=\"http://{addr}/v1/traces\"");
        let a_args = [
            "--cluster-cookie".into(),
            cookie.clone(),
            "--set".into(),
            otlp(&sink_a),
        ];
        cluster.add_custom("a", "127.0.0.23", &a_args, &[]).await;
        let seed = cluster.node("a").cluster_addr.clone();
        let b_args = [
            "--cluster-cookie".into(),
            cookie,
            "--peers".into(),
            seed,
            "--set".into(),
            otlp(&sink_b),
        ];
        cluster.add_custom("b", "127.0.0.24", &b_args, &[]).await;
        cluster.converge(&["a", "b"], Duration::from_secs(20)).await;
        let room = cluster.room_owned_by("b", "traced", &["a", "b"]).await;
        let mut client = cluster.client("a", "tracer").await;
        client.join(&room).await;
        client.say(&room, "one trace").await;
        drop(client);
        // SIGTERM flushes each node's batch exporter.
        for n in ["a", "b"] {
            cluster.sigterm(n);
            cluster.wait_exit(n, Duration::from_secs(20)).await;
        }
        let drain = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>| {
            let mut all = Vec::new();
            while let Ok((_, body)) = rx.try_recv() {
                all.extend(body);
            }
            all
        };
        let (a, b) = (drain(&mut got_a), drain(&mut got_b));
        let has = |bytes: &[u8], needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(
            has(&a, b"request"),
            "A exported no request span ({} bytes)",
            a.len()
        );
        assert!(
            has(&b, b"cluster_request"),
            "B exported no cluster_request span ({} bytes)",
            b.len()
        );
        let shared: Vec<_> = trace_ids(&a)
            .intersection(&trace_ids(&b))
            .copied()
            .collect();
        assert!(!shared.is_empty(), "A's and B's spans share no trace id");
        report!(
            "{TEST}: {} trace id(s) shared by A's and B's exports",
            shared.len()
        );
    })
    .await;
}

/// A user's rate limit holds across nodes: with a session on A and one on B (limit 1/s, burst
/// 10), the user's owner tells both nodes that the user is on two, each node's bucket runs at
/// half, and a burst of sends from both sessions gets about 10 acknowledged in total, not 20.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_rate_limit_is_shared_by_its_nodes() {
    const TEST: &str = "a_users_rate_limit_is_shared_by_its_nodes";
    bounded(TEST, Duration::from_secs(60), async {
        let Some(mut cluster) = Cluster::start(TEST, &[]).await else {
            return;
        };
        let cookie = cluster.cookie().to_string();
        let limit: Vec<String> = ["--rate-limit-per-sec", "1", "--rate-limit-burst", "10"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut a_args = vec!["--cluster-cookie".to_string(), cookie.clone()];
        a_args.extend(limit.clone());
        cluster.add_custom("a", "127.0.0.25", &a_args, &[]).await;
        let seed = cluster.node("a").cluster_addr.clone();
        let mut b_args = vec![
            "--cluster-cookie".to_string(),
            cookie,
            "--peers".into(),
            seed,
        ];
        b_args.extend(limit);
        cluster.add_custom("b", "127.0.0.26", &b_args, &[]).await;
        cluster.converge(&["a", "b"], Duration::from_secs(20)).await;
        let mut on_a = cluster.client("a", "limited").await;
        let mut on_b = cluster.client("b", "limited").await;
        on_a.join("limits").await;
        on_b.join("limits").await;
        // The owner's share message follows the second session's registration.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = tokio::time::Instant::now();
        let mut acked = 0;
        let mut limited = 0;
        for i in 0..12 {
            for c in [&mut on_a, &mut on_b] {
                let ack = c
                    .request(
                        "sendMessage",
                        json!({"roomId": "limits", "text": format!("m{i}")}),
                    )
                    .await;
                match ack["error"]["code"].as_str() {
                    None => acked += 1,
                    Some("rate_limited") => limited += 1,
                    Some(other) => panic!("unexpected error {other}: {ack}"),
                }
            }
        }
        // Both nodes at full burst would ack up to 2 × 9 = 18 after the joins; shared, each
        // node has 5 (minus its join), plus what refills at 1/s over the run.
        let refill = t0.elapsed().as_secs_f64().ceil() as usize + 1;
        assert!(acked >= 1, "nothing was acknowledged");
        assert!(
            acked <= 10 + refill,
            "{acked} sends acknowledged: the limit was not shared (limited {limited})"
        );
        report!("{TEST}: {acked} acked, {limited} rate_limited of 24 over two nodes (burst 10)");
    })
    .await;
}
