//! Authentication and origin checks happen before the upgrade.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

use crate::harness::*;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        &json!({"sub": sub, "name": "N", "exp": exp}),
        key,
    )
    .unwrap()
}

async fn status(url: &str, headers: &[(&str, &str)]) -> Result<(), u16> {
    match Client::connect_with(url, headers).await {
        Ok(_) => Ok(()),
        Err(Refused::Http(code)) => Err(code),
        Err(Refused::Other(e)) => panic!("unexpected failure: {e}"),
    }
}

#[tokio::test]
async fn accepts_header_query_and_subprotocol_tokens() {
    let node = Node::start(&[]).await;
    let t = token("alice", "Alice");
    status(&node.url(), &[("Authorization", &format!("Bearer {t}"))])
        .await
        .unwrap();
    status(&format!("{}?token={t}", node.url()), &[])
        .await
        .unwrap();
    // Browsers: the token rides in Sec-WebSocket-Protocol and the server must pick "bearer".
    let mut c = Client::connect_with(
        &node.url(),
        &[("Sec-WebSocket-Protocol", &format!("bearer, {t}"))],
    )
    .await
    .expect("subprotocol auth");
    let data = c.join("lobby").await;
    assert_eq!(data["roomId"], "lobby");
}

#[tokio::test]
async fn rejects_missing_expired_forged_and_unsigned_tokens_with_401() {
    let node = Node::start(&[]).await;
    let url = node.url();
    assert_eq!(status(&url, &[]).await, Err(401));
    let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let expired = sign(Algorithm::HS256, &key, "alice", now() - 3600);
    assert_eq!(
        status(&format!("{url}?token={expired}"), &[]).await,
        Err(401)
    );
    let forged = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret-at-all").unwrap(),
        "alice",
        now() + 60,
    );
    assert_eq!(
        status(&format!("{url}?token={forged}"), &[]).await,
        Err(401)
    );
    // alg:none: header {"alg":"none"}, no signature.
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    assert_eq!(status(&format!("{url}?token={none}"), &[]).await, Err(401));
    assert_eq!(
        status(&url, &[("Authorization", "Bearer not.a.jwt")]).await,
        Err(401)
    );
    // A valid signature but a user id outside the allowed alphabet.
    let bad_sub = sign(Algorithm::HS256, &key, "bad user", now() + 60);
    assert_eq!(
        status(&format!("{url}?token={bad_sub}"), &[]).await,
        Err(401)
    );
    // The body says why, with a stable code.
    let (code, body) = http_request(
        "GET",
        &node.http("/ws"),
        &[("Connection", "Upgrade"), ("Upgrade", "websocket")],
    )
    .await;
    assert_eq!(code, 401);
    assert!(body.contains("\"unauthorized\""), "{body}");
    assert!(metric(&node, "parley_auth_failures_total").await >= 7.0);
}

#[tokio::test]
async fn rejects_origins_outside_the_allow_list_with_403() {
    let node = Node::start(&["--set", "allowed_origins=[\"https://chat.example\"]"]).await;
    let url = format!("{}?token={}", node.url(), token("alice", "A"));
    assert_eq!(
        status(&url, &[("Origin", "https://evil.example")]).await,
        Err(403)
    );
    status(&url, &[("Origin", "https://chat.example")])
        .await
        .unwrap();
    // Non-browser clients send no Origin.
    status(&url, &[]).await.unwrap();
}

#[tokio::test]
async fn verifies_rs256_and_es256_with_public_keys() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/fixtures");
    for (alg, name, public, private) in [
        (
            Algorithm::RS256,
            "RS256",
            "rsa_public.pem",
            "rsa_private.pem",
        ),
        (Algorithm::ES256, "ES256", "ec_public.pem", "ec_private.pem"),
    ] {
        let public = format!("{fixtures}/{public}");
        let alg_setting = format!("jwt_public_key_algorithm=\"{name}\"");
        let node = Node::start(&[
            "--set",
            &format!("jwt_public_key_file=\"{public}\""),
            "--set",
            &alg_setting,
        ])
        .await;
        let pem = std::fs::read(format!("{fixtures}/{private}")).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let good = sign(alg, &key, "alice", now() + 60);
        status(&format!("{}?token={good}", node.url()), &[])
            .await
            .unwrap_or_else(|c| panic!("{name}: {c}"));
        // HS256 with the shared test secret is also configured; an HS256 token signed with the
        // *public key bytes* (the classic key-confusion attack) must fail.
        let confused = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(&public).unwrap()).unwrap(),
            "alice",
            now() + 60,
        );
        assert_eq!(
            status(&format!("{}?token={confused}", node.url()), &[]).await,
            Err(401),
            "{name}"
        );
    }
}
