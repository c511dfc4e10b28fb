//! Progress: an `indicatif` bar with ETA when stderr is a terminal, plain log lines otherwise
//! (logs, CI, pipes). Messages always go to stderr, above the bar when there is one.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether to draw bars: stderr is a terminal and `AF2_NO_PROGRESS` is unset.
pub fn bars_enabled() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("AF2_NO_PROGRESS").is_none()
}

/// `1.5 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `1h02m03s`, `4m05s`, `6s`.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s / 60) % 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, s) => format!("{h}h{m:02}m{s:02}s"),
    }
}

/// A progress display over a known or unknown total.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    position: u64,
    start: Instant,
    bytes: bool,
    what: String,
    /// Next position at which a plain log line is printed (bytes mode).
    next_log: u64,
}

impl Progress {
    fn new(total: Option<u64>, what: &str, bytes: bool) -> Self {
        let bar = bars_enabled().then(|| {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = match (bytes, total.is_some()) {
                (true, true) => {
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
                }
                (true, false) => "{prefix} [{elapsed_precise}] {bytes} {bytes_per_sec}",
                (false, _) => "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(what.to_string());
            bar
        });
        Self {
            bar,
            total,
            position: 0,
            start: Instant::now(),
            bytes,
            what: what.to_string(),
            next_log: 0,
        }
    }

    /// Counts items (designs, jobs).
    pub fn items(total: u64, what: &str) -> Self {
        Self::new(Some(total), what, false)
    }

    /// Counts bytes (downloads).
    pub fn bytes(total: Option<u64>, what: &str) -> Self {
        Self::new(total, what, true)
    }

    /// Prints a line to stderr (above the bar, if any).
    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Estimated time left, from the mean time per unit so far.
    pub fn eta(&self) -> Option<Duration> {
        let total = self.total?;
        if self.position == 0 {
            return None;
        }
        let per = self.start.elapsed().as_secs_f64() / self.position as f64;
        Some(Duration::from_secs_f64(
            per * total.saturating_sub(self.position) as f64,
        ))
    }

    /// `[3/10, ETA 4m05s]` for plain log lines.
    pub fn counter(&self) -> String {
        let eta = self
            .eta()
            .map(|e| format!(", ETA {}", human_duration(e)))
            .unwrap_or_default();
        match self.total {
            Some(t) => format!("[{}/{t}{eta}]", self.position),
            None => format!("[{}]", self.position),
        }
    }

    /// Sets the position (bytes mode logs every 10% when there is no bar).
    pub fn set(&mut self, position: u64) {
        self.position = position;
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        } else if self.bytes && position >= self.next_log {
            let step = self.total.map_or(256 << 20, |t| (t / 10).max(1));
            self.next_log = position + step;
            if position > 0 {
                let rate = position as f64 / self.start.elapsed().as_secs_f64().max(1e-3);
                let of = self
                    .total
                    .map(|t| format!(" of {}", human_bytes(t)))
                    .unwrap_or_default();
                eprintln!(
                    "{}: {}{of} ({}/s)",
                    self.what,
                    human_bytes(position),
                    human_bytes(rate as u64)
                );
            }
        }
    }

    /// Advances by one item.
    pub fn inc(&mut self) {
        self.set(self.position + 1);
    }

    /// A short message beside the bar.
    pub fn message(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(message.to_string());
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_duration(Duration::from_secs(6)), "6s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4m05s");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn eta_from_the_mean_so_far() {
        let mut p = Progress::items(4, "x");
        assert!(p.eta().is_none());
        p.inc();
        assert!(p.eta().is_some());
        assert!(p.counter().starts_with("[1/4"), "{}", p.counter());
    }
}
