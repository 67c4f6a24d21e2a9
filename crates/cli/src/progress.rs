//! Progress for long work: a self-rewriting line with the rate on a terminal, plain lines
//! (at most one every two seconds) otherwise, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_print: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: Option<u64>) -> Self {
        let now = Instant::now();
        Progress { what, total, done: 0, started: now, last_print: now, tty: std::io::stderr().is_terminal() }
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

    fn print(&self, last: bool) {
        let of = self.total.map(|t| format!(" / {t}")).unwrap_or_default();
        let pct = self
            .total
            .filter(|t| *t > 0)
            .map(|t| format!(" ({:.0}%)", self.done as f64 * 100.0 / t as f64))
            .unwrap_or_default();
        let line = format!(
            "{}: {}{of}{pct}, {:.0}/s, {:.1}s",
            self.what,
            self.done,
            self.rate(),
            self.started.elapsed().as_secs_f64()
        );
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
