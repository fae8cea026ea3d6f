//! The cluster's sockets. Parley accepts and dials node-to-node TCP itself and hands the
//! connected streams to ractor_cluster's NodeServer: that lets a node listen on port 0, and
//! sets what the built-in listener does not (TCP_NODELAY, keepalive, and TCP_USER_TIMEOUT so a
//! peer that stops acknowledging is dropped by the kernel too, not only by the heartbeat).

use std::net::SocketAddr;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};

fn tune(stream: &TcpStream, user_timeout: Duration) {
    let sock = socket2::SockRef::from(stream);
    let _ = sock.set_tcp_nodelay(true);
    let _ = sock.set_tcp_user_timeout(Some(user_timeout));
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(2));
    let _ = sock.set_tcp_keepalive(&ka);
}

fn hand_over(
    node_server: &ActorRef<NodeServerMessage>,
    stream: TcpStream,
    is_server: bool,
) -> Result<(), String> {
    let peer_addr = stream.peer_addr().map_err(|e| e.to_string())?;
    let local_addr = stream.local_addr().map_err(|e| e.to_string())?;
    node_server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(NetworkStream::Raw {
                peer_addr,
                local_addr,
                stream,
            }),
            is_server,
        })
        .map_err(|e| e.to_string())
}

/// Accepts peers on `listener` until the node server stops.
pub async fn accept_loop(
    listener: TcpListener,
    node_server: ActorRef<NodeServerMessage>,
    user_timeout: Duration,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tune(&stream, user_timeout);
                tracing::debug!(%peer, "cluster connection accepted");
                if hand_over(&node_server, stream, true).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Dials `target` (`host:port`, resolved now) within `timeout`; returns the remote address.
pub async fn dial(
    node_server: &ActorRef<NodeServerMessage>,
    target: &str,
    timeout: Duration,
    user_timeout: Duration,
) -> Result<SocketAddr, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(target))
        .await
        .map_err(|_| format!("connect to {target} timed out"))?
        .map_err(|e| format!("connect to {target}: {e}"))?;
    tune(&stream, user_timeout);
    let addr = stream.peer_addr().map_err(|e| e.to_string())?;
    hand_over(node_server, stream, false)?;
    Ok(addr)
}
