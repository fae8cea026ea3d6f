//! Open-loop pacing: every send has a due time fixed in advance, independent of acks.
//!
//! All senders of a run share one global sequence: sender `i` of `S` sends the global
//! messages `g = n*S + i`, and global message `g` is due at `start + g / rate`. So the
//! total rate is exactly `rate` and sends are spread evenly over time, whichever worker
//! process a sender lives in.

/// The send times of one sender.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start_ns: u64,
    /// Nanoseconds between two consecutive global messages (1e9 / total rate).
    gap_ns: f64,
    senders: u64,
    index: u64,
}

impl Schedule {
    /// `rate` is the total messages/s of all `senders`; `index` is this sender's global
    /// index in `0..senders`.
    pub fn new(start_ns: u64, rate: f64, senders: u64, index: u64) -> Self {
        assert!(rate > 0.0 && senders > 0 && index < senders);
        Self {
            start_ns,
            gap_ns: 1e9 / rate,
            senders,
            index,
        }
    }

    /// When this sender's `n`-th message (from 0) is due.
    pub fn due_ns(&self, n: u64) -> u64 {
        let g = n * self.senders + self.index;
        self.start_ns + (g as f64 * self.gap_ns) as u64
    }

    /// Interval between two sends of this sender.
    pub fn interval_ns(&self) -> f64 {
        self.gap_ns * self.senders as f64
    }

    /// How many of this sender's messages are due strictly before `end_ns`.
    pub fn count_before(&self, end_ns: u64) -> u64 {
        if end_ns <= self.start_ns {
            return 0;
        }
        let span = (end_ns - self.start_ns) as f64;
        // First guess from arithmetic, then fix float rounding at the boundary.
        let offset = self.index as f64 * self.gap_ns;
        let mut n = if span <= offset {
            0
        } else {
            ((span - offset) / self.interval_ns()).ceil() as u64
        };
        while n > 0 && self.due_ns(n - 1) >= end_ns {
            n -= 1;
        }
        while self.due_ns(n) < end_ns {
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_sender_spacing() {
        let s = Schedule::new(1_000, 1000.0, 1, 0);
        assert_eq!(s.due_ns(0), 1_000);
        assert_eq!(s.due_ns(1), 1_001_000);
        assert_eq!(s.due_ns(1000), 1_000_001_000);
        assert_eq!(s.interval_ns(), 1e6);
    }

    #[test]
    fn senders_interleave_evenly() {
        // 4 senders sharing 400 msg/s: one message every 2.5 ms overall, 10 ms per sender.
        let all: Vec<u64> = (0..4)
            .flat_map(|i| {
                let s = Schedule::new(0, 400.0, 4, i);
                (0..3).map(move |n| s.due_ns(n))
            })
            .collect();
        let mut sorted = all.clone();
        sorted.sort();
        for w in sorted.windows(2) {
            assert_eq!(w[1] - w[0], 2_500_000);
        }
        assert_eq!(Schedule::new(0, 400.0, 4, 3).due_ns(1), 17_500_000);
    }

    #[test]
    fn counts_match_rate_times_duration() {
        let secs = 30;
        let end = secs * 1_000_000_000;
        for &(rate, senders) in &[(1000.0, 1u64), (1000.0, 7), (33.3, 5), (250_000.0, 100)] {
            let total: u64 = (0..senders)
                .map(|i| Schedule::new(0, rate, senders, i).count_before(end))
                .sum();
            let want = (rate * secs as f64).ceil() as u64;
            assert!(
                total.abs_diff(want) <= 1,
                "rate {rate} x{senders}: {total} vs {want}"
            );
        }
    }

    #[test]
    fn count_before_is_exact_at_boundaries() {
        let s = Schedule::new(100, 10.0, 2, 1); // due at 100 + (2n+1) * 0.1 s
        assert_eq!(s.count_before(100), 0);
        assert_eq!(s.count_before(100_000_100), 0);
        assert_eq!(s.count_before(100_000_101), 1);
        assert_eq!(s.count_before(300_000_100), 1);
        assert_eq!(s.count_before(300_000_101), 2);
        assert_eq!(s.count_before(0), 0);
    }
}
