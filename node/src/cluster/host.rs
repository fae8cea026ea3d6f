//! The one remotable actor of a node: `parley-host@<node>`.
//!
//! ractor_cluster advertises every remotable actor to every peer and spawns a proxy for
//! each, so a node exposes exactly one (rooms and users stay local actors behind it). Its
//! messages carry opaque bytes: decoding happens here with `cluster_proto::wire`, where a
//! bad frame is an error that is counted and answered, never a panic in ractor's decode path
//! and never the end of the link.
//!
//! Casts are applied in arrival order inside the handler (they never await: deliveries go
//! into bounded session queues, the rest are casts to local actors), which keeps a room's
//! pushes in order per node. Calls run in their own task so a slow room never holds the host.

use std::sync::Arc;

use cluster_proto::wire::{self, Cast, Request, Response};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;
use rooms::Rooms;
use tracing::Instrument;

use super::membership::MembershipMsg;

/// Frames between hosts: opaque bytes (encoded by `cluster_proto::wire`).
pub struct Frame(pub Vec<u8>);

impl ractor::BytesConvertable for Frame {
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
    fn from_bytes(bytes: Vec<u8>) -> Self {
        Frame(bytes)
    }
}

#[derive(RactorClusterMessage)]
pub enum HostMsg {
    Cast(Frame),
    #[rpc]
    Call(Frame, RpcReplyPort<Frame>),
}

pub struct Host;

pub struct HostArgs {
    pub rooms: Arc<Rooms>,
    pub membership: ActorRef<MembershipMsg>,
}

pub struct HostState {
    rooms: Arc<Rooms>,
    membership: ActorRef<MembershipMsg>,
}

fn answer(reply: RpcReplyPort<Frame>, r: &Response) {
    match wire::encode_response(r) {
        Ok(bytes) => {
            let _ = reply.send(Frame(bytes));
        }
        Err(e) => tracing::error!(error = %e, "cannot encode a cluster answer"),
    }
}

impl Actor for Host {
    type Msg = HostMsg;
    type State = HostState;
    type Arguments = HostArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<HostMsg>,
        args: HostArgs,
    ) -> Result<HostState, ActorProcessingErr> {
        ractor::pg::join(super::HOSTS_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(HostState {
            rooms: args.rooms,
            membership: args.membership,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HostMsg>,
        msg: HostMsg,
        state: &mut HostState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HostMsg::Cast(Frame(bytes)) => match wire::decode_cast(&bytes) {
                Ok(f) => match f.cast {
                    Cast::Leaving => {
                        let _ = state.membership.cast(MembershipMsg::PeerLeaving(f.from));
                    }
                    cast => state.rooms.handle_cast(&f.from, cast),
                },
                Err(e) => {
                    metrics::counter!("parley_cluster_decode_errors_total").increment(1);
                    tracing::warn!(error = %e, bytes = bytes.len(), "undecodable cluster cast dropped");
                }
            },
            HostMsg::Call(Frame(bytes), reply) => match wire::decode_call(&bytes) {
                Ok(f) => match f.request {
                    Request::Hello(hello) => {
                        // Membership checks compatibility and answers with this node's hello.
                        let _ = state
                            .membership
                            .cast(MembershipMsg::HelloFrom { hello, reply });
                    }
                    Request::Ping => {
                        let _ = state.membership.cast(MembershipMsg::PingFrom {
                            from: f.from,
                            reply,
                        });
                    }
                    request => {
                        let rooms = state.rooms.clone();
                        let span = crate::telemetry::remote_span(f.traceparent.as_deref(), &f.from);
                        tokio::spawn(
                            async move {
                                let r = rooms.handle_call(&f.from, request).await;
                                answer(reply, &r);
                            }
                            .instrument(span),
                        );
                    }
                },
                Err(e) => {
                    metrics::counter!("parley_cluster_decode_errors_total").increment(1);
                    tracing::warn!(error = %e, bytes = bytes.len(), "undecodable cluster call refused");
                    answer(reply, &Response::Refused(format!("undecodable frame: {e}")));
                }
            },
        }
        Ok(())
    }
}

/// Encodes and sends an answer (for the membership actor).
pub fn reply_with(reply: RpcReplyPort<Frame>, r: &Response) {
    answer(reply, r)
}
