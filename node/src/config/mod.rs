//! The node's configuration: one typed struct, layered from defaults, an optional TOML file
//! (`--config` / `PARLEY_CONFIG`), `PARLEY_*` environment variables and command-line flags, in
//! that order (later wins). Every field has a unit in its name or a typed value, and a default
//! that runs a working development node.
//!
//! Environment variables: `PARLEY_<KEY>` sets a top-level key (`PARLEY_DATA_DIR`), and `__`
//! descends into a section (`PARLEY_SCYLLA__CONTACT_POINTS='["10.0.0.5:9042"]'`,
//! `PARLEY_SCYLLA__RETRY__MAX_ATTEMPTS=6`). Only variables whose first part names a setting are
//! read: `PARLEY_` is also the prefix of the scripts' and tests' own variables
//! (`PARLEY_TEST_CQL`, `PARLEY_CACHE_DIR`...), which must not make the node refuse to start.
//! [`ignored_env_vars`] lists the ones skipped, and the node logs them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::Figment;
use history::scylla::ScyllaConfig;
use serde::{Deserialize, Serialize};

mod cluster;
pub use cluster::ClusterSettings;

/// The development secret used when none is configured (with a loud warning).
pub const DEV_JWT_SECRET: &str = "parley-dev-secret-not-for-production";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HistoryBackend {
    /// fjall in `data_dir/history` (default; nothing to install).
    Embedded,
    /// ScyllaDB or Cassandra, configured by the `[scylla]` section (see `docs/storage.md`).
    Scylla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    RS256,
    ES256,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything a node can be told. Field docs give unit and default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP and WebSocket address. Default `127.0.0.1:3000`.
    pub listen: SocketAddr,
    /// This node's name, its place on the hash ring. Default `parley-1`.
    pub node_name: String,
    /// Where the embedded store keeps its files. Default `./data`.
    pub data_dir: PathBuf,
    /// History store: `embedded` or `scylla`. Default `embedded`.
    pub history: HistoryBackend,
    /// With `history = "scylla"`: how long the node keeps trying to reach the cluster at boot
    /// (each failure is logged) before it exits with an error. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub history_connect_timeout: Duration,
    /// The ScyllaDB / Cassandra store (`history = "scylla"`, and `parley migrate`).
    pub scylla: ScyllaConfig,
    /// Clustering with other nodes (`[cluster]`; unset `listen`: a node alone).
    pub cluster: ClusterSettings,

    /// HS256 secret for client JWTs. Unset: a development secret, with a warning.
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256/ES256 client JWTs.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Algorithm of `jwt_public_key_file`. Default RS256.
    pub jwt_public_key_algorithm: JwtAlgorithm,
    /// Clock skew tolerated on `exp`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// Allowed browser `Origin`s; `*` allows any. Default `["*"]`.
    pub allowed_origins: Vec<String>,

    /// Largest WebSocket frame or fragmented message, bytes. Default 1 048 576.
    pub max_frame_bytes: usize,
    /// Longest message text, characters. Default 8000.
    pub max_text_chars: usize,
    /// Most attachments per message. Default 10.
    pub max_attachments: usize,
    /// Most rooms one connection may join. Default 100.
    pub max_rooms_per_connection: usize,
    /// Requests in flight per connection. Default 256.
    pub max_inflight: usize,
    /// Pushes queued per connection before it is closed as a slow consumer. Default 1024.
    pub outbound_queue: usize,
    /// After evicting a slow consumer, time for its session to close before the node shuts
    /// its socket down (a client that stops reading freezes its actor). Default 2 s.
    #[serde(with = "humantime_serde")]
    pub slow_consumer_grace: Duration,
    /// Rejected requests in a row before a connection is closed (4029). Default 100.
    pub max_consecutive_errors: u32,
    /// Requests per second per user (all sessions together). Default 20.
    pub rate_limit_per_sec: f64,
    /// Burst size of the per-user rate limit. Default 60.
    pub rate_limit_burst: f64,
    /// Server ping period. Default 25 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Close connections silent this long. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// TCP_USER_TIMEOUT on client sockets: how long unacknowledged output may wait before the
    /// kernel drops the connection (frees sessions whose client stopped reading). Default 30 s.
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,

    /// Messages returned on `joinRoom`. Default 50.
    pub history_on_join: usize,
    /// Largest `history` page. Default 200.
    pub max_history_page: usize,
    /// Largest `resume` answer. Default 1000.
    pub max_resume: usize,
    /// Client message ids remembered per room for idempotent resends. Default 1000.
    pub dedupe_window: usize,
    /// Typing indicators expire after this. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub typing_ttl: Duration,
    /// Stop an empty room actor after this. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub room_idle_timeout: Duration,
    /// Stop a user actor this long after the user's last session. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub user_idle_timeout: Duration,
    /// Hibernate a user actor after this long without a connect, disconnect or node change
    /// while the user has sessions: the actor (about 11 KiB) stops and the user's sessions by
    /// node (about 100 bytes) are kept until the next such event wakes it. Must be > 0.
    /// Default 5 s.
    #[serde(with = "humantime_serde")]
    pub user_hibernate_after: Duration,
    /// Deadline of a call to a room or user actor. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Restarts of one room allowed per `restart_period` before it is left down. Default 5.
    pub max_restarts: usize,
    /// Window for `max_restarts`. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub restart_period: Duration,

    /// WebSocket connections this node holds at most; one more is answered `503` with code
    /// `server_full` (and `/readyz` says `full`). 0 = the process's open-files limit less 128
    /// (kept for the store, cluster links and plain HTTP requests). Default 0.
    pub max_connections: usize,
    /// actix-web worker threads (sockets, sessions); 0 = number of cores. Default 0.
    pub http_workers: usize,
    /// Threads of the core runtime (rooms, users, store); 0 = number of cores. Default 0.
    pub core_threads: usize,
    /// Time given to connections to close on shutdown. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Log filter (tracing `EnvFilter` syntax; `RUST_LOG` wins). Default `info`.
    pub log: String,
    /// Log format. Default `text`.
    pub log_format: LogFormat,
    /// OTLP/HTTP traces endpoint (e.g. `http://otel-collector:4318/v1/traces`); spans of client
    /// requests and of the room handlers they reach are exported there in batches. Unset: no
    /// export. Default unset.
    pub otlp_endpoint: Option<String>,
    /// Enables `/debug/*` fault-injection endpoints. Never in production. Default false.
    pub test_hooks: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            node_name: "parley-1".into(),
            data_dir: PathBuf::from("./data"),
            history: HistoryBackend::Embedded,
            history_connect_timeout: Duration::from_secs(30),
            scylla: ScyllaConfig::default(),
            cluster: ClusterSettings::default(),
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_public_key_algorithm: JwtAlgorithm::RS256,
            jwt_leeway: Duration::from_secs(5),
            allowed_origins: vec!["*".into()],
            max_frame_bytes: 1024 * 1024,
            max_text_chars: 8000,
            max_attachments: 10,
            max_rooms_per_connection: 100,
            max_inflight: 256,
            outbound_queue: 1024,
            slow_consumer_grace: Duration::from_secs(2),
            max_consecutive_errors: 100,
            rate_limit_per_sec: 20.0,
            rate_limit_burst: 60.0,
            heartbeat_interval: Duration::from_secs(25),
            client_timeout: Duration::from_secs(60),
            tcp_user_timeout: Duration::from_secs(30),
            history_on_join: 50,
            max_history_page: 200,
            max_resume: 1000,
            dedupe_window: 1000,
            typing_ttl: Duration::from_secs(5),
            room_idle_timeout: Duration::from_secs(60),
            user_idle_timeout: Duration::from_secs(60),
            user_hibernate_after: Duration::from_secs(5),
            call_timeout: Duration::from_secs(5),
            max_restarts: 5,
            restart_period: Duration::from_secs(10),
            max_connections: 0,
            http_workers: 0,
            core_threads: 0,
            shutdown_grace: Duration::from_secs(5),
            log: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            test_hooks: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
}

impl Config {
    /// Layers defaults, `file`, `PARLEY_*` and `overrides` (flags), then validates.
    pub fn load(file: Option<&Path>, overrides: Figment) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(defaults());
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "config file {} does not exist",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        let fig = fig.merge(env_provider()).merge(overrides);
        let cfg: Config = fig.extract().map_err(Box::new)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The configuration with secrets replaced, for printing (`check-config`).
    pub fn redacted(&self) -> Config {
        let hide = |s: &Option<String>| s.as_ref().map(|_| "<redacted>".to_string());
        let mut cfg = self.clone();
        cfg.jwt_secret = hide(&cfg.jwt_secret);
        cfg.scylla.password = hide(&cfg.scylla.password);
        cfg.cluster.cookie = hide(&cfg.cluster.cookie);
        cfg
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_name.is_empty() || self.node_name.len() > 64 {
            return bad("node_name must be 1-64 characters");
        }
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 64 * 1024 * 1024 {
            return bad("max_frame_bytes must be between 1 KiB and 64 MiB");
        }
        if self.outbound_queue == 0 || self.max_inflight == 0 || self.max_rooms_per_connection == 0
        {
            return bad("outbound_queue, max_inflight and max_rooms_per_connection must be > 0");
        }
        if self.rate_limit_per_sec.is_nan()
            || self.rate_limit_per_sec <= 0.0
            || self.rate_limit_burst.is_nan()
            || self.rate_limit_burst < 1.0
        {
            return bad("rate_limit_per_sec must be > 0 and rate_limit_burst >= 1");
        }
        if self.heartbeat_interval.is_zero() || self.client_timeout <= self.heartbeat_interval {
            return bad("client_timeout must be longer than heartbeat_interval (> 0)");
        }
        if self.user_hibernate_after.is_zero() {
            return bad("user_hibernate_after must be > 0");
        }
        if self.history_on_join == 0 || self.max_history_page == 0 || self.max_resume == 0 {
            return bad("history_on_join, max_history_page and max_resume must be > 0");
        }
        if matches!(&self.jwt_secret, Some(s) if s.len() < 16) {
            return bad("jwt_secret must be at least 16 bytes");
        }
        if self.allowed_origins.is_empty() {
            return bad("allowed_origins must not be empty (use [\"*\"] to allow any)");
        }
        if self.history == HistoryBackend::Scylla && self.history_connect_timeout.is_zero() {
            return bad("history_connect_timeout must be > 0");
        }
        self.scylla
            .validate()
            .map_err(|e| ConfigError::Invalid(format!("[scylla]: {e}")))?;
        self.cluster
            .validate(self.history)
            .map_err(|e| ConfigError::Invalid(format!("[cluster]: {e}")))?;
        Ok(())
    }

    /// The HS256 secret in force, and whether it is the development default.
    pub fn effective_jwt_secret(&self) -> (Option<String>, bool) {
        match (&self.jwt_secret, &self.jwt_public_key_file) {
            (Some(s), _) => (Some(s.clone()), false),
            (None, Some(_)) => (None, false),
            (None, None) => (Some(DEV_JWT_SECRET.to_string()), true),
        }
    }

    /// Reads the configured public key file.
    pub fn public_key_pem(&self) -> Result<Option<String>, ConfigError> {
        match &self.jwt_public_key_file {
            None => Ok(None),
            Some(p) => std::fs::read_to_string(p)
                .map(Some)
                .map_err(|err| ConfigError::Read {
                    path: p.clone(),
                    err,
                }),
        }
    }
}

/// The defaults layer. Figment merges layers key by key, which is wrong for an internally
/// tagged enum: a file that sets `scylla.replication` to NetworkTopologyStrategy would inherit
/// SimpleStrategy's `replication_factor` and be refused. So `scylla.replication` is left out of
/// this layer, and serde's `#[serde(default)]` supplies it when no layer sets it.
fn defaults() -> Serialized<Dict> {
    let mut dict = match Value::serialize(Config::default()) {
        Ok(Value::Dict(_, d)) => d,
        _ => Dict::new(),
    };
    if let Some(Value::Dict(_, scylla)) = dict.get_mut("scylla") {
        scylla.remove("replication");
    }
    Serialized::defaults(dict)
}

/// The top-level keys of [`Config`] (every field, including unset options).
fn setting_names() -> Vec<String> {
    match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `PARLEY_*` variables naming a setting (`PARLEY_CONFIG` is the file, read by the flags).
fn env_provider() -> Env {
    let names = setting_names();
    Env::prefixed("PARLEY_")
        .split("__")
        .filter(move |key| is_setting(&names, key.as_str()))
}

fn is_setting(names: &[String], key: &str) -> bool {
    let top = key.split('.').next().unwrap_or_default();
    !top.eq_ignore_ascii_case("config") && names.iter().any(|n| n.eq_ignore_ascii_case(top))
}

/// The `PARLEY_*` variables in the environment that are not settings and were not read.
pub fn ignored_env_vars() -> Vec<String> {
    let names = setting_names();
    let mut out: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| {
            k.strip_prefix("PARLEY_").is_some_and(|rest| {
                let key = rest.replace("__", ".");
                !key.eq_ignore_ascii_case("config") && !is_setting(&names, &key)
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Config::load` reads the process environment, which one test changes: every test that
    /// loads holds this lock.
    pub(super) fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[test]
    fn default_config_round_trips_through_toml() {
        let _env = env_lock();
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("parley.toml");
        std::fs::write(&f, &text).unwrap();
        let cfg = Config::load(Some(&f), Figment::new()).unwrap();
        assert_eq!(cfg.listen, Config::default().listen);
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(25));
    }

    #[test]
    fn layers_file_then_flags() {
        let _env = env_lock();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            "max_text_chars = 10\nheartbeat_interval = \"2s\"\nclient_timeout = \"5s\"\n\
             user_hibernate_after = \"250ms\"\n",
        )
        .unwrap();
        let flags = Figment::from(Serialized::global("max_text_chars", 20));
        let cfg = Config::load(Some(&f), flags).unwrap();
        assert_eq!(cfg.max_text_chars, 20);
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(cfg.user_hibernate_after, Duration::from_millis(250));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let _env = env_lock();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "no_such_key = 1\n").unwrap();
        assert!(Config::load(Some(&f), Figment::new()).is_err());
        let flags = Figment::from(Serialized::global("jwt_secret", "short"));
        assert!(Config::load(None, flags).is_err());
        let flags = Figment::from(Serialized::global("client_timeout", "1s"));
        assert!(Config::load(None, flags).is_err());
        let flags = Figment::from(Serialized::global("user_hibernate_after", "0s"));
        assert!(Config::load(None, flags).is_err());
        assert!(Config::load(Some(&dir.path().join("missing.toml")), Figment::new()).is_err());
    }

    #[test]
    fn default_config_prints_the_scylla_section() {
        let _env = env_lock();
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        for line in [
            "history = \"embedded\"",
            "history_connect_timeout = \"30s\"",
            "[scylla]",
            "contact_points = [\"127.0.0.1:9042\"]",
            "consistency = \"LOCAL_QUORUM\"",
            "request_timeout = \"2s\"",
            "dedupe_ttl = \"1day\"",
            "[scylla.replication]",
            "class = \"SimpleStrategy\"",
            "[scylla.retry]",
            "base_delay = \"25ms\"",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("parley.toml");
        std::fs::write(&f, &text).unwrap();
        let cfg = Config::load(Some(&f), Figment::new()).unwrap();
        assert_eq!(cfg.scylla, ScyllaConfig::default());
        assert_eq!(cfg.history, HistoryBackend::Embedded);
    }

    #[test]
    fn scylla_section_from_file_and_flags() {
        let _env = env_lock();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(
            &f,
            r#"
history = "scylla"
history_connect_timeout = "5s"
[scylla]
contact_points = ["10.0.0.5:9042", "10.0.0.6:9042"]
consistency = "QUORUM"
request_timeout = "750ms"
username = "parley"
password = "hunter22"
replication = { class = "NetworkTopologyStrategy", datacenters = { dc1 = 3 } }
tls = { ca_file = "/etc/parley/ca.pem" }
breaker = { failure_threshold = 3 }
"#,
        )
        .unwrap();
        // Dotted keys, as `--set scylla.keyspace=...` produces them, nest into the section.
        let flags = Figment::from(Serialized::global("scylla.keyspace", "t_flags"))
            .merge(Serialized::global("scylla.retry.max_attempts", 9));
        let cfg = Config::load(Some(&f), flags).unwrap();
        assert_eq!(cfg.history, HistoryBackend::Scylla);
        assert_eq!(cfg.history_connect_timeout, Duration::from_secs(5));
        let s = &cfg.scylla;
        assert_eq!(s.contact_points, ["10.0.0.5:9042", "10.0.0.6:9042"]);
        assert_eq!(s.keyspace, "t_flags");
        assert_eq!(s.consistency, history::scylla::ConsistencyLevel::Quorum);
        assert_eq!(s.request_timeout, Duration::from_millis(750));
        assert_eq!(s.retry.max_attempts, 9);
        assert_eq!(s.breaker.failure_threshold, 3);
        assert_eq!(
            s.breaker.cool_down,
            Duration::from_secs(5),
            "defaults fill the rest"
        );
        assert!(matches!(
            &s.replication,
            history::scylla::Replication::NetworkTopologyStrategy { datacenters }
                if datacenters.get("dc1") == Some(&3)
        ));
        assert!(s.tls.is_some());
        // Secrets are not printed by check-config.
        let shown = toml::to_string_pretty(&cfg.redacted()).unwrap();
        assert!(
            !shown.contains("hunter22") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn rejects_bad_scylla_settings() {
        let _env = env_lock();
        for (key, value) in [
            ("scylla.keyspace", toml::Value::from("no-dashes")),
            ("scylla.contact_points", toml::Value::Array(vec![])),
            ("scylla.bucket_bits", toml::Value::from(40)),
            ("scylla.no_such_key", toml::Value::from(1)),
            ("scylla.consistency", toml::Value::from("SOMETIMES")),
            ("history", toml::Value::from("postgres")),
        ] {
            let flags = Figment::from(Serialized::global(key, value.clone()));
            assert!(
                Config::load(None, flags).is_err(),
                "{key} = {value} was accepted"
            );
        }
    }

    /// The only test that sets `PARLEY_*` variables (under [`env_lock`]).
    #[test]
    fn env_vars_nest_with_double_underscores_and_foreign_ones_are_ignored() {
        let _env = env_lock();
        let vars = [
            ("PARLEY_DATA_DIR", "/tmp/parley-env-test"),
            ("PARLEY_HISTORY_CONNECT_TIMEOUT", "7s"),
            ("PARLEY_SCYLLA__KEYSPACE", "env_ks"),
            (
                "PARLEY_SCYLLA__CONTACT_POINTS",
                r#"["10.1.1.1:9042", "10.1.1.2:9042"]"#,
            ),
            ("PARLEY_SCYLLA__RETRY__MAX_ATTEMPTS", "7"),
            ("PARLEY_TEST_CQL", "127.0.0.1:9042"),
            ("PARLEY_CACHE_DIR", "/tmp/elsewhere"),
        ];
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        let loaded = Config::load(None, Figment::new());
        let ignored = ignored_env_vars();
        for (k, _) in vars {
            std::env::remove_var(k);
        }
        let cfg = loaded.expect("foreign PARLEY_ variables do not stop the node");
        assert_eq!(cfg.data_dir, PathBuf::from("/tmp/parley-env-test"));
        assert_eq!(cfg.history_connect_timeout, Duration::from_secs(7));
        assert_eq!(cfg.scylla.keyspace, "env_ks");
        assert_eq!(
            cfg.scylla.contact_points,
            ["10.1.1.1:9042", "10.1.1.2:9042"]
        );
        assert_eq!(cfg.scylla.retry.max_attempts, 7);
        assert!(
            ignored.contains(&"PARLEY_TEST_CQL".to_string()),
            "{ignored:?}"
        );
        assert!(ignored.contains(&"PARLEY_CACHE_DIR".to_string()));
        assert!(!ignored.iter().any(|v| v.starts_with("PARLEY_SCYLLA")));
        assert!(!ignored.contains(&"PARLEY_DATA_DIR".to_string()));
    }
}
