//! The request budgets and what authentication remembers, in memory: token buckets (per API key,
//! and ingest's per write key and client address), the API keys verified in this process, and
//! failed guesses of a key's secret counted per key id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window over which failed secret verifications of one API key id are counted.
const SECRET_WINDOW: Duration = Duration::from_secs(10);
/// Failed secret verifications allowed per key id in [`SECRET_WINDOW`].
const SECRET_TRIES: u32 = 5;

#[derive(Default)]
pub(super) struct Budgets {
    /// Digests of API-made keys verified against their argon2 hash in this process.
    verified: Mutex<HashSet<String>>,
    /// Token buckets by name, and when each was last refilled.
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
    /// Requests per second per API key; ingest requests per write key and per client address
    /// (0: no limit).
    pub(super) rate_limit: AtomicU64,
    pub(super) ingest_per_key: AtomicU64,
    pub(super) ingest_per_address: AtomicU64,
    /// Failed verifications of an API key's secret, by key id: a guesser pays for an argon2
    /// verification a few times per window, not once per request.
    failed_secrets: Mutex<HashMap<String, (Instant, u32)>>,
}

impl Budgets {
    pub(super) fn is_verified(&self, digest: &str) -> bool {
        self.verified.lock().expect("verified keys lock").contains(digest)
    }

    pub(super) fn remember_verified(&self, digest: String) {
        self.verified.lock().expect("verified keys lock").insert(digest);
    }

    /// Whether key id `id` may have its secret verified now (not too many failures lately).
    pub(super) fn may_try_secret(&self, id: &str) -> bool {
        let f = self.failed_secrets.lock().expect("failed secrets lock");
        f.get(id).is_none_or(|(since, n)| since.elapsed() > SECRET_WINDOW || *n < SECRET_TRIES)
    }

    pub(super) fn secret_failed(&self, id: &str) {
        let mut f = self.failed_secrets.lock().expect("failed secrets lock");
        if f.len() > 100_000 {
            f.retain(|_, (since, _)| since.elapsed() <= SECRET_WINDOW);
        }
        let e = f.entry(id.to_owned()).or_insert((Instant::now(), 0));
        if e.0.elapsed() > SECRET_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    /// One token of bucket `name`, refilled at `per_sec` (0: no limit); else the seconds to
    /// wait.
    pub(super) fn take(&self, name: &str, per_sec: u64) -> Result<(), u64> {
        let per_sec = per_sec as f64;
        if per_sec <= 0.0 {
            return Ok(());
        }
        let burst = per_sec * 2.0;
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("rate lock");
        if b.len() > 100_000 {
            // Client addresses come and go: buckets idle long enough to be full again go.
            b.retain(|_, (_, at)| now.duration_since(*at).as_secs() < 60);
        }
        let (tokens, at) = b.entry(name.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_sec).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}
