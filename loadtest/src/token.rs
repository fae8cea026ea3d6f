//! Minting the HS256 JWTs the server accepts (`sub`, `name`, `exp`).

use anyhow::{Context, Result};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde::Serialize;

/// The server's development secret, used when neither `--jwt-secret` nor
/// `PARLEY_JWT_SECRET` is given.
pub const DEV_SECRET: &str = "parley-dev-secret-not-for-production";

/// How long minted tokens stay valid; longer than any bounded run.
const VALIDITY_SECS: u64 = 24 * 3600;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    name: &'a str,
    exp: u64,
}

/// Mints tokens with one key; cheap to clone into tasks behind an `Arc`.
pub struct Minter {
    key: EncodingKey,
    header: Header,
}

impl Minter {
    pub fn new(secret: &str) -> Result<Self> {
        let key = EncodingKey::from_secret(secret.as_bytes()).context("invalid JWT secret")?;
        Ok(Self {
            key,
            header: Header::default(),
        })
    }

    /// A token for user `sub` with display name `name`, valid for a day.
    pub fn mint(&self, sub: &str, name: &str) -> Result<String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock before 1970")?
            .as_secs();
        let claims = Claims {
            sub,
            name,
            exp: now + VALIDITY_SECS,
        };
        encode(&self.header, &claims, &self.key).context("minting JWT")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Decoded {
        sub: String,
        name: String,
        exp: u64,
    }

    #[test]
    fn minted_token_verifies_with_the_same_secret() {
        let m = Minter::new(DEV_SECRET).unwrap();
        let t = m.mint("u-1", "User One").unwrap();
        assert_eq!(t.split('.').count(), 3);
        let key = DecodingKey::from_secret(DEV_SECRET.as_bytes()).unwrap();
        let d = decode::<Decoded>(&t, &key, &Validation::new(Algorithm::HS256)).unwrap();
        assert_eq!(d.claims.sub, "u-1");
        assert_eq!(d.claims.name, "User One");
        assert!(d.claims.exp > 1_700_000_000);
        assert_eq!(d.header.alg, Algorithm::HS256);
    }

    #[test]
    fn other_secret_fails_and_empty_secret_is_refused() {
        let t = Minter::new("a").unwrap().mint("u", "u").unwrap();
        let key = DecodingKey::from_secret(b"b").unwrap();
        assert!(decode::<Decoded>(&t, &key, &Validation::new(Algorithm::HS256)).is_err());
        assert!(Minter::new("").is_err());
    }
}
