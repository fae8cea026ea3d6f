//! Test harness: real `parley` processes on ephemeral ports and a real WebSocket client.
//! Waits are for observable events (a line, an ack, a push) with deadlines, never sleeps.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-secret-0123456789abcdef";
pub const WAIT: Duration = Duration::from_secs(10);

/// A running node process.
pub struct Node {
    pub addr: String,
    pub data: tempfile::TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

impl Node {
    /// Starts a node with the test secret, test hooks and `extra` flags.
    pub async fn start(extra: &[&str]) -> Node {
        let data = tempfile::tempdir().expect("tempdir");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut node = Node {
            addr: String::new(),
            data,
            args,
            child: None,
        };
        node.spawn().await;
        node
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_parley"));
        cmd.arg("--listen")
            .arg(if self.addr.is_empty() {
                "127.0.0.1:0".to_string()
            } else {
                self.addr.clone()
            })
            .arg("--data-dir")
            .arg(self.data.path())
            .arg("--jwt-secret")
            .arg(SECRET)
            .arg("--test-hooks")
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn parley");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(a) = line.strip_prefix("parley listening on ") {
                    return a.trim().to_string();
                }
            }
            panic!("parley exited before listening");
        })
        .await
        .expect("parley did not start in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.addr = addr;
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// SIGTERM and wait for exit.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = tokio::time::timeout(WAIT, child.wait()).await;
        }
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts again on the same address and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }
}

pub fn token(user: &str, name: &str) -> String {
    sessions::auth::mint_hs256(SECRET, user, name, 3600).expect("mint")
}

/// A plain HTTP GET returning (status, body).
pub async fn http_get(url: &str) -> (u16, String) {
    http_request("GET", url, &[]).await
}

/// A minimal HTTP/1.1 client (the tests must not depend on a proxy-aware library).
pub async fn http_request(method: &str, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request_body(method, url, headers, "").await
}

/// One HTTP/1.1 request with a text body; returns (status, body).
pub async fn http_request_body(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = TcpStream::connect(host).await.expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking the native protocol.
pub struct Client {
    pub ws: Ws,
    next_id: u64,
    buffered: VecDeque<Value>,
}

/// How a connection attempt ended.
#[derive(Debug)]
pub enum Refused {
    Http(u16),
    Other(String),
}

impl Client {
    pub async fn connect(node: &Node, user: &str) -> Client {
        Self::connect_url(&format!(
            "{}?token={}",
            node.url(),
            token(user, &user.to_uppercase())
        ))
        .await
        .expect("connect")
    }

    pub async fn connect_url(url: &str) -> Result<Client, Refused> {
        Self::connect_with(url, &[]).await
    }

    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Result<Client, Refused> {
        let mut req = url
            .into_client_request()
            .map_err(|e| Refused::Other(e.to_string()))?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("header"),
                v.parse().expect("value"),
            );
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client {
                ws,
                next_id: 1,
                buffered: VecDeque::new(),
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                Err(Refused::Http(resp.status().as_u16()))
            }
            Err(e) => Err(Refused::Other(e.to_string())),
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send");
    }

    /// Next JSON frame from the socket (pings are answered by tungstenite).
    async fn recv(&mut self) -> Option<Value> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within the deadline")
            {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(&t).expect("server sent invalid JSON"))
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Sends a request with an id and returns its ack (`{"ack":..,"data"|"error":..}`).
    pub async fn request(&mut self, event: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&json!({"event": event, "data": data, "id": id}).to_string())
            .await;
        loop {
            let v = self
                .recv()
                .await
                .expect("connection closed while waiting for an ack");
            if v.get("ack").and_then(Value::as_u64) == Some(id) {
                return v;
            }
            self.buffered.push_back(v);
        }
    }

    /// Like [`request`], asserting success; returns `data`.
    pub async fn ok(&mut self, event: &str, data: Value) -> Value {
        let ack = self.request(event, data).await;
        assert!(ack.get("error").is_none(), "{event} failed: {ack}");
        ack["data"].clone()
    }

    /// Like [`request`], asserting failure; returns the error code.
    pub async fn err(&mut self, event: &str, data: Value) -> String {
        let ack = self.request(event, data).await;
        ack["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("{event} should have failed: {ack}"))
            .to_string()
    }

    /// Waits for a push named `event` (earlier pushes of other names stay buffered).
    pub async fn event(&mut self, event: &str) -> Value {
        if let Some(i) = self.buffered.iter().position(|v| v["event"] == event) {
            return self
                .buffered
                .remove(i)
                .map(|v| v["data"].clone())
                .unwrap_or_default();
        }
        loop {
            let v = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {event}"));
            if v["event"] == event {
                return v["data"].clone();
            }
            self.buffered.push_back(v);
        }
    }

    /// Waits up to `within` for a push named `event` whose data satisfies `pred` (other pushes
    /// stay buffered); for events that may take longer than one frame's [`WAIT`].
    pub async fn event_matching(
        &mut self,
        event: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        if let Some(i) = self
            .buffered
            .iter()
            .position(|v| v["event"] == event && pred(&v["data"]))
        {
            return self
                .buffered
                .remove(i)
                .map(|v| v["data"].clone())
                .unwrap_or_default();
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no matching {event} within {within:?}"));
            match frame {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent invalid JSON");
                    if v["event"] == event && pred(&v["data"]) {
                        return v["data"].clone();
                    }
                    self.buffered.push_back(v);
                }
                Some(Ok(_)) => continue,
                _ => panic!("closed while waiting for {event}"),
            }
        }
    }

    /// Asserts no push named `event` arrives within `d`.
    pub async fn no_event(&mut self, event: &str, d: Duration) {
        assert!(
            !self.buffered.iter().any(|v| v["event"] == event),
            "unexpected {event}"
        );
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, self.ws.next()).await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).expect("json");
                assert_ne!(v["event"], event, "unexpected {event}: {v}");
                self.buffered.push_back(v);
            }
        }
    }

    /// Reads until the server closes; returns the close code (None if it just dropped).
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("not closed within the deadline")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                None | Some(Err(_)) => return None,
            }
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        self.ok("joinRoom", json!({"roomId": room})).await
    }

    pub async fn say(&mut self, room: &str, text: &str) -> Value {
        self.ok("sendMessage", json!({"roomId": room, "text": text}))
            .await
    }
}

/// A Prometheus sample's value (the first line whose name and labels start with `prefix`).
pub async fn metric(node: &Node, prefix: &str) -> f64 {
    let (_, body) = http_get(&node.http("/metrics")).await;
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A stand-in OTLP/HTTP collector on loopback: accepts HTTP/1.1 requests and forwards
/// (request line, body) of each.
pub async fn otlp_sink() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut chunk).await else {
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
                    let _ = tokio::io::AsyncWriteExt::write_all(
                        &mut s,
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
