//! Reactions the engine could not make: parked, retried, and never skipped.
//!
//! The engine reacts to each event of the log in order (enrols, ends enrolments). A reaction
//! that fails three times in a row (a store refusing writes, say) is parked here instead of
//! holding up every later event of the shard: the engine goes on with the next events, and
//! retries the parked one on its own clock (after 2 s, doubling to 5 minutes; at once on
//! `POST /v1/automation/parked/{position}/retry`). It is never skipped: the engine's saved
//! cursor (checkpointed, and a shard's lease progress) stays before the oldest parked event, so
//! after a restart or a hand-over the engine reacts again from there — reacting twice is
//! harmless, as every reaction's events have derived ids. `GET /v1/automation/parked` lists
//! them; `chronicle_automation_reactions_parked_total` counts them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// One reaction waiting for a retry.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ParkedReaction {
    pub position: u64,
    pub tenant: String,
    pub event_id: uuid::Uuid,
    pub event_type: String,
    pub error: String,
    pub tries: u32,
    pub next_try: DateTime<Utc>,
}

/// The parked reactions, by log position.
#[derive(Default)]
pub struct Parked(Mutex<BTreeMap<u64, ParkedReaction>>);

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ParkedReaction>> {
        self.0.lock().expect("parked lock")
    }

    /// Park a reaction that failed `tries` times.
    pub fn park(&self, r: ParkedReaction) {
        self.lock().insert(r.position, r);
    }

    /// The position the engine's saved cursor may reach when it has reacted up to `position`:
    /// just before the oldest parked reaction, if any.
    pub fn safe(&self, position: u64) -> u64 {
        self.lock().keys().next().map_or(position, |first| position.min(first - 1))
    }

    /// The reactions due for a retry at `now`.
    pub fn due(&self, now: DateTime<Utc>) -> Vec<ParkedReaction> {
        self.lock().values().filter(|r| r.next_try <= now).cloned().collect()
    }

    /// A retry succeeded.
    pub fn done(&self, position: u64) {
        self.lock().remove(&position);
    }

    /// A retry failed: the next one after a longer pause.
    pub fn failed(&self, position: u64, error: String, now: DateTime<Utc>) {
        if let Some(r) = self.lock().get_mut(&position) {
            r.tries += 1;
            r.error = error;
            r.next_try = now + pause(r.tries);
        }
    }

    /// Forget the reactions `keep` says no (their shard went to another node, which reacts
    /// again from before them).
    pub fn retain(&self, keep: impl Fn(&ParkedReaction) -> bool) {
        self.lock().retain(|_, r| keep(r));
    }

    /// Retry a tenant's parked reaction at once; whether there was one.
    pub fn retry_now(&self, tenant: &str, position: u64, now: DateTime<Utc>) -> bool {
        match self.lock().get_mut(&position) {
            Some(r) if r.tenant == tenant => {
                r.next_try = now;
                true
            }
            _ => false,
        }
    }

    /// A tenant's parked reactions, oldest first.
    pub fn of(&self, tenant: &str) -> Vec<ParkedReaction> {
        self.lock().values().filter(|r| r.tenant == tenant).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The pause before retry `tries + 1`: 2 s doubling, at most 5 minutes.
pub fn pause(tries: u32) -> chrono::Duration {
    let d = super::backoff::doubling(std::time::Duration::from_secs(2), tries, std::time::Duration::from_secs(300));
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::seconds(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(position: u64) -> ParkedReaction {
        ParkedReaction {
            position,
            tenant: "t".into(),
            event_id: uuid::Uuid::nil(),
            event_type: "X".into(),
            error: "e".into(),
            tries: 3,
            next_try: DateTime::<Utc>::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_saved_cursor_stays_before_the_oldest_parked_reaction() {
        let p = Parked::default();
        assert_eq!(p.safe(10), 10);
        p.park(r(7));
        p.park(r(4));
        assert_eq!(p.safe(10), 3);
        assert_eq!(p.safe(2), 2);
        p.done(4);
        assert_eq!(p.safe(10), 6);
        p.failed(7, "again".into(), DateTime::<Utc>::UNIX_EPOCH);
        assert!(p.due(DateTime::<Utc>::UNIX_EPOCH).is_empty());
        assert!(!p.retry_now("other", 7, DateTime::<Utc>::UNIX_EPOCH));
        assert!(p.retry_now("t", 7, DateTime::<Utc>::UNIX_EPOCH));
        assert_eq!(p.due(DateTime::<Utc>::UNIX_EPOCH).len(), 1);
        assert_eq!(pause(1), chrono::Duration::seconds(2));
        assert_eq!(pause(30), chrono::Duration::seconds(300));
    }
}
