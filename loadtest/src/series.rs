//! Latency over time: one small histogram per time bucket of the measured window,
//! bucketed by the send timestamp, recorded through a per-task batch like `stats::Batch`
//! and moved between processes as hex-encoded histograms.

use std::sync::{Arc, Mutex};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::stats::{hist_hex, Summary, BATCH};

/// A histogram per bucket; 2 significant digits keep each one small.
pub fn bucket_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid histogram bounds")
}

/// Bucket width for a window: about 120 points, 100 ms to 5 s each.
pub fn bucket_ms(window_ms: u64) -> u64 {
    (window_ms / 120).clamp(100, 5_000)
}

pub struct Data {
    pub bucket_us: u64,
    pub hists: Vec<Histogram<u64>>,
}

pub type Series = Arc<Mutex<Data>>;

pub fn new_series(bucket_ms: u64, window_ms: u64) -> Series {
    let n = window_ms.div_ceil(bucket_ms.max(1)).max(1) as usize;
    Arc::new(Mutex::new(Data {
        bucket_us: bucket_ms.max(1) * 1_000,
        hists: (0..n).map(|_| bucket_hist()).collect(),
    }))
}

/// Per-task buffer of (send time − window start, latency) pairs, µs.
pub struct TimedBatch {
    buf: Vec<(u64, u64)>,
    target: Series,
    pub origin_us: u64,
}

impl TimedBatch {
    pub fn new(target: Series) -> Self {
        Self {
            buf: Vec::with_capacity(BATCH),
            target,
            origin_us: 0,
        }
    }

    #[inline]
    pub fn record(&mut self, sent_us: u64, latency_us: u64) {
        self.buf
            .push((sent_us.saturating_sub(self.origin_us), latency_us));
        if self.buf.len() == BATCH {
            self.flush();
        }
    }

    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let mut d = self.target.lock().unwrap();
        let last = d.hists.len() - 1;
        let width = d.bucket_us;
        for (at, v) in self.buf.drain(..) {
            let i = ((at / width) as usize).min(last);
            d.hists[i].saturating_record(v.max(1));
        }
    }
}

impl Drop for TimedBatch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A series between processes.
#[derive(Serialize, Deserialize)]
pub struct Wire {
    pub bucket_ms: u64,
    pub hists: Vec<String>,
}

pub fn to_wire(s: &Series) -> Wire {
    let d = s.lock().unwrap();
    Wire {
        bucket_ms: d.bucket_us / 1_000,
        hists: d.hists.iter().map(hist_hex::encode).collect(),
    }
}

/// Adds a worker's series into `into` (bucket by bucket).
pub fn merge(into: &mut Vec<Histogram<u64>>, w: &Wire) -> Result<()> {
    for (i, h) in w.hists.iter().enumerate() {
        let h = hist_hex::decode(h)?;
        if into.len() <= i {
            into.push(bucket_hist());
        }
        into[i].add(&h)?;
    }
    Ok(())
}

/// One point of latency over time: the bucket's start (s into the window) and summary.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub t_s: f64,
    pub latency: Summary,
}

pub fn points(hists: &[Histogram<u64>], bucket_ms: u64) -> Vec<Point> {
    hists
        .iter()
        .enumerate()
        .map(|(i, h)| Point {
            t_s: (i as u64 * bucket_ms) as f64 / 1e3,
            latency: crate::stats::summarize(h),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_their_send_time_bucket_and_survive_transport() {
        let s = new_series(100, 1_000);
        assert_eq!(s.lock().unwrap().hists.len(), 10);
        {
            let mut b = TimedBatch::new(s.clone());
            b.origin_us = 5_000_000;
            b.record(5_000_000, 700); // bucket 0
            b.record(5_250_000, 2_000); // bucket 2
            b.record(5_250_001, 3_000); // bucket 2
            b.record(9_999_999_999, 9); // past the end: last bucket
        }
        let w = to_wire(&s);
        let mut merged = Vec::new();
        merge(&mut merged, &w).unwrap();
        merge(&mut merged, &w).unwrap();
        let p = points(&merged, w.bucket_ms);
        assert_eq!(p.len(), 10);
        assert_eq!(p[0].latency.count, 2);
        assert_eq!(p[2].latency.count, 4);
        assert!((2_900..=3_100).contains(&p[2].latency.max_us));
        assert_eq!(p[9].latency.count, 2);
        assert_eq!(p[2].t_s, 0.2);
        assert_eq!(bucket_ms(30_000), 250);
        assert_eq!(bucket_ms(1_000), 100);
    }
}
