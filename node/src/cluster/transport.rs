//! [`rooms::Transport`] over ractor_cluster: frames go to the peer's host proxy.
//!
//! Only peers the membership actor declared up (handshake done, heartbeats answered) are in
//! the table, so a frame never goes to a node outside this node's view. Oversize frames are
//! refused here, at the sender: the receiving NodeSession would drop the whole link (every
//! room's traffic with that node) on one frame above its inbound limit.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::Duration;

use futures::future::BoxFuture;
use ractor::rpc::CallResult;
use ractor::ActorRef;
use rooms::{Transport, TransportError};

use super::host::{Frame, HostMsg};

pub struct ClusterTransport {
    peers: RwLock<HashMap<String, ActorRef<HostMsg>>>,
    max_frame: usize,
}

impl ClusterTransport {
    pub fn new(max_frame: usize) -> Self {
        Self {
            peers: RwLock::new(HashMap::new()),
            max_frame,
        }
    }

    pub fn set_peer(&self, node: &str, host: Option<ActorRef<HostMsg>>) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        match host {
            Some(h) => peers.insert(node.to_string(), h),
            None => peers.remove(node),
        };
    }

    fn host(&self, node: &str) -> Result<ActorRef<HostMsg>, TransportError> {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
            .cloned()
            .ok_or_else(|| TransportError::NotConnected(node.to_string()))
    }

    fn check_size(&self, frame: &[u8]) -> Result<(), TransportError> {
        if frame.len() > self.max_frame {
            metrics::counter!("parley_cluster_oversize_frames_total").increment(1);
            return Err(TransportError::TooLarge {
                size: frame.len(),
                limit: self.max_frame,
            });
        }
        Ok(())
    }
}

impl Transport for ClusterTransport {
    fn cast(&self, node: &str, frame: Vec<u8>) -> Result<(), TransportError> {
        self.check_size(&frame)?;
        let host = self.host(node)?;
        host.cast(HostMsg::Cast(Frame(frame)))
            .map_err(|e| TransportError::Link(e.to_string()))
    }

    fn call(
        &self,
        node: &str,
        frame: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let checked = self.check_size(&frame).and_then(|()| self.host(node));
        let node = node.to_string();
        Box::pin(async move {
            let host = checked?;
            match host
                .call(|reply| HostMsg::Call(Frame(frame), reply), Some(timeout))
                .await
            {
                Ok(CallResult::Success(Frame(bytes))) => Ok(bytes),
                Ok(CallResult::Timeout) => Err(TransportError::Timeout(node)),
                // The typed and the byte-level reply ports race on a remote timeout: both
                // mean "no answer in time, outcome unknown".
                Ok(CallResult::SenderError) => Err(TransportError::Timeout(node)),
                // Not sent: the peer's proxy is gone (the link closed).
                Err(_) => Err(TransportError::NotConnected(node)),
            }
        })
    }
}
