//! Command line: subcommands and the flags that override configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use figment::providers::Serialized;
use figment::Figment;

use crate::config::HistoryBackend;

#[derive(Debug, Parser)]
#[command(
    name = "parley",
    version,
    about = "Parley: a brokerless, actor-model real-time messaging node"
)]
pub struct Cli {
    /// TOML configuration file (see `parley default-config`).
    #[arg(long, env = "PARLEY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// HTTP/WebSocket address (PARLEY_LISTEN).
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// Data directory of the embedded store (PARLEY_DATA_DIR).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// History store: `embedded` (default) or `scylla`, configured by the `[scylla]` section,
    /// `PARLEY_SCYLLA__*` or `--set scylla.KEY=VALUE` (PARLEY_HISTORY).
    #[arg(long, value_enum, global = true)]
    pub history: Option<HistoryBackend>,
    /// HS256 secret for client tokens (PARLEY_JWT_SECRET).
    #[arg(long, global = true)]
    pub jwt_secret: Option<String>,
    /// This node's name (PARLEY_NODE_NAME).
    #[arg(long, global = true)]
    pub node_name: Option<String>,
    /// Address for node-to-node traffic; enables clustering (PARLEY_CLUSTER__LISTEN).
    #[arg(long, global = true)]
    pub cluster_listen: Option<SocketAddr>,
    /// Address other nodes dial to reach this one (PARLEY_CLUSTER__ADVERTISE).
    #[arg(long, global = true)]
    pub cluster_advertise: Option<String>,
    /// Seed peers, host:port,host:port (PARLEY_CLUSTER__PEERS).
    #[arg(long, global = true, value_delimiter = ',')]
    pub peers: Option<Vec<String>>,
    /// Peer discovery, `dns:NAME:PORT` (PARLEY_CLUSTER__DISCOVERY).
    #[arg(long, global = true)]
    pub discovery: Option<String>,
    /// Shared secret of the cluster (PARLEY_CLUSTER__COOKIE).
    #[arg(long, global = true)]
    pub cluster_cookie: Option<String>,
    /// File holding the cluster's shared secret (PARLEY_CLUSTER__COOKIE_FILE).
    #[arg(long, global = true)]
    pub cluster_cookie_file: Option<PathBuf>,
    /// Requests per second per user (PARLEY_RATE_LIMIT_PER_SEC).
    #[arg(long, global = true)]
    pub rate_limit_per_sec: Option<f64>,
    /// Burst of the per-user rate limit (PARLEY_RATE_LIMIT_BURST).
    #[arg(long, global = true)]
    pub rate_limit_burst: Option<f64>,
    /// Log filter, e.g. `info,parley_node=debug` (PARLEY_LOG).
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// Any other setting, as KEY=VALUE with a TOML value (repeatable), e.g.
    /// `--set max_text_chars=100 --set typing_ttl='"2s"'`.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Enables /debug fault-injection endpoints (tests only).
    #[arg(long, hide = true, global = true)]
    pub test_hooks: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default).
    Serve,
    /// Load and validate the configuration, print the result, exit non-zero if invalid.
    CheckConfig,
    /// Print the default configuration as TOML.
    DefaultConfig,
    /// Create or migrate the ScyllaDB/Cassandra schema of the `[scylla]` section, print what
    /// was done and exit. Idempotent; safe while nodes are serving.
    Migrate,
    /// Print a client token signed with the configured HS256 secret.
    Token {
        /// User id (`sub`).
        #[arg(long)]
        user: String,
        /// Display name (`name`); defaults to the user id.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. `24h`.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
}

impl Cli {
    /// The flags as a configuration layer.
    pub fn overrides(&self) -> Result<Figment, String> {
        let mut fig = Figment::new();
        macro_rules! flag {
            ($name:ident) => {
                if let Some(v) = &self.$name {
                    fig = fig.merge(Serialized::global(stringify!($name), v));
                }
            };
        }
        flag!(listen);
        flag!(data_dir);
        flag!(history);
        flag!(jwt_secret);
        flag!(node_name);
        flag!(rate_limit_per_sec);
        flag!(rate_limit_burst);
        flag!(log);
        macro_rules! cluster_flag {
            ($name:ident, $key:literal) => {
                if let Some(v) = &self.$name {
                    fig = fig.merge(Serialized::global($key, v));
                }
            };
        }
        cluster_flag!(cluster_listen, "cluster.listen");
        cluster_flag!(cluster_advertise, "cluster.advertise");
        cluster_flag!(peers, "cluster.peers");
        cluster_flag!(discovery, "cluster.discovery");
        cluster_flag!(cluster_cookie, "cluster.cookie");
        cluster_flag!(cluster_cookie_file, "cluster.cookie_file");
        if self.test_hooks {
            fig = fig.merge(Serialized::global("test_hooks", true));
        }
        for kv in &self.set {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
            let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
                Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(v.to_string())),
                Err(_) => toml::Value::String(v.to_string()),
            };
            fig = fig.merge(Serialized::global(k.trim(), value));
        }
        Ok(fig)
    }
}
