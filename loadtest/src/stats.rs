//! Latency histograms (µs), their summaries, their transport between processes, and a
//! batching recorder so hot loops take the shared lock once per [`BATCH`] values.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest recordable value: 60 s in µs (larger values saturate).
const MAX_US: u64 = 60_000_000;
/// Values buffered per task before they are added to the shared histogram.
pub const BATCH: usize = 256;

/// An empty histogram for µs values, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram, in µs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        count: h.len(),
        mean_us: (h.mean() * 10.0).round() / 10.0,
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

/// Serde for histograms as hex of the V2 encoding, for worker → parent JSON lines.
pub mod hist_hex {
    use super::*;

    pub fn encode(h: &Histogram<u64>) -> String {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut bytes)
            .expect("serializing to a Vec cannot fail");
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(char::from_digit(u32::from(b >> 4), 16).unwrap());
            s.push(char::from_digit(u32::from(b & 15), 16).unwrap());
        }
        s
    }

    pub fn decode(s: &str) -> Result<Histogram<u64>> {
        let nib = |c: u8| (c as char).to_digit(16).context("bad hex in histogram");
        let bytes = s
            .as_bytes()
            .chunks(2)
            .map(|p| Ok((nib(p[0])? << 4 | nib(*p.get(1).context("odd hex")?)?) as u8))
            .collect::<Result<Vec<u8>>>()?;
        Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .context("decoding histogram")
    }

    pub fn serialize<S: serde::Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&encode(h))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let s = String::deserialize(d)?;
        decode(&s).map_err(serde::de::Error::custom)
    }
}

/// A histogram several tasks record into.
pub type Shared = Arc<Mutex<Histogram<u64>>>;

pub fn shared() -> Shared {
    Arc::new(Mutex::new(new_hist()))
}

/// Takes the histogram out of a `Shared` (leaving an empty one).
pub fn take(s: &Shared) -> Histogram<u64> {
    std::mem::replace(&mut *s.lock().unwrap(), new_hist())
}

/// Per-task buffer in front of a shared histogram; flushes when full and on drop.
pub struct Batch {
    buf: Vec<u64>,
    target: Shared,
}

impl Batch {
    pub fn new(target: Shared) -> Self {
        Self {
            buf: Vec::with_capacity(BATCH),
            target,
        }
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
        self.buf.push(v);
        if self.buf.len() == BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut h = self.target.lock().unwrap();
        for v in self.buf.drain(..) {
            h.saturating_record(v.max(1));
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Counts by reason (errors, close codes, failure kinds).
pub type Counts = BTreeMap<String, u64>;

pub fn bump(c: &mut Counts, key: &str) {
    match c.get_mut(key) {
        Some(v) => *v += 1,
        None => {
            c.insert(key.to_string(), 1);
        }
    }
}

pub fn merge_counts(into: &mut Counts, from: &Counts) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_known_values() {
        let mut h = new_hist();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let s = summarize(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p90_us, 900);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.p999_us, 999);
        assert_eq!(s.max_us, 1000);
        assert!((s.mean_us - 500.5).abs() < 1.0);
        assert_eq!(summarize(&new_hist()), Summary::default());
    }

    #[test]
    fn histograms_survive_hex_transport() {
        let mut h = new_hist();
        for v in [1u64, 7, 300, 45_000, 2_000_000] {
            h.record(v).unwrap();
        }
        let back = hist_hex::decode(&hist_hex::encode(&h)).unwrap();
        assert_eq!(summarize(&back), summarize(&h));
        assert!(hist_hex::decode("zz").is_err());
    }

    #[test]
    fn batch_flushes_when_full_and_on_drop() {
        let sh = shared();
        {
            let mut b = Batch::new(sh.clone());
            for v in 0..(BATCH as u64 + 3) {
                b.record(v);
            }
            assert_eq!(sh.lock().unwrap().len(), BATCH as u64);
            b.record(u64::MAX); // saturates instead of failing
        }
        let h = take(&sh);
        assert_eq!(h.len(), BATCH as u64 + 4);
        assert!(h.max() >= MAX_US);
        assert!(sh.lock().unwrap().is_empty());
    }

    #[test]
    fn counts_merge() {
        let mut a = Counts::new();
        bump(&mut a, "timeout");
        bump(&mut a, "timeout");
        let mut b = Counts::new();
        bump(&mut b, "timeout");
        bump(&mut b, "refused");
        merge_counts(&mut a, &b);
        assert_eq!(a["timeout"], 3);
        assert_eq!(a["refused"], 1);
    }
}
