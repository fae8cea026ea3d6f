//! Options shared by every scenario, and duration parsing.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::net::ConnOpts;
use crate::proto::Protocol;

/// Longest accepted `--duration`, `--hold` and the like.
pub const MAX_PHASE: Duration = Duration::from_secs(3600);
/// Time allowed for all connections (and joins) of a run to be established.
pub const CONNECT_PHASE: Duration = Duration::from_secs(600);

#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Server WebSocket URL(s), loopback only; repeat or comma-separate to spread
    /// connections over several nodes.
    #[arg(long, default_value = "ws://127.0.0.1:3000/ws", num_args = 1..)]
    pub url: Vec<String>,
    /// Wire protocol of the server.
    #[arg(long, value_enum, default_value = "native")]
    pub protocol: Protocol,
    /// HS256 secret the server verifies tokens with.
    #[arg(
        long,
        env = "PARLEY_JWT_SECRET",
        default_value = crate::token::DEV_SECRET,
        hide_env_values = true
    )]
    pub jwt_secret: String,
    /// Server process ids to sample for RSS and CPU (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Print one JSON object instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// Tokio worker threads per process (1-4).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4))]
    pub threads: u64,
    /// Timeout of one connection attempt (TCP + WebSocket handshake).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Connection attempts in flight at once, over all workers.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub concurrency: u64,
    /// Use the kernel's default source address (127.0.0.1) instead of spreading
    /// connections over 127.0.0.2..=127.0.0.254.
    #[arg(long)]
    pub no_spread: bool,
    /// Prefix of user and room ids (default: `lt` and a run number from the clock).
    #[arg(long)]
    pub prefix: Option<String>,
}

impl Common {
    pub fn conn_opts(&self, read_buffer: usize) -> ConnOpts {
        ConnOpts {
            spread_sources: !self.no_spread,
            read_buffer,
            timeout_ms: self.connect_timeout.as_millis() as u64,
            protocol: self.protocol,
        }
    }

    /// The id prefix: given, or unique per run so rooms start empty.
    pub fn prefix(&self) -> Result<String> {
        make_prefix(self.prefix.as_deref())
    }
}

/// The id prefix `given` (checked), or `lt` and a run number from the clock.
pub fn make_prefix(given: Option<&str>) -> Result<String> {
    let p = match given {
        Some(p) => p.to_string(),
        None => format!("lt{}", crate::sys::mono_ns() / 1_000_000 % 100_000_000),
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || "_-.:@".contains(c);
    if p.is_empty() || p.len() > 64 || !p.chars().all(ok) {
        bail!("--prefix: 1-64 characters from A-Z a-z 0-9 _ - . : @");
    }
    Ok(p)
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("bad duration {s:?}"))?;
    let secs = match unit.trim() {
        "" | "s" => v,
        "ms" => v / 1e3,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        u => bail!("bad duration unit {u:?} in {s:?} (use ms, s, m, h)"),
    };
    if !secs.is_finite() || secs < 0.0 {
        bail!("bad duration {s:?}");
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Refuses phases longer than [`MAX_PHASE`].
pub fn check_phase(name: &str, d: Duration) -> Result<()> {
    if d > MAX_PHASE {
        bail!("{name} {d:?} is longer than the cap of {MAX_PHASE:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("s").is_err());
        assert!(check_phase("--hold", Duration::from_secs(3601)).is_err());
    }
}
