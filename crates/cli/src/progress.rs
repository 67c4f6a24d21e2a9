//! Progress for long work: a self-rewriting line with the rate on a terminal, plain lines
//! (at most one every two seconds) otherwise, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    /// The total is an estimate (the demo's events per customer vary): shown as "about", never
    /// past 99 % before the end, and the count itself at the end.
    estimated: bool,
    done: u64,
    started: Instant,
    last_print: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress { what, total, estimated: false, done: 0, started: now, last_print: now, tty: std::io::stderr().is_terminal() }
    }

    /// Progress towards about `total`.
    pub fn estimated(what: &'static str, total: u64) -> Self {
        Progress { estimated: true, ..Progress::new(what, Some(total)) }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        let every = if self.tty { Duration::from_millis(100) } else { Duration::from_secs(2) };
        if self.last_print.elapsed() >= every {
            self.last_print = Instant::now();
            self.print(false);
        }
    }

    pub fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    /// The line shown: count, total and share, rate, time.
    fn line(&self, last: bool) -> String {
        // At the end an estimated total gives way to the count itself.
        let total = if last && self.estimated { Some(self.done) } else { self.total };
        let about = if self.estimated && !last { "about " } else { "" };
        let of = total.map(|t| format!(" / {about}{t}")).unwrap_or_default();
        let pct = total
            .filter(|t| *t > 0)
            .map(|t| {
                let pct = self.done as f64 * 100.0 / t as f64;
                let pct = if self.estimated && !last { pct.min(99.0) } else { pct };
                format!(" ({pct:.0}%)")
            })
            .unwrap_or_default();
        format!("{}: {}{of}{pct}, {:.0}/s, {:.1}s", self.what, self.done, self.rate(), self.started.elapsed().as_secs_f64())
    }

    fn print(&self, last: bool) {
        let line = self.line(last);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}{}", if last { "\n" } else { "" });
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// Print the final line; returns (count, seconds, rate).
    pub fn finish(self) -> (u64, f64, f64) {
        self.print(true);
        (self.done, self.started.elapsed().as_secs_f64(), self.rate())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_estimated_total_never_shows_done_early_and_ends_at_the_count() {
        let mut p = Progress::estimated("demo events", 1000);
        p.done = 1040;
        assert!(p.line(false).starts_with("demo events: 1040 / about 1000 (99%)"), "{}", p.line(false));
        assert!(p.line(true).starts_with("demo events: 1040 / 1040 (100%)"), "{}", p.line(true));
        p.done = 960;
        assert!(p.line(true).starts_with("demo events: 960 / 960 (100%)"), "{}", p.line(true));
        let mut exact = Progress::new("import", Some(200));
        exact.done = 100;
        assert!(exact.line(true).starts_with("import: 100 / 200 (50%)"), "{}", exact.line(true));
    }
}
