//! Who runs the campaign engine when several nodes share one database: the node holding the
//! `automation` lease (`chronicle_store::Leases`). The engine's tasks wait on the [`Gate`]
//! before each piece of work; a node that loses the lease (or cannot renew it) stops at once,
//! and one that takes it over continues reacting from the progress its holder recorded. The
//! lease runs for [`TTL`] and is renewed every third of it, so a node that dies (SIGKILL) has
//! its work taken over within about `TTL` plus one renewal.
//!
//! One lease for all of the engine's work: sends are done by one node at a time (the holder);
//! sharing them out by tenant would be more leases of the same kind.

use crate::App;
use chronicle_store::Leases;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const NAME: &str = "automation";
pub const TTL: Duration = Duration::from_secs(3);

/// Whether this node may do the engine's work now.
pub struct Gate {
    held: watch::Sender<bool>,
    /// Bumped at every change of hands, so a task notices a lease lost and taken back.
    term: AtomicU64,
}

impl Gate {
    /// A gate that is always open: the only node (an embedded store).
    pub fn always() -> Arc<Gate> {
        Arc::new(Gate { held: watch::Sender::new(true), term: AtomicU64::new(0) })
    }

    /// A gate closed until [`renew`] takes the lease.
    pub fn leased() -> Arc<Gate> {
        Arc::new(Gate { held: watch::Sender::new(false), term: AtomicU64::new(0) })
    }

    pub fn held(&self) -> bool {
        *self.held.borrow()
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    /// Waits until this node holds the lease.
    pub async fn wait(&self) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    fn set(&self, held: bool) {
        if self.held.send_replace(held) != held {
            self.term.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Takes and renews the lease for this node (`holder`) until the task is aborted; on taking it
/// over, the node first catches up with the log (`sync`) and the engine continues from the
/// progress recorded by the last holder. The gate closes when a renewal fails or does not answer
/// in time, and in any case once two thirds of the lease have passed since the last renewal
/// that succeeded — before the database lets another node take it.
pub fn renew(app: Arc<App>, leases: Arc<dyn Leases>, gate: Arc<Gate>, holder: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_ok: Option<tokio::time::Instant> = None;
        loop {
            let asked = tokio::time::Instant::now();
            match tokio::time::timeout(TTL / 3, leases.lease(NAME, &holder, TTL, app.reacted())).await {
                Ok(Ok(Some(progress))) => {
                    if !gate.held() {
                        match app.store().sync().await {
                            Ok(_) => {
                                app.set_reacted(progress);
                                tracing::info!(%holder, from = progress, "automation: this node took the lease");
                                last_ok = Some(asked);
                                gate.set(true);
                            }
                            Err(e) => tracing::warn!(error = %e, "automation: catching up before taking over failed"),
                        }
                    } else {
                        last_ok = Some(asked);
                    }
                }
                Ok(Ok(None)) => gate.set(false),
                Ok(Err(e)) => {
                    // Not known to hold it: stop now; the lease runs out for the others.
                    tracing::warn!(error = %e, "automation: renewing the lease failed");
                    gate.set(false);
                }
                Err(_) => {
                    tracing::warn!("automation: renewing the lease did not answer in time");
                    gate.set(false);
                }
            }
            if last_ok.is_none_or(|t| t.elapsed() > TTL * 2 / 3) {
                gate.set(false);
            }
            tokio::time::sleep(TTL / 3).await;
        }
    })
}

/// Hands the lease over on a clean stop: stops renewing, closes the gate, lets the deliveries
/// in flight finish (up to `wait`), then releases it so another node takes it at once.
pub async fn hand_over(
    renewal: tokio::task::JoinHandle<()>,
    gate: &Gate,
    engine: &super::Engine,
    leases: &dyn Leases,
    holder: &str,
    progress: impl Fn() -> u64,
    wait: Duration,
) -> Result<(), chronicle_store::ReadError> {
    renewal.abort();
    gate.set(false);
    engine.quiesce(wait).await;
    leases.release(NAME, holder, progress()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_store::ReadError;
    use std::sync::atomic::AtomicUsize;

    /// Grants the lease to the first `answers` calls, then never answers again (a hung
    /// connection): the holder must stop before the lease could pass to another node.
    struct Hangs {
        answers: usize,
        calls: AtomicUsize,
        last_grant: std::sync::Mutex<Option<tokio::time::Instant>>,
    }

    #[async_trait::async_trait]
    impl Leases for Hangs {
        async fn lease(&self, _: &str, _: &str, _: Duration, progress: u64) -> Result<Option<u64>, ReadError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.answers {
                *self.last_grant.lock().unwrap() = Some(tokio::time::Instant::now());
                return Ok(Some(progress.max(7)));
            }
            std::future::pending().await
        }
        async fn release(&self, _: &str, _: &str, _: u64) -> Result<(), ReadError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_holder_whose_renewal_hangs_stops_before_the_lease_runs_out() {
        let app = App::start(Arc::new(chronicle_store::memory::MemoryStore::new()), None).await.unwrap();
        let gate = Gate::leased();
        let leases = Arc::new(Hangs { answers: 2, calls: AtomicUsize::new(0), last_grant: Default::default() });
        let renewal = renew(app.clone(), leases.clone(), gate.clone(), "me".into());
        tokio::time::timeout(Duration::from_secs(2), gate.wait()).await.expect("the lease is taken");
        assert_eq!(app.reacted(), 7, "the engine continues from the progress recorded");
        let mut held = gate.held.subscribe();
        tokio::time::timeout(TTL * 2, held.wait_for(|h| !*h)).await.expect("the gate closes while the renewal hangs").unwrap();
        // The database lets another node take the lease a TTL after the last renewal it
        // granted: this node stopped before that.
        let since = leases.last_grant.lock().unwrap().expect("granted").elapsed();
        assert!(since < TTL, "closed {since:?} after the last renewal");
        assert!(since >= TTL / 3, "not before the renewal had hung for its time limit ({since:?})");
        renewal.abort();
    }
}
