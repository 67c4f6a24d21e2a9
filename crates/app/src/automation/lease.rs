//! Who runs the campaign engine's work when several nodes share one database. The work is cut
//! into [`SHARDS`] shards by tenant ([`shard_of`]), and each shard has a lease
//! (`automation/<shard>`, `chronicle_store::Leases`): the node holding it reacts to that shard's
//! tenants' events, fires their waits and delivers their messages, continuing from the progress
//! its last holder recorded. So the work is shared out between the nodes, and each piece of it
//! is done by one node at a time.
//!
//! **Sharing out.** Each node also renews a lease of its own (`node/<holder>`) as a heartbeat;
//! the live ones say how many nodes there are, and each node holds its fair share
//! (`SHARDS / nodes`, rounded up): a node above it gives its highest shards back (after the
//! deliveries of that shard in flight finish, renewing them meanwhile), a node below it takes
//! free or expired ones.
//! **Failing over.** A lease runs for [`TTL`] and is renewed every third of it; a node that
//! dies (SIGKILL) stops renewing, its heartbeat and shards run out, and the others take them —
//! within about `TTL` plus two renewals. A node stops a shard's work when its renewal fails or
//! does not answer in time, and in any case two thirds of the lease after its last good
//! renewal — before the database lets another node take it. There is no fencing token: a
//! holder paused longer than the lease (a stalled VM) could overlap the next one for one piece
//! of work.
//!
//! The engine's tasks look at the [`Gate`]: which shards this node holds, and how far it
//! reacted in each. Alone (an embedded store) the gate holds every shard and the progress is
//! the application's cursor, saved with its checkpoint.

use crate::App;
use chronicle_store::Leases;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub const TTL: Duration = Duration::from_secs(3);
/// Shards of the engine's work. A power of two well above the nodes a deployment runs, so
/// the shares stay even; at most 64 (a bit each in the gate).
pub const SHARDS: usize = 16;
const ALL: u64 = (1 << SHARDS) - 1;

/// The shard of a tenant's work (FNV-1a: fixed across processes and versions).
pub fn shard_of(tenant: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

fn lease_name(shard: usize) -> String {
    format!("automation/{shard}")
}

/// Which shards of the engine's work this node holds, and how far it reacted in each.
pub struct Gate {
    /// Bit `s`: this node holds shard `s`.
    held: watch::Sender<u64>,
    /// Bumped at every change, so a task notices a shard lost or gained.
    term: AtomicU64,
    /// Per shard: the log position this node reacted to (leased gates; an always-open gate
    /// uses the application's cursor).
    progress: Vec<AtomicU64>,
    always: bool,
    /// Serialises changes of hands with [`advance`](Gate::advance), so progress made under one
    /// term never lands on a shard taken since (which starts from its recorded progress).
    changing: std::sync::Mutex<()>,
}

impl Gate {
    /// A gate that holds every shard: the only node (an embedded store).
    pub fn always() -> Arc<Gate> {
        Arc::new(Gate { held: watch::Sender::new(ALL), term: AtomicU64::new(0), progress: Vec::new(), always: true, changing: Default::default() })
    }

    /// A gate holding no shard until [`renew`] takes leases.
    pub fn leased() -> Arc<Gate> {
        let progress = (0..SHARDS).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Gate { held: watch::Sender::new(0), term: AtomicU64::new(0), progress, always: false, changing: Default::default() })
    }

    /// Whether this node holds any shard.
    pub fn held(&self) -> bool {
        *self.held.borrow() != 0
    }

    /// The shards this node holds (bit `s` for shard `s`).
    pub fn shards(&self) -> u64 {
        *self.held.borrow()
    }

    /// Whether this node does `tenant`'s work now.
    pub fn holds(&self, tenant: &str) -> bool {
        self.shards() & (1 << shard_of(tenant)) != 0
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    /// Waits until this node holds a shard.
    pub async fn wait(&self) {
        let mut rx = self.held.subscribe();
        let _ = rx.wait_for(|h| *h != 0).await;
    }

    /// Where the engine's subscription starts: the least progress of the shards held.
    pub fn start(&self, app: &App) -> u64 {
        if self.always {
            return app.reacted();
        }
        let held = self.shards();
        (0..SHARDS).filter(|s| held & (1 << s) != 0).map(|s| self.progress[s].load(Ordering::SeqCst)).min().unwrap_or(0)
    }

    /// Whether this node is still to react to the event at `position` of `tenant`.
    pub fn wants(&self, tenant: &str, position: u64) -> bool {
        self.holds(tenant) && (self.always || position > self.progress[shard_of(tenant)].load(Ordering::SeqCst))
    }

    /// This node reacted to everything up to `position`, in every shard it held at `term`
    /// (nothing is recorded if the shards changed hands since: the engine starts again).
    pub fn advance(&self, app: &App, term: u64, position: u64) {
        let _one = self.changing.lock().expect("gate lock");
        if self.term() != term {
            return;
        }
        app.set_reacted(position);
        let held = self.shards();
        for s in (0..self.progress.len()).filter(|s| held & (1 << s) != 0) {
            self.progress[s].fetch_max(position, Ordering::SeqCst);
        }
    }

    fn progress(&self, shard: usize) -> u64 {
        self.progress[shard].load(Ordering::SeqCst)
    }

    fn take(&self, shard: usize, progress: u64) {
        let _one = self.changing.lock().expect("gate lock");
        self.progress[shard].store(progress, Ordering::SeqCst);
        self.change(self.shards() | (1 << shard));
    }

    fn drop_shard(&self, shard: usize) {
        let _one = self.changing.lock().expect("gate lock");
        self.change(self.shards() & !(1 << shard));
    }

    fn set(&self, held: u64) {
        let _one = self.changing.lock().expect("gate lock");
        self.change(held);
    }

    fn change(&self, held: u64) {
        if self.held.send_replace(held) != held {
            self.term.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Renews this node's heartbeat and shards, gives back shards above its fair share and takes
/// free ones below it, every third of [`TTL`], until the task is aborted. Before taking shards
/// the node catches up with the log (`sync`), so its views hold what the last holder saw.
pub fn renew(app: Arc<App>, leases: Arc<dyn Leases>, gate: Arc<Gate>, engine: Arc<dyn InFlight>, holder: String) -> tokio::task::JoinHandle<()> {
    // Where a shard never leased before starts: this node's cursor as it started (saved with
    // its checkpoint), before its engine reacted in any shard.
    let start = app.reacted();
    tokio::spawn(async move {
        let mut last_ok: Vec<Option<tokio::time::Instant>> = vec![None; SHARDS];
        let mut seeded = false;
        loop {
            let asked = tokio::time::Instant::now();
            let round = tokio::time::timeout(TTL / 3, renew_round((&app, start, &mut seeded), &*leases, &gate, &holder, asked, &mut last_ok)).await;
            match round {
                Ok(Ok(Some(give_back))) => {
                    // Above the fair share: the highest shards stop at once and go back once
                    // their deliveries in flight are done (at most half a lease: not renewed
                    // meanwhile, the lease runs out anyway). Off this loop, which keeps renewing
                    // the shards kept.
                    for &s in &give_back {
                        gate.drop_shard(s);
                    }
                    let (leases, gate, engine, holder) = (leases.clone(), gate.clone(), engine.clone(), holder.clone());
                    tokio::spawn(give_back_when_quiet(give_back, (leases, gate, engine), holder));
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    // Not known to hold anything: stop now; the leases run out for the others.
                    tracing::warn!(error = &e as &dyn std::error::Error, "automation: renewing the leases failed");
                    gate.set(0);
                }
                Err(_) => {
                    // What was renewed in time counts; a shard not renewed for two thirds of
                    // its lease stops below.
                    tracing::warn!("automation: renewing the leases did not answer in time");
                }
            }
            for (s, ok) in last_ok.iter().enumerate() {
                if gate.shards() & (1 << s) != 0 && ok.is_none_or(|t| t.elapsed() > TTL * 2 / 3) {
                    gate.drop_shard(s);
                }
            }
            tokio::time::sleep(TTL / 3).await;
        }
    })
}

/// How long a shard given back is kept (renewed, no new work started) for its deliveries in
/// flight to finish: above a delivery's time limit, so no message is handed over twice.
const QUIET_LIMIT: Duration = Duration::from_secs(15);

/// Releases shards this node stopped working on, once their deliveries in flight are done:
/// meanwhile their leases are renewed, so no other node takes them and sends those messages
/// again. A shard this node has taken back meanwhile is not released.
async fn give_back_when_quiet(shards: Vec<usize>, (leases, gate, engine): (Arc<dyn Leases>, Arc<Gate>, Arc<dyn InFlight>), holder: String) {
    let mask = shards.iter().fold(0u64, |m, s| m | (1 << s));
    let since = tokio::time::Instant::now();
    while engine.busy(mask) && since.elapsed() < QUIET_LIMIT {
        for &s in &shards {
            let _ = leases.lease(&lease_name(s), &holder, TTL, gate.progress(s)).await;
        }
        tokio::time::sleep(TTL / 6).await;
    }
    for s in shards {
        if gate.shards() & (1 << s) != 0 {
            continue;
        }
        if let Err(e) = leases.release(&lease_name(s), &holder, gate.progress(s)).await {
            tracing::warn!(error = &e as &dyn std::error::Error, shard = s, "automation: giving a shard back failed (it runs out instead)");
        }
        tracing::info!(%holder, shard = s, "automation: this node gave a shard back");
    }
}

/// One round of [`renew`]; the shards to give back, if above the fair share.
async fn renew_round(
    (app, start, seeded): (&App, u64, &mut bool),
    leases: &dyn Leases,
    gate: &Gate,
    holder: &str,
    asked: tokio::time::Instant,
    last_ok: &mut [Option<tokio::time::Instant>],
) -> Result<Option<Vec<usize>>, chronicle_store::ReadError> {
    leases.lease(&format!("node/{holder}"), holder, TTL, 0).await?;
    if !*seeded {
        // Every shard's lease exists, a new one starting from this node's cursor as it
        // started; a take then keeps the recorded progress whoever held it last (this node
        // included, which may have stopped it at an older position than `start`).
        let names: Vec<String> = (0..SHARDS).map(lease_name).collect();
        for done in futures_util::future::join_all(names.iter().map(|n| leases.seed(n, start))).await {
            done?;
        }
        *seeded = true;
    }
    let nodes = leases.live("node/").await?.max(1);
    let fair = SHARDS.div_ceil(nodes);
    // The shards held, renewed side by side (a round must stay well inside a third of a lease).
    let held: Vec<usize> = (0..SHARDS).filter(|s| gate.shards() & (1 << s) != 0).collect();
    let names: Vec<String> = held.iter().map(|&s| lease_name(s)).collect();
    let renewed = futures_util::future::join_all(held.iter().zip(&names).map(|(&s, name)| leases.lease(name, holder, TTL, gate.progress(s)))).await;
    for (&s, r) in held.iter().zip(renewed) {
        match r? {
            Some(_) => last_ok[s] = Some(asked),
            None => gate.drop_shard(s),
        }
    }
    let held: Vec<usize> = (0..SHARDS).filter(|s| gate.shards() & (1 << s) != 0).collect();
    if held.len() > fair {
        return Ok(Some(held[fair..].to_vec()));
    }
    // Free ones up to the fair share, as many at a time as are missing.
    let mut caught_up = false;
    let mut candidates = (0..SHARDS).filter(|s| gate.shards() & (1 << s) == 0).collect::<Vec<_>>().into_iter();
    loop {
        let missing = fair.saturating_sub(gate.shards().count_ones() as usize);
        let batch: Vec<usize> = candidates.by_ref().take(missing).collect();
        if batch.is_empty() {
            return Ok(None);
        }
        let names: Vec<String> = batch.iter().map(|&s| lease_name(s)).collect();
        let taken = futures_util::future::join_all(names.iter().map(|name| leases.lease(name, holder, TTL, 0))).await;
        for (&s, r) in batch.iter().zip(taken) {
            let Some(progress) = r? else { continue };
            if !caught_up {
                app.store().sync().await?;
                caught_up = true;
            }
            tracing::info!(%holder, shard = s, from = progress, "automation: this node took a shard");
            last_ok[s] = Some(asked);
            gate.take(s, progress);
        }
    }
}

/// What the leases need to know of the engine: whether a delivery of these shards' tenants
/// (bit `s` for shard `s`) is in flight. A shard is given back only when it is quiet.
pub trait InFlight: Send + Sync + 'static {
    fn busy(&self, shards: u64) -> bool;
}

/// Hands the work over on a clean stop: stops renewing, closes the gate, lets the deliveries
/// in flight finish (up to `wait`), then releases every shard and the heartbeat so the other
/// nodes take them at once.
pub async fn hand_over(
    renewal: tokio::task::JoinHandle<()>,
    gate: &Gate,
    engine: &dyn InFlight,
    leases: &dyn Leases,
    holder: &str,
    wait: Duration,
) -> Result<(), chronicle_store::ReadError> {
    renewal.abort();
    let held = gate.shards();
    gate.set(0);
    // The deliveries in flight finish first (or `wait` passes): a clean stop.
    let deadline = tokio::time::Instant::now() + wait;
    while engine.busy(ALL) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for s in (0..SHARDS).filter(|s| held & (1 << s) != 0) {
        leases.release(&lease_name(s), holder, gate.progress(s)).await?;
    }
    leases.release(&format!("node/{holder}"), holder, 0).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronicle_store::ReadError;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicUsize;

    /// Grants the first `answers` leases asked for, then never answers again (a hung
    /// connection): the holder must stop before the leases could pass to another node.
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
        async fn live(&self, _: &str) -> Result<usize, ReadError> {
            Ok(1)
        }
        async fn seed(&self, _: &str, _: u64) -> Result<(), ReadError> {
            Ok(())
        }
    }

    async fn node(leases: Arc<dyn Leases>, holder: &str) -> (Arc<App>, Arc<Gate>, tokio::task::JoinHandle<()>) {
        let app = App::start(Arc::new(chronicle_store::memory::MemoryStore::new()), None).await.unwrap();
        let gate = Gate::leased();
        let engine = super::super::Engine::start_gated(app.clone(), Default::default(), gate.clone()).unwrap();
        let renewal = renew(app.clone(), leases, gate.clone(), engine, holder.into());
        (app, gate, renewal)
    }

    #[tokio::test]
    async fn a_holder_whose_renewal_hangs_stops_before_the_lease_runs_out() {
        // The heartbeat and every shard are granted in the first round; then nothing answers.
        let leases = Arc::new(Hangs { answers: 1 + SHARDS, calls: AtomicUsize::new(0), last_grant: Default::default() });
        let (app, gate, renewal) = node(leases.clone(), "me").await;
        let mut held = gate.held.subscribe();
        tokio::time::timeout(Duration::from_secs(2), held.wait_for(|h| *h == ALL)).await.expect("every shard is taken").unwrap();
        assert_eq!(gate.start(&app), 7, "the engine continues from the progress recorded");
        tokio::time::timeout(TTL * 2, held.wait_for(|h| *h == 0)).await.expect("the gate closes while the renewal hangs").unwrap();
        // The database lets another node take a lease a TTL after the last renewal it
        // granted: this node stopped before that.
        let since = leases.last_grant.lock().unwrap().expect("granted").elapsed();
        assert!(since < TTL, "closed {since:?} after the last renewal");
        assert!(since >= TTL / 3, "not before the renewal had hung for its time limit ({since:?})");
        renewal.abort();
    }

    /// Leases in memory, judged by one clock as the database's are.
    #[derive(Default)]
    struct Table(std::sync::Mutex<HashMap<String, (String, tokio::time::Instant, u64)>>);

    #[async_trait::async_trait]
    impl Leases for Table {
        async fn lease(&self, name: &str, holder: &str, ttl: Duration, progress: u64) -> Result<Option<u64>, ReadError> {
            let now = tokio::time::Instant::now();
            let mut t = self.0.lock().unwrap();
            let row = t.entry(name.to_owned()).or_insert_with(|| (holder.to_owned(), now, progress));
            if row.0 != holder && row.1 > now {
                return Ok(None);
            }
            if row.0 == holder {
                row.2 = row.2.max(progress);
            }
            row.0 = holder.to_owned();
            row.1 = now + ttl;
            Ok(Some(row.2))
        }
        async fn release(&self, name: &str, holder: &str, progress: u64) -> Result<(), ReadError> {
            if let Some(row) = self.0.lock().unwrap().get_mut(name).filter(|r| r.0 == holder) {
                row.1 = tokio::time::Instant::now() - Duration::from_secs(1);
                row.2 = row.2.max(progress);
            }
            Ok(())
        }
        async fn seed(&self, name: &str, progress: u64) -> Result<(), ReadError> {
            let expired = tokio::time::Instant::now() - Duration::from_secs(1);
            self.0.lock().unwrap().entry(name.to_owned()).or_insert_with(|| (String::new(), expired, progress));
            Ok(())
        }
        async fn live(&self, prefix: &str) -> Result<usize, ReadError> {
            let now = tokio::time::Instant::now();
            Ok(self.0.lock().unwrap().iter().filter(|(n, r)| n.starts_with(prefix) && r.1 > now).count())
        }
    }

    async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !f() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_shards_are_shared_out_between_the_nodes_and_a_dead_nodes_share_is_taken_over() {
        let leases: Arc<dyn Leases> = Arc::new(Table::default());
        let (_, a, _a_renewal) = node(leases.clone(), "a").await;
        until("node a taking every shard", Duration::from_secs(3), || a.shards() == ALL).await;
        let (_, b, b_renewal) = node(leases.clone(), "b").await;
        let half = || a.shards().count_ones() as usize == SHARDS / 2 && b.shards().count_ones() as usize == SHARDS / 2;
        until("the shards shared out half and half", Duration::from_secs(5), half).await;
        assert_eq!(a.shards() & b.shards(), 0, "no shard held by both");
        assert_eq!(a.shards() | b.shards(), ALL, "every shard held");
        // Node b dies (stops renewing): node a takes its share within a lease and two rounds.
        b_renewal.abort();
        let died = tokio::time::Instant::now();
        until("node a taking the dead node's share", TTL * 3, || a.shards() == ALL).await;
        assert!(died.elapsed() >= TTL / 2, "not before the dead node's leases ran out");
    }
}
