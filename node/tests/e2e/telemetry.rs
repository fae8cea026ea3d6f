//! Traces leave the node over OTLP/HTTP when `otlp_endpoint` is set. A minimal HTTP sink on
//! loopback stands in for the collector and records what it is sent.

use std::time::Duration;

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn request_spans_are_exported_over_otlp() {
    let (addr, mut received) = otlp_sink().await;
    let endpoint = format!("otlp_endpoint=\"http://{addr}/v1/traces\"");
    let mut node = Node::start(&["--set", &endpoint]).await;
    let mut a = Client::connect(&node, "a").await;
    a.join("traced").await;
    a.ok("sendMessage", json!({"roomId": "traced", "text": "hello"}))
        .await;
    // Shutdown flushes the batch exporter.
    node.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut bodies = Vec::new();
    while let Ok(Some((line, body))) = tokio::time::timeout_at(deadline, received.recv()).await {
        assert!(line.starts_with("POST /v1/traces "), "{line}");
        bodies.extend(body);
        let has = |needle: &[u8]| bodies.windows(needle.len()).any(|w| w == needle);
        if has(b"request") && has(b"sendMessage") && has(b"joinRoom") {
            return;
        }
    }
    panic!(
        "no OTLP export with the request spans arrived ({} bytes received)",
        bodies.len()
    );
}
