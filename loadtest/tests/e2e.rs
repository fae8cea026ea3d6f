//! Runs the binary's scenarios against a tiny in-process stand-in for the `/ws` protocol
//! (join/leave/send with acks, `newMessage` fan-out, history on join; see `mock/`), so
//! the tool is tested end to end without the real server.

mod mock;

use std::process::Command;

use mock::run;

fn start_mock() -> u16 {
    mock::start().0
}

#[test]
fn chat_delivers_everything_to_every_member() {
    let port = start_mock();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = std::process::id().to_string();
    let r = run(&[
        "chat",
        "--url",
        &url,
        "--rooms",
        "3",
        "--members",
        "4",
        "--senders",
        "2",
        "--rate",
        "300",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--drain",
        "500ms",
        "--size",
        "100",
        "--workers",
        "2",
        "--pids",
        &pid,
    ]);
    assert_eq!(r["connected"], 12, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert!((250..=350).contains(&sent), "{r}");
    assert_eq!(r["expected"].as_u64().unwrap(), sent * 4, "{r}");
    assert_eq!(r["delivered"], r["expected"], "{r}");
    assert_eq!(r["acked"].as_u64().unwrap(), sent, "{r}");
    assert_eq!(r["end_to_end"]["count"], r["delivered"]);
    assert_eq!(r["slow_path_frames"], 0);
    assert_eq!(r["unknown_frames"], 0);
    assert!(r["tool_cpu_us"].as_u64().unwrap() > 0);
    assert!(r["server_cpu_us_per_delivery"].as_f64().is_some(), "{r}");
    assert!(r["end_to_end"]["p99_us"].as_u64().unwrap() < 1_000_000);
}

#[test]
fn connect_holds_connections_across_workers() {
    let port = start_mock();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let pid = std::process::id().to_string();
    let r = run(&[
        "connect",
        "--url",
        &url,
        "--connections",
        "60",
        "--hold",
        "1s",
        "--workers",
        "3",
        "--pids",
        &pid,
    ]);
    assert_eq!(r["connected"], 60, "{r}");
    assert_eq!(r["workers"], 3);
    assert_eq!(r["connect_latency"]["count"], 60);
    assert!(r["server_kib_per_connection"].as_f64().is_some(), "{r}");
    assert_eq!(r["dropped_during_hold"], serde_json::json!({}));
}

#[test]
fn history_joins_report_messages_per_join() {
    let port = start_mock();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let r = run(&[
        "history",
        "--url",
        &url,
        "--rooms",
        "3",
        "--joins",
        "30",
        "--seed",
        "60",
        "--connections",
        "2",
    ]);
    assert_eq!(r["joins"], 30, "{r}");
    // The mock keeps 50 messages; ack and nothing else is counted.
    assert_eq!(r["messages_per_join"], 50.0, "{r}");
    assert_eq!(r["join_latency"]["count"], 30);
}

#[test]
fn refuses_non_loopback_targets_and_unbounded_runs() {
    let bin = env!("CARGO_BIN_EXE_parley-loadtest");
    let out = Command::new(bin)
        .args([
            "connect",
            "--url",
            "ws://10.1.2.3:3000/ws",
            "--connections",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
    let out = Command::new(bin)
        .args(["chat", "--duration", "2h"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn failover_without_kills_sees_every_ack_once() {
    let port = start_mock();
    let bare = format!("ws://127.0.0.1:{port}/ws");
    let keyed = format!("url=ws://127.0.0.1:{port}/ws");
    let r = run(&[
        "failover",
        "--node",
        &bare,
        "--node",
        &keyed,
        "--rooms",
        "3",
        "--readers-per-node",
        "2",
        "--rate",
        "100",
        "--kills",
        "0",
        "--warmup",
        "2s",
        "--settle",
        "500ms",
    ]);
    let acked = r["acked"].as_u64().unwrap();
    assert!(acked > 100, "{r}");
    for k in [
        "lost",
        "duplicate_pushes",
        "out_of_order_pushes",
        "seq_reused",
        "stored_twice",
        "gaps",
        "abandoned",
        "violations",
        "missing_before_final_resume",
    ] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    assert_eq!(r["readers"], 4, "{r}");
    // Every reader is a member of every room: each ack is pushed to all four.
    assert_eq!(r["pushes"].as_u64().unwrap(), acked * 4, "{r}");
    assert_eq!(r["kills"], serde_json::json!([]));
    assert_eq!(r["ack_latency"]["count"].as_u64(), Some(acked));
    assert_eq!(r["readers_failed"], serde_json::json!([]));

    // Kills need a node with a pidfile and a start command.
    let out = Command::new(env!("CARGO_BIN_EXE_parley-loadtest"))
        .args([
            "failover", "--node", &bare, "--node", &keyed, "--kills", "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pidfile= and a start="),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
