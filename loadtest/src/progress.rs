//! Progress while a run goes: an indicatif bar on a terminal; on a pipe or file, a plain
//! line at most every 5 s so logs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    last_line: Option<Instant>,
}

impl Progress {
    /// A bar of `total` steps, shown as `[label] ...`.
    pub fn new(label: &str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:>8} [{bar:32.cyan/blue}] {pos}/{len} {msg} ({elapsed})",
            )
            .expect("valid template")
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Self {
            bar,
            label: label.to_string(),
            total,
            last_line: None,
        }
    }

    pub fn set(&mut self, pos: u64, msg: &str) {
        match &self.bar {
            Some(b) => {
                b.set_position(pos.min(self.total));
                b.set_message(msg.to_string());
            }
            None => {
                if self
                    .last_line
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
                {
                    self.last_line = Some(Instant::now());
                    eprintln!("[{}] {pos}/{} {msg}", self.label, self.total);
                }
            }
        }
    }

    /// Removes the bar (the caller prints the outcome).
    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
