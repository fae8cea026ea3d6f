//! The Socket.IO client mode, `ramp` and `--plot`, end to end against the stand-in server
//! in `mock/` (which speaks Socket.IO v4 on paths under `/socket.io/`).

mod mock;

use std::sync::atomic::Ordering;

use mock::run;

#[test]
fn socketio_chat_delivers_everything_and_plots() {
    let (port, seen) = mock::start();
    let url = format!("ws://127.0.0.1:{port}");
    let png = std::env::temp_dir().join(format!("lt-e2e-{}.png", std::process::id()));
    let r = run(&[
        "chat",
        "--protocol",
        "socketio",
        "--url",
        &url,
        "--rooms",
        "2",
        "--members",
        "5",
        "--senders",
        "2",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--warmup",
        "300ms",
        "--drain",
        "500ms",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert_eq!(r["protocol"], "socketio");
    assert_eq!(r["connected"], 10, "{r}");
    let sent = r["sent"].as_u64().unwrap();
    assert!((150..=250).contains(&sent), "{r}");
    assert_eq!(r["expected"].as_u64().unwrap(), sent * 5, "{r}");
    assert_eq!(r["delivered"], r["expected"], "{r}");
    assert_eq!(r["acked"].as_u64().unwrap(), sent, "{r}");
    assert_eq!(r["unknown_frames"], 0, "{r}");
    // Every connection answered the mock's Engine.IO ping.
    assert_eq!(seen.pongs.load(Ordering::Relaxed), 10);
    // Latency over time: the buckets add up to the deliveries.
    let buckets = r["latency_over_time"].as_array().unwrap();
    assert_eq!(buckets.len(), 10, "{r}");
    let n: u64 = buckets
        .iter()
        .map(|b| b["latency"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(n, r["delivered"].as_u64().unwrap());
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    std::fs::remove_file(&png).unwrap();
}

#[test]
fn socketio_connect_and_history() {
    let (port, seen) = mock::start();
    let url = format!("ws://127.0.0.1:{port}/socket.io/");
    let r = run(&[
        "connect",
        "--protocol",
        "socketio",
        "--url",
        &url,
        "--connections",
        "20",
        "--hold",
        "1s",
        "--workers",
        "2",
    ]);
    assert_eq!(r["connected"], 20, "{r}");
    assert_eq!(r["dropped_during_hold"], serde_json::json!({}));
    let r = run(&[
        "history",
        "--protocol",
        "socketio",
        "--url",
        &url,
        "--rooms",
        "2",
        "--joins",
        "10",
        "--seed",
        "55",
        "--connections",
        "2",
    ]);
    assert_eq!(r["joins"], 10, "{r}");
    assert_eq!(r["messages_per_join"], 50.0, "{r}");
    assert_eq!(seen.refused.load(Ordering::Relaxed), 0);
}

#[test]
fn ramp_rises_until_the_target_fails() {
    let (port, _) = mock::start();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let common = [
        "ramp",
        "--url",
        &url,
        "--rooms",
        "2",
        "--members",
        "3",
        "--start-rate",
        "50",
        "--factor",
        "2",
        "--max-rate",
        "200",
        "--step",
        "500ms",
        "--warmup",
        "200ms",
        "--drain",
        "300ms",
        "--pause",
        "0s",
    ];
    // A latency target the loaded test machine always meets: the stepping is under test.
    let mut easy = common.to_vec();
    easy.extend(["--p99-ms", "5000"]);
    let r = run(&easy);
    let steps = r["steps"].as_array().unwrap();
    let rates: Vec<f64> = steps.iter().map(|s| s["rate"].as_f64().unwrap()).collect();
    assert_eq!(rates, [50.0, 100.0, 200.0], "{r}");
    assert!(steps.iter().all(|s| s["pass"] == true), "{r}");
    assert_eq!(r["peak_rate"], 200.0);
    // 200 msg/s × 3 members.
    assert!(r["peak_deliveries_per_s"].as_f64().unwrap() >= 580.0, "{r}");
    // An unreachable latency target: the first step fails, is retried once and fails
    // again, and there is no answer.
    let mut strict = common.to_vec();
    strict.extend(["--p99-ms", "0.0001"]);
    let r = run(&strict);
    let steps = r["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{r}");
    assert!(
        steps
            .iter()
            .all(|s| s["pass"] == false && s["rate"] == 50.0),
        "{r}"
    );
    assert!(r["peak_rate"].is_null(), "{r}");
}
