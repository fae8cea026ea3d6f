//! Authentication before the upgrade: a JWT checked against configured keys, and the Origin
//! checked against an allow-list. Nothing reaches a WebSocket actor without passing both.
//!
//! Accepted algorithms are exactly those with a configured key: HS256 when a secret is set,
//! RS256 or ES256 for a public key. `alg: none` and any other algorithm are refused (the
//! token's header only selects among configured keys; it never chooses how to verify).
//! `exp` and `sub` are required; `sub` must be a valid user id.

use actix_web::http::header;
use actix_web::HttpRequest;
use cluster_proto::{Member, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest display name kept from the `name` claim, in characters.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Where the keys come from.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256 shared secret.
    pub hs256_secret: Option<String>,
    /// A PEM public key for RS256 or ES256, with its algorithm.
    pub public_key_pem: Option<(String, Algorithm)>,
    /// Clock skew tolerated on `exp`, seconds.
    pub leeway_secs: u64,
    /// Allowed `Origin` values; `*` allows any. Requests without `Origin` (non-browsers) pass.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer <jwt>, ?token=<jwt> or Sec-WebSocket-Protocol: bearer, <jwt>")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("origin {0:?} is not allowed")]
    ForbiddenOrigin(String),
    #[error("bad key configuration: {0}")]
    Config(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub exp: u64,
}

/// How the token was presented (the subprotocol form needs an answer header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Subprotocol,
    Query,
}

/// A successful authentication.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub member: Member,
    pub source: TokenSource,
}

pub struct Authenticator {
    keys: Vec<(Algorithm, DecodingKey)>,
    leeway: u64,
    origins: Vec<String>,
}

impl Authenticator {
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if let Some(secret) = &cfg.hs256_secret {
            let k = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| AuthError::Config(e.to_string()))?;
            keys.push((Algorithm::HS256, k));
        }
        if let Some((pem, alg)) = &cfg.public_key_pem {
            let k = match alg {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
                Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
                other => {
                    return Err(AuthError::Config(format!(
                        "unsupported algorithm {other:?}"
                    )))
                }
            }
            .map_err(|e| AuthError::Config(e.to_string()))?;
            keys.push((*alg, k));
        }
        if keys.is_empty() {
            return Err(AuthError::Config("no JWT key configured".into()));
        }
        Ok(Self {
            keys,
            leeway: cfg.leeway_secs,
            origins: cfg.allowed_origins.clone(),
        })
    }

    /// Checks the `Origin` header against the allow-list.
    pub fn check_origin(&self, req: &HttpRequest) -> Result<(), AuthError> {
        let Some(origin) = req.headers().get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("");
        if self
            .origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            Ok(())
        } else {
            Err(AuthError::ForbiddenOrigin(
                origin.chars().take(200).collect(),
            ))
        }
    }

    /// Finds and verifies the request's token.
    pub fn authenticate(&self, req: &HttpRequest) -> Result<Authenticated, AuthError> {
        let (token, source) = token_from(req).ok_or(AuthError::Missing)?;
        let member = self.verify(&token)?;
        Ok(Authenticated { member, source })
    }

    /// Verifies a token (also used by other transports).
    pub fn verify(&self, token: &str) -> Result<Member, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let (alg, key) = self
            .keys
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or_else(|| {
                AuthError::Invalid(format!("algorithm {:?} is not accepted", header.alg))
            })?;
        let mut v = Validation::new(*alg);
        v.leeway = self.leeway;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let user_id =
            UserId::new(&data.claims.sub).map_err(|e| AuthError::Invalid(format!("sub: {e}")))?;
        let username = match data.claims.name {
            Some(n) => clean_name(&n),
            None => String::new(),
        };
        let username = if username.is_empty() {
            user_id.to_string()
        } else {
            username
        };
        Ok(Member { user_id, username })
    }
}

fn clean_name(n: &str) -> String {
    n.chars()
        .filter(|c| !c.is_control())
        .take(MAX_USERNAME_CHARS)
        .collect::<String>()
        .trim()
        .to_string()
}

fn token_from(req: &HttpRequest) -> Option<(String, TokenSource)> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some((t.trim().to_string(), TokenSource::Header));
        }
    }
    if let Some(v) = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.split(',').map(str::trim);
        while let Some(p) = parts.next() {
            if p.eq_ignore_ascii_case("bearer") {
                if let Some(t) = parts.next() {
                    return Some((t.to_string(), TokenSource::Subprotocol));
                }
            }
        }
    }
    req.query_string()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")
        .map(|(_, v)| (v.to_string(), TokenSource::Query))
}

/// Signs an HS256 token (development tokens, tests and load tools).
pub fn mint_hs256(
    secret: &str,
    user: &str,
    name: &str,
    ttl_secs: u64,
) -> Result<String, AuthError> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + ttl_secs;
    let claims = Claims {
        sub: user.to_string(),
        name: Some(name.to_string()),
        exp,
    };
    let key = EncodingKey::from_secret(secret.as_bytes())
        .map_err(|e| AuthError::Config(e.to_string()))?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|e| AuthError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            hs256_secret: Some("s3cret".into()),
            allowed_origins: vec!["https://chat.example".into()],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn accepts_each_token_source() {
        let t = mint_hs256("s3cret", "alice", "Alice", 60).unwrap();
        let a = auth();
        let r = TestRequest::default()
            .insert_header(("Authorization", format!("Bearer {t}")))
            .to_http_request();
        assert_eq!(a.authenticate(&r).unwrap().member.username, "Alice");
        let r = TestRequest::default()
            .insert_header(("Sec-WebSocket-Protocol", format!("bearer, {t}")))
            .to_http_request();
        assert_eq!(a.authenticate(&r).unwrap().source, TokenSource::Subprotocol);
        let r = TestRequest::with_uri(&format!("/ws?x=1&token={t}")).to_http_request();
        assert_eq!(a.authenticate(&r).unwrap().member.user_id.as_str(), "alice");
    }

    #[test]
    fn rejects_bad_tokens() {
        let a = auth();
        assert!(matches!(a.verify("garbage"), Err(AuthError::Invalid(_))));
        let forged = mint_hs256("other", "alice", "A", 60).unwrap();
        assert!(matches!(a.verify(&forged), Err(AuthError::Invalid(_))));
        // alg: none, unsigned.
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(a.verify(none), Err(AuthError::Invalid(_))));
        let key = EncodingKey::from_secret(b"s3cret").unwrap();
        let expired = jsonwebtoken::encode(
            &Header::default(),
            &Claims {
                sub: "a".into(),
                name: None,
                exp: 1000,
            },
            &key,
        )
        .unwrap();
        assert_eq!(a.verify(&expired), Err(AuthError::Expired));
        let bad_sub = mint_hs256("s3cret", "has space", "A", 60).unwrap();
        assert!(matches!(a.verify(&bad_sub), Err(AuthError::Invalid(_))));
        let r = TestRequest::default().to_http_request();
        assert_eq!(a.authenticate(&r).unwrap_err(), AuthError::Missing);
    }

    #[test]
    fn checks_origin() {
        let a = auth();
        assert!(a
            .check_origin(&TestRequest::default().to_http_request())
            .is_ok());
        let ok = TestRequest::default()
            .insert_header(("Origin", "https://chat.example"))
            .to_http_request();
        assert!(a.check_origin(&ok).is_ok());
        let bad = TestRequest::default()
            .insert_header(("Origin", "https://evil.example"))
            .to_http_request();
        assert!(matches!(
            a.check_origin(&bad),
            Err(AuthError::ForbiddenOrigin(_))
        ));
    }

    #[test]
    fn cleans_names() {
        assert_eq!(clean_name(" A\u{0}li\nce "), "Alice");
        assert_eq!(clean_name(&"x".repeat(100)).len(), MAX_USERNAME_CHARS);
    }
}
