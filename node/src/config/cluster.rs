//! The `[cluster]` section: how a node finds, admits and watches its peers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HistoryBackend};

/// The `[cluster]` section (see `docs/deploy.md#cluster` and `docs/consistency.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Address for node-to-node traffic (`--cluster-listen`). Unset: no cluster. Port 0
    /// picks a free port (printed as `parley cluster listening on ADDR`). Default unset.
    pub listen: Option<SocketAddr>,
    /// Address other nodes dial to reach this one (`--cluster-advertise`). Default: the bound
    /// listen address.
    pub advertise: Option<String>,
    /// Seed peers, `host:port` (`--peers a:7000,b:7000`; a list or a comma-separated string).
    /// Dialed and redialed for as long as the node runs. Default none.
    #[serde(deserialize_with = "string_or_list")]
    pub peers: Vec<String>,
    /// `dns:NAME:PORT`: peers are every address NAME resolves to, re-resolved every
    /// `discovery_interval` (a Kubernetes headless Service). Default unset.
    pub discovery: Option<String>,
    /// Shared secret of the cluster (`--cluster-cookie`); nodes with another cookie are never
    /// admitted. Prefer `cookie_file`. At least 16 bytes.
    pub cookie: Option<String>,
    /// File holding the cookie (`--cluster-cookie-file`; surrounding whitespace ignored).
    pub cookie_file: Option<PathBuf>,
    /// Also dial the addresses other nodes report knowing (so one seed finds everyone).
    /// Default true.
    pub learn_peers: bool,
    /// Period of the failure detector's heartbeat to each peer. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Heartbeats missed in a row before a peer is declared down (its rooms and users move).
    /// Detection takes at most `heartbeat_interval × (heartbeat_misses + 1)`. Default 3.
    pub heartbeat_misses: u32,
    /// Deadline of a TCP connect to a peer, and of its handshake. Default 2 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How often `discovery` is resolved again. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub discovery_interval: Duration,
    /// Largest frame sent to or accepted from a peer, bytes (oversize frames are refused at
    /// the sender: one would end the whole link at the receiver). Default 8 MiB.
    pub max_frame_bytes: usize,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            listen: None,
            advertise: None,
            peers: Vec::new(),
            discovery: None,
            cookie: None,
            cookie_file: None,
            learn_peers: true,
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_misses: 3,
            connect_timeout: Duration::from_secs(2),
            discovery_interval: Duration::from_secs(5),
            max_frame_bytes: 8 * 1024 * 1024,
        }
    }
}

fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect(),
        Either::Many(v) => v,
    })
}

impl ClusterSettings {
    /// The cookie in force (from `cookie` or `cookie_file`).
    pub fn effective_cookie(&self) -> Result<Option<String>, ConfigError> {
        match (&self.cookie, &self.cookie_file) {
            (Some(c), _) => Ok(Some(c.clone())),
            (None, Some(p)) => std::fs::read_to_string(p)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|err| ConfigError::Read {
                    path: p.clone(),
                    err,
                }),
            (None, None) => Ok(None),
        }
    }

    /// `(name, port)` of a `dns:NAME:PORT` discovery setting.
    pub fn dns_discovery(&self) -> Result<Option<(String, u16)>, String> {
        let Some(d) = &self.discovery else {
            return Ok(None);
        };
        let rest = d
            .strip_prefix("dns:")
            .ok_or_else(|| format!("discovery {d:?}: expected dns:NAME:PORT"))?;
        let (name, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("discovery {d:?}: expected dns:NAME:PORT"))?;
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("discovery {d:?}: bad port"))?;
        if name.is_empty() {
            return Err(format!("discovery {d:?}: empty name"));
        }
        Ok(Some((name.to_string(), port)))
    }

    pub(super) fn validate(&self, history: HistoryBackend) -> Result<(), String> {
        self.dns_discovery()?;
        if self.listen.is_none() {
            if !self.peers.is_empty() || self.discovery.is_some() {
                return Err("peers or discovery are set but listen is not".into());
            }
            return Ok(());
        }
        if history != HistoryBackend::Scylla {
            return Err(
                "a cluster needs a history store all nodes share: set history = \"scylla\" \
                 (the embedded store belongs to one node)"
                    .into(),
            );
        }
        if self.cookie.is_none() && self.cookie_file.is_none() {
            return Err("a cluster needs a cookie (cookie or cookie_file)".into());
        }
        match self.effective_cookie() {
            Ok(Some(c)) if c.len() < 16 => {
                return Err("the cookie must be at least 16 bytes".into())
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_misses == 0 {
            return Err("heartbeat_interval and heartbeat_misses must be > 0".into());
        }
        if self.max_frame_bytes < 64 * 1024 {
            return Err("max_frame_bytes must be at least 64 KiB".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use figment::providers::Serialized;
    use figment::Figment;

    fn env_lock() -> std::sync::MutexGuard<'static, ()> {
        super::super::tests::env_lock()
    }

    #[test]
    fn cluster_settings_are_checked() {
        let _env = env_lock();
        let dir = tempfile::tempdir().unwrap();
        let cluster = |extra: &[(&str, toml::Value)]| {
            let mut f = Figment::from(Serialized::global("cluster.listen", "127.0.0.1:7000"))
                .merge(Serialized::global("history", "scylla"));
            for (k, v) in extra {
                f = f.merge(Serialized::global(k, v.clone()));
            }
            Config::load(None, f)
        };
        let s = |v: &str| toml::Value::String(v.into());
        // No cookie, a short one, a missing or short file: refused.
        assert!(cluster(&[]).is_err());
        assert!(cluster(&[("cluster.cookie", s("short"))]).is_err());
        let missing = dir.path().join("nope").display().to_string();
        assert!(cluster(&[("cluster.cookie_file", s(&missing))]).is_err());
        let short = dir.path().join("short");
        std::fs::write(&short, "abc\n").unwrap();
        assert!(cluster(&[("cluster.cookie_file", s(&short.display().to_string()))]).is_err());
        // A good file; peers as a comma-separated string; DNS discovery parsed.
        let good = dir.path().join("cookie");
        std::fs::write(&good, "  0123456789abcdef0123\n").unwrap();
        let cfg = cluster(&[
            ("cluster.cookie_file", s(&good.display().to_string())),
            ("cluster.peers", s("a:7000, b:7000")),
            ("cluster.discovery", s("dns:parley-headless:7000")),
        ])
        .unwrap();
        assert_eq!(cfg.cluster.peers, vec!["a:7000", "b:7000"]);
        assert_eq!(
            cfg.cluster.effective_cookie().unwrap().as_deref(),
            Some("0123456789abcdef0123")
        );
        assert_eq!(
            cfg.cluster.dns_discovery().unwrap(),
            Some(("parley-headless".to_string(), 7000))
        );
        assert!(cluster(&[
            ("cluster.cookie", s("0123456789abcdef0123")),
            ("cluster.discovery", s("srv:x"))
        ])
        .is_err());
        // A cluster on the embedded store is refused: its history would be per node.
        let f = Figment::from(Serialized::global("cluster.listen", "127.0.0.1:7000"))
            .merge(Serialized::global("cluster.cookie", "0123456789abcdef0123"));
        let err = Config::load(None, f).unwrap_err().to_string();
        assert!(err.contains("scylla"), "{err}");
        // Peers without listen make no sense.
        let f = Figment::from(Serialized::global("cluster.peers", "a:1"));
        assert!(Config::load(None, f).is_err());
    }
}
