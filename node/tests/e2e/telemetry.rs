//! Traces leave the node over OTLP/HTTP when `otlp_endpoint` is set. A minimal HTTP sink on
//! loopback stands in for the collector and records what it is sent.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::harness::*;

/// Accepts HTTP/1.1 requests and forwards (request line, body) of each.
async fn sink() -> (String, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        continue;
                    }
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    let line = head.lines().next().unwrap_or("").to_string();
                    let _ = tx.send((line, body));
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn request_spans_are_exported_over_otlp() {
    let (addr, mut received) = sink().await;
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
