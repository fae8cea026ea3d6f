//! Opening a driver [`Session`] from a [`ScyllaConfig`].
//!
//! The session spawns its connection-pool tasks on the tokio runtime it is built on, so build it
//! on the node's long-lived multi-thread runtime (not inside a short-lived or current-thread one).
//! It is `Send + Sync` and shared behind an `Arc`.

use std::sync::Arc;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;

use super::config::{ScyllaConfig, TlsOptions};
use super::error::ScyllaError;

/// Connects to the cluster with the config's consistency, time-outs, credentials and TLS.
pub async fn open_session(cfg: &ScyllaConfig) -> Result<Session, ScyllaError> {
    cfg.validate()?;
    let mut lbp = DefaultPolicy::builder().token_aware(true);
    if let Some(dc) = &cfg.local_datacenter {
        lbp = lbp.prefer_datacenter(dc.clone()).permit_dc_failover(false);
    }
    let profile = ExecutionProfile::builder()
        .consistency(cfg.consistency.into())
        .request_timeout(Some(cfg.request_timeout))
        .load_balancing_policy(lbp.build())
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .connection_timeout(cfg.connect_timeout)
        .default_execution_profile_handle(profile.into_handle())
        // Client-side, strictly increasing write timestamps: a retried write can never be
        // ordered before a later one by the coordinator's clock.
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
    if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
        builder = builder.user(user, pass);
    }
    if let Some(tls) = &cfg.tls {
        builder = builder.tls_context(Some(rustls_config(tls)?));
    }
    builder
        .build()
        .await
        .map_err(|source| ScyllaError::Connect {
            contact_points: cfg.contact_points.clone(),
            source: Box::new(source),
        })
}

/// A rustls client config trusting only `ca_file`, with an optional client certificate.
fn rustls_config(tls: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, ScyllaError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        ScyllaError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca_file)
        .map_err(|e| err("reading CA file", &tls.ca_file, &e))?;
    for ca in cas {
        let ca = ca.map_err(|e| err("parsing CA file", &tls.ca_file, &e))?;
        roots
            .add(ca)
            .map_err(|e| err("adding CA from", &tls.ca_file, &e))?;
    }
    if roots.is_empty() {
        return Err(ScyllaError::Tls(format!(
            "no certificate in CA file {}",
            tls.ca_file.display()
        )));
    }
    // Name the provider explicitly: with both ring and aws-lc-rs compiled in (other crates may
    // enable either), rustls' process-wide default would be ambiguous.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ScyllaError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_file, &tls.key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| err("reading client certificate", cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("parsing client certificate", cert, &e))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err("reading client key", key, &e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| ScyllaError::Tls(e.to_string()))?
        }
        _ => {
            return Err(ScyllaError::Config(
                "tls.cert_file and tls.key_file must be given together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}
