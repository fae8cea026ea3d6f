//! What nodes say to each other.
//!
//! Every frame between two nodes is one [`CallFrame`] (a request that wants a [`Response`]),
//! one [`CastFrame`] (fire and forget) or a [`Response`], each encoded by [`crate::codec`]: a
//! version byte, then bincode 2. The version byte is the per-message tag; [`Hello`] carries
//! [`PROTOCOL_VERSION`] and the ring's invariants so that incompatible nodes refuse each other
//! at connect time instead of misreading each other later.
//!
//! Compatibility rule: a variant is only ever *added* at the end of an enum (bincode encodes
//! the variant index), and a field is never changed in place; anything else needs a new
//! [`crate::codec::WIRE_VERSION`] (older bytes keep decoding, see the golden-bytes tests) or a
//! new [`PROTOCOL_VERSION`] (nodes refuse each other and the operator rolls the cluster).
//!
//! The transport (ractor_cluster in the node) only carries opaque bytes, so a frame that does
//! not decode is counted and answered with an error, never a panic, and never kills the link.

use std::sync::Arc;

use bincode::{Decode, Encode};
use bytes::Bytes;

use crate::api::{JoinReply, SendRequest};
use crate::codec::{self, CodecError};
use crate::error::ApiError;
use crate::ids::{RoomId, SessionId, UserId};
use crate::message::{ChatMessage, Member};
use crate::push::{Push, PushKind};

/// Version of the node-to-node protocol. Nodes with different versions do not form a cluster.
pub const PROTOCOL_VERSION: u16 = 1;

/// Exchanged when two nodes connect (both ways): who I am and the rules I follow.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Hello {
    pub protocol: u16,
    /// The owner function's name (`rooms::ring::RING_HASH`).
    pub ring_hash: String,
    pub virtual_nodes: u32,
    pub node: String,
    /// Where other nodes reach this one (`host:port`).
    pub advertise: String,
    /// Addresses of the peers this node knows (so that a node seeded with one peer finds all).
    pub peers: Vec<String>,
    /// The node is draining: take it out of the ring.
    pub leaving: bool,
}

impl Hello {
    /// Why `other` cannot join a cluster with `self`, if it cannot.
    pub fn incompatibility(&self, other: &Hello) -> Option<String> {
        if self.protocol != other.protocol {
            return Some(format!(
                "protocol version {} (this node speaks {})",
                other.protocol, self.protocol
            ));
        }
        if self.ring_hash != other.ring_hash || self.virtual_nodes != other.virtual_nodes {
            return Some(format!(
                "ring {} with {} virtual nodes (this node uses {} with {})",
                other.ring_hash, other.virtual_nodes, self.ring_hash, self.virtual_nodes
            ));
        }
        if self.node == other.node {
            return Some(format!("the same node name {:?} as this node", other.node));
        }
        None
    }
}

/// A push as it crosses nodes: its JSON data, serialized once by the room's owner.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct WirePush {
    pub kind: u8,
    pub room: Option<RoomId>,
    pub seq: Option<u64>,
    pub data: Vec<u8>,
}

const KINDS: [PushKind; 8] = [
    PushKind::MessageHistory,
    PushKind::NewMessage,
    PushKind::UserJoined,
    PushKind::UserLeft,
    PushKind::UserTyping,
    PushKind::MessagesRead,
    PushKind::Resync,
    PushKind::Error,
];

impl WirePush {
    pub fn from_push(p: &Push) -> WirePush {
        WirePush {
            kind: KINDS.iter().position(|k| *k == p.kind).unwrap_or(7) as u8,
            room: p.room.clone(),
            seq: p.seq,
            data: p.data().to_vec(),
        }
    }

    /// The push again; `None` for a kind this build does not know.
    pub fn into_push(self) -> Option<Arc<Push>> {
        let kind = *KINDS.get(self.kind as usize)?;
        Some(Push::from_json(
            kind,
            self.room,
            self.seq,
            Bytes::from(self.data),
        ))
    }
}

/// A session of another node, as a room's owner records it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RemoteMember {
    pub session: SessionId,
    pub member: Member,
}

/// A room's state, handed by its old owner to its new one in a planned move (a node joined,
/// or the old owner drains) once the old owner's writes in flight are done.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RoomHandoff {
    /// The last seq the old owner committed.
    pub last_seq: u64,
    /// Its most recent messages (what `joinRoom` returns).
    pub recent: Vec<ChatMessage>,
    /// Its dedupe window: (user, clientMsgId, seq).
    pub dedupe: Vec<(UserId, String, u64)>,
    /// Read receipts: (user, seq).
    pub receipts: Vec<(UserId, u64)>,
    /// Its members, with the node of each session.
    pub members: Vec<(String, RemoteMember)>,
}

/// Requests that want an answer.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Request {
    Hello(Hello),
    /// Heartbeat of the failure detector.
    Ping,
    Join {
        session: SessionId,
        member: Member,
        room: RoomId,
    },
    Send {
        session: SessionId,
        member: Member,
        req: SendRequest,
    },
    MarkRead {
        session: SessionId,
        member: Member,
        room: RoomId,
        up_to_seq: u64,
    },
    /// Sessions of the user on the sender's node (to the user's owner): a session opened,
    /// or the user's owner changed.
    UserConnect {
        user: UserId,
        sessions: Vec<SessionId>,
    },
    /// The sender's sessions that are members of `room` (to the room's owner, after the owner
    /// changed or restarted); the owner adds them silently and pushes them `resync`.
    Rejoin {
        room: RoomId,
        members: Vec<RemoteMember>,
    },
    /// A planned move: the old owner's state of `room` (to the new owner).
    Handoff {
        room: RoomId,
        state: RoomHandoff,
    },
}

/// Answers to [`Request`]s.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Response {
    Hello(Hello),
    Pong {
        leaving: bool,
    },
    Join(Result<JoinReply, ApiError>),
    Send(Result<ChatMessage, ApiError>),
    MarkRead(Result<u64, ApiError>),
    UserConnect(Result<(), ApiError>),
    Rejoin(Result<(), ApiError>),
    Handoff(Result<(), ApiError>),
    /// The request was not understood (or this node refuses the sender).
    Refused(String),
}

/// One-way messages.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub enum Cast {
    /// A session left a room (to the room's owner).
    Leave { session: SessionId, room: RoomId },
    Typing {
        session: SessionId,
        member: Member,
        room: RoomId,
        is_typing: bool,
    },
    /// From a room's owner: deliver to this node's sessions in `room` (one per node, never
    /// one per member).
    Deliver {
        room: RoomId,
        except: Option<SessionId>,
        push: WirePush,
    },
    /// From a room's owner: deliver to one session of this node.
    DeliverTo { session: SessionId, push: WirePush },
    /// A session of the user closed (to the user's owner).
    UserDisconnect { session: SessionId, user: UserId },
    /// The sender is draining: take it out of the ring now.
    Leaving,
    /// From a room's owner whose room actor restarted: register your members of `room` again.
    Reregister { room: RoomId },
    /// From a user's owner: the user has sessions on `nodes` nodes; run its bucket at that
    /// share of the limit.
    UserShare { user: UserId, nodes: u32 },
    /// From a user's owner whose user actor restarted (after a panic, with its sessions lost):
    /// register your sessions of `user` again.
    ReregisterUser { user: UserId },
}

/// A request with its sender.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct CallFrame {
    pub from: String,
    pub request: Request,
    /// The caller's W3C `traceparent`, so that the owner's spans join the client request's
    /// trace (ractor_cluster carries no trace context of its own).
    pub traceparent: Option<String>,
}

/// A one-way message with its sender.
#[derive(Debug, Clone, PartialEq, Encode, Decode)]
pub struct CastFrame {
    pub from: String,
    pub cast: Cast,
}

pub fn encode_call(
    from: &str,
    request: Request,
    traceparent: Option<String>,
) -> Result<Vec<u8>, CodecError> {
    codec::encode(&CallFrame {
        from: from.to_string(),
        request,
        traceparent,
    })
}

pub fn decode_call(bytes: &[u8]) -> Result<CallFrame, CodecError> {
    codec::decode(bytes)
}

pub fn encode_cast(from: &str, cast: Cast) -> Result<Vec<u8>, CodecError> {
    codec::encode(&CastFrame {
        from: from.to_string(),
        cast,
    })
}

pub fn decode_cast(bytes: &[u8]) -> Result<CastFrame, CodecError> {
    codec::decode(bytes)
}

pub fn encode_response(r: &Response) -> Result<Vec<u8>, CodecError> {
    codec::encode(r)
}

pub fn decode_response(bytes: &[u8]) -> Result<Response, CodecError> {
    codec::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> Member {
        Member {
            user_id: UserId::new("u").unwrap(),
            username: "U".into(),
        }
    }

    #[test]
    fn frames_round_trip() {
        let room = RoomId::new("r").unwrap();
        let call = CallFrame {
            from: "a".into(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            request: Request::Send {
                session: SessionId(7),
                member: member(),
                req: SendRequest {
                    room: room.clone(),
                    text: "hi".into(),
                    attachments: "[]".into(),
                    client_msg_id: Some("c1".into()),
                },
            },
        };
        let b = encode_call("a", call.request.clone(), call.traceparent.clone()).unwrap();
        assert_eq!(decode_call(&b).unwrap(), call);

        let p = Push::new(PushKind::NewMessage, Some(room.clone()), Some(3), &"x");
        let cast = Cast::Deliver {
            room,
            except: None,
            push: WirePush::from_push(&p),
        };
        let b = encode_cast("b", cast.clone()).unwrap();
        let back = decode_cast(&b).unwrap();
        assert_eq!(back.cast, cast);
        let Cast::Deliver { push, .. } = back.cast else {
            unreachable!()
        };
        let p2 = push.into_push().unwrap();
        assert_eq!(p2.native_frame(), p.native_frame());
    }

    #[test]
    fn unknown_push_kind_is_refused_not_guessed() {
        let w = WirePush {
            kind: 200,
            room: None,
            seq: None,
            data: b"1".to_vec(),
        };
        assert!(w.into_push().is_none());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &[][..],
            &[1][..],
            &[1, 200, 3][..],
            &[9, 0][..],
            &[1, 0, 255, 255, 255][..],
        ] {
            assert!(decode_call(bytes).is_err());
            assert!(decode_cast(bytes).is_err());
            assert!(decode_response(bytes).is_err());
        }
    }

    #[test]
    fn hello_compatibility() {
        let a = Hello {
            protocol: PROTOCOL_VERSION,
            ring_hash: "rendezvous-xxh3-v1".into(),
            virtual_nodes: 0,
            node: "a".into(),
            advertise: "127.0.0.1:1".into(),
            peers: vec![],
            leaving: false,
        };
        let mut b = a.clone();
        b.node = "b".into();
        assert_eq!(a.incompatibility(&b), None);
        let mut old = b.clone();
        old.protocol = 0;
        assert!(a.incompatibility(&old).unwrap().contains("protocol"));
        let mut vn = b.clone();
        vn.virtual_nodes = 64;
        assert!(a.incompatibility(&vn).unwrap().contains("virtual nodes"));
        assert!(a
            .incompatibility(&a.clone())
            .unwrap()
            .contains("same node name"));
    }

    /// Bytes of protocol 1 / wire version 1. If these tests fail, nodes of this build can no
    /// longer talk to nodes of the previous one: add variants at the end, or bump a version.
    #[test]
    fn golden_bytes_v1() {
        let ping = encode_call("a", Request::Ping, None).unwrap();
        assert_eq!(ping, GOLDEN_PING);
        assert_eq!(decode_call(GOLDEN_PING).unwrap().request, Request::Ping);

        let leave = Cast::Leave {
            session: SessionId(5),
            room: RoomId::new("r").unwrap(),
        };
        assert_eq!(encode_cast("a", leave.clone()).unwrap(), GOLDEN_LEAVE);
        assert_eq!(decode_cast(GOLDEN_LEAVE).unwrap().cast, leave);

        let pong = Response::Pong { leaving: true };
        assert_eq!(encode_response(&pong).unwrap(), GOLDEN_PONG);
        assert_eq!(decode_response(GOLDEN_PONG).unwrap(), pong);
    }

    /// Variants added after protocol 1's first release sit at the end of their enum.
    #[test]
    fn later_variants_keep_the_earlier_indexes() {
        let c = Cast::ReregisterUser {
            user: UserId::new("u").unwrap(),
        };
        assert_eq!(
            encode_cast("a", c.clone()).unwrap(),
            [1, 1, b'a', 8, 1, b'u']
        );
        assert_eq!(decode_cast(&[1, 1, b'a', 8, 1, b'u']).unwrap().cast, c);
    }

    const GOLDEN_PING: &[u8] = &[1, 1, b'a', 1, 0];
    const GOLDEN_LEAVE: &[u8] = &[1, 1, b'a', 0, 5, 1, b'r'];
    const GOLDEN_PONG: &[u8] = &[1, 1, 1];
}
