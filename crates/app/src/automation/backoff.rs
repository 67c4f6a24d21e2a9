//! The engine's one backoff shape: message retries (with jitter), outcomes the store refused to
//! record, and parked reactions all wait a doubling time.

use std::time::Duration;

/// `first`, doubled for each try after the first (`tries` counts from 1), at most `max`.
pub(crate) fn doubling(first: Duration, tries: u32, max: Duration) -> Duration {
    first.saturating_mul(1u32 << tries.saturating_sub(1).min(20)).min(max)
}
