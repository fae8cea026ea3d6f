//! Identifiers. Room and user ids come from clients and tokens, so they are validated once,
//! at the edge, and carried as newtypes afterwards: code that holds a [`RoomId`] never has
//! to ask whether it is empty, huge or contains a key separator.

use std::fmt;
use std::sync::Arc;

use bincode::{Decode, Encode};
use serde::{Deserialize, Serialize};

/// Longest room or user id accepted, in bytes.
pub const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("id is empty")]
    Empty,
    #[error("id is longer than {MAX_ID_LEN} bytes")]
    TooLong,
    #[error("id contains a character outside A-Z a-z 0-9 _ - . : @")]
    BadChar,
}

fn validate(s: &str) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(InvalidId::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
    {
        return Err(InvalidId::BadChar);
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Encode, Decode)]
        #[serde(transparent)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `s` (1–128 bytes of `A-Z a-z 0-9 _ - . : @`).
            pub fn new(s: &str) -> Result<Self, InvalidId> {
                validate(s)?;
                Ok(Self(Arc::from(s)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A room id, validated.
    RoomId
);
string_id!(
    /// A user id (the JWT `sub`), validated.
    UserId
);

/// A session (one WebSocket connection) on one node. Unique for the life of the process;
/// the cluster pairs it with the node's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_room_ids() {
        assert!(RoomId::new("lobby").is_ok());
        assert!(RoomId::new("team:42@eu-1.general_x").is_ok());
        assert_eq!(RoomId::new(""), Err(InvalidId::Empty));
        assert_eq!(RoomId::new(&"a".repeat(129)), Err(InvalidId::TooLong));
        assert!(RoomId::new(&"a".repeat(128)).is_ok());
        assert_eq!(RoomId::new("a b"), Err(InvalidId::BadChar));
        assert_eq!(RoomId::new("a\0b"), Err(InvalidId::BadChar));
        assert_eq!(RoomId::new("é"), Err(InvalidId::BadChar));
    }

    #[test]
    fn deserialize_validates() {
        let ok: RoomId = serde_json::from_str("\"r1\"").unwrap();
        assert_eq!(ok.as_str(), "r1");
        assert!(serde_json::from_str::<RoomId>("\"bad id\"").is_err());
        assert!(serde_json::from_str::<RoomId>("12").is_err());
    }
}
