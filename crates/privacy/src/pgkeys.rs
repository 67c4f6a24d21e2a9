//! `PgKeyStore`: the data keys in PostgreSQL (table `keys` of the event store's schema), shared
//! by every `chronicle serve` node over the database, so several nodes can seal.
//!
//! - **Every key names its slot.** A key's slot comes from the sequence `key_slots`, and every
//!   value sealed with it is `enc:v2:<slot>:…`, so any node opens any value by the slot alone.
//!   A row holds the key wrapped under the master key (AES-256-GCM, the slot as associated
//!   data); the master key itself never enters the database, and every node needs the same one.
//! - **Rows by tenant.** The table is keyed `(tenant, slot)` and its owner index leads with the
//!   tenant too (ARCHITECTURE.md, "Past one database"): a key belongs to the tenant of the
//!   person it seals, and every statement on a key names its tenant (loading every key at open
//!   reads the whole table).
//! - **A pool made ahead, per tenant.** A node inserts a batch of keys for a tenant in one
//!   transaction (the first batch [`FIRST_BATCH`] keys, doubling up to [`POOL_BATCH`]) and hands
//!   them out to that tenant's new owners from memory: an append never waits for a key of its
//!   own once the tenant's pool is made.
//!   The owner's digest is written to the row afterwards, in batches, without being waited for;
//!   a row that lost its owner (a crash) is found by erasure through the slots the owner's
//!   events name, as with the key file. Two nodes may each give an owner a key: the values name
//!   which, and erasure destroys every one.
//! - **Keys made by another node** are fetched when an event names a slot this node does not
//!   hold: before the commit hook sees events another node committed (the store's hand-out
//!   check), and before a read opens events. A key row commits before any event sealed with it.
//! - **Destroying** deletes the rows and, in the same transaction, notifies every node
//!   (`chronicle_keys_<schema>`, the slots as payload), which forget the keys at once; a node
//!   whose listening connection was cut checks every key it holds against the table when it
//!   reconnects. Slots are never reused, so a slot found missing stays missing. The table is
//!   then vacuumed, so no row version holding the wrapped key is left for SQL to reach. What
//!   PostgreSQL keeps outside the live table — the freed space of its pages until reused, WAL
//!   not yet recycled, replicas and backups — still holds the *wrapped* key, useless without
//!   the master key; `chronicle compact` rewrites the table (`VACUUM FULL`). The key file of a
//!   single node overwrites a destroyed key in place instead.

use crate::cipher::DataKey;
use crate::keys::Keys;
use crate::keystore::{owner_digest, KeyError, MasterKey};
use async_trait::async_trait;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_postgres::Client;

/// Keys inserted per refill of a tenant's pool, at most (and how far past a slot a fetch reads).
const POOL_BATCH: usize = 256;
/// A tenant's first pool: small, since most tenants of a node may never seal much; each refill
/// doubles it up to [`POOL_BATCH`].
const FIRST_BATCH: usize = 16;
/// The class of the advisory lock [`Keys::get_or_create`] takes per owner ("CHRK").
const OWNER_LOCK: i32 = 0x4348_524B;
/// Owner records written per statement.
const RECORD_BATCH: usize = 1000;

/// What a node holds in memory.
#[derive(Default)]
struct Held {
    slots: HashMap<u64, DataKey>,
    /// The tenant of each slot held (the table's key leads with it).
    tenants: HashMap<u64, Arc<str>>,
    /// An owner's key here: theirs from the table, or the one this node handed them.
    owners: HashMap<[u8; 32], u64>,
    /// Keys made by this node and not handed out yet, per tenant, and the size of each
    /// tenant's next batch.
    pool: HashMap<Arc<str>, Vec<u64>>,
    batch: HashMap<Arc<str>, usize>,
    /// Tenants whose pool a refill ahead is filling now.
    refilling: HashSet<Arc<str>>,
    /// Slots found destroyed: never held again (slots are not reused).
    gone: HashSet<u64>,
    /// Rows without an owner when the store was opened (other nodes' pools, or a lost record).
    unowned: usize,
    /// Bumped each time the listener (re)starts listening: a fetch whose query ran before that
    /// may hold a key destroyed while nobody listened, so it reads again.
    epoch: u64,
}

impl Held {
    fn forget(&mut self, slots: &[u64]) {
        for s in slots {
            self.slots.remove(s);
            self.tenants.remove(s);
            self.gone.insert(*s);
        }
        let gone = &self.gone;
        self.owners.retain(|_, s| !gone.contains(s));
        self.pool.values_mut().for_each(|p| p.retain(|s| !gone.contains(s)));
    }

    /// The shared name of `tenant` (one allocation per tenant, not per key).
    fn tenant(&mut self, tenant: &str) -> Arc<str> {
        match self.batch.get_key_value(tenant) {
            Some((t, _)) => t.clone(),
            None => {
                let t: Arc<str> = Arc::from(tenant);
                self.batch.insert(t.clone(), FIRST_BATCH);
                t
            }
        }
    }

    fn hold(&mut self, tenant: &str, slot: u64, key: DataKey) {
        let t = self.tenant(tenant);
        self.slots.insert(slot, key);
        self.tenants.insert(slot, t);
    }

    /// Whether `tenant`'s pool is down to a quarter of its next batch.
    fn low(&self, tenant: &str) -> bool {
        self.pool.get(tenant).map_or(0, Vec::len) < self.batch.get(tenant).copied().unwrap_or(FIRST_BATCH) / 4
    }

    /// `(tenants, slots)` as column arrays.
    fn columns(&self, slots: impl Iterator<Item = u64>) -> (Vec<String>, Vec<i64>) {
        slots.filter_map(|s| Some((self.tenants.get(&s)?.to_string(), s as i64))).unzip()
    }
}

/// A connection, opened again when found closed.
struct Db {
    url: String,
    schema: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl Db {
    async fn client(&self) -> Result<tokio::sync::MappedMutexGuard<'_, Client>, KeyError> {
        let mut g = self.client.lock().await;
        if g.as_ref().is_none_or(Client::is_closed) {
            *g = Some(connect(&self.url, &self.schema).await?);
        }
        Ok(tokio::sync::MutexGuard::map(g, |c| c.as_mut().expect("connected above")))
    }
}

async fn connect(url: &str, schema: &str) -> Result<Client, KeyError> {
    let (client, connection) = chronicle_tls::postgres::connect(url).await.map_err(|e| KeyError::Database(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the key store's PostgreSQL connection closed");
        }
    });
    client.batch_execute(&format!("SET search_path TO {schema}")).await.map_err(db_err)?;
    Ok(client)
}

fn db_err(e: tokio_postgres::Error) -> KeyError {
    KeyError::Database(e.to_string())
}

fn channel(schema: &str) -> String {
    format!("chronicle_keys_{schema}")
}

pub struct PgKeyStore {
    db: Arc<Db>,
    master: MasterKey,
    held: Arc<Mutex<Held>>,
    /// Owner records for the writer task.
    records: mpsc::UnboundedSender<(Arc<str>, u64, [u8; 32])>,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgKeyStore({} keys)", self.len())
    }
}

impl Drop for PgKeyStore {
    /// Gives the pool's unused keys back (their rows deleted: nothing was sealed with them), so
    /// a clean stop leaves no ownerless rows. On a thread and connection of its own, waited for
    /// at most two seconds: the store may be dropped while its runtime shuts down, when its own
    /// connection can no longer be driven. Best effort: after a crash, or a timeout, the rows
    /// stay, which is safe (erasure then reads more streams; see `orphans`).
    fn drop(&mut self) {
        let (tenants, unused) = {
            let mut h = self.held.lock().expect("key store lock");
            let pooled: Vec<u64> = std::mem::take(&mut h.pool).into_values().flatten().collect();
            h.columns(pooled.into_iter())
        };
        if unused.is_empty() {
            return;
        }
        let (url, schema) = (self.db.url.clone(), self.db.schema.clone());
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let released = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(KeyError::Io).and_then(|rt| {
                rt.block_on(async {
                    let client = connect(&url, &schema).await?;
                    client
                        .execute(
                            "DELETE FROM keys k USING unnest($1::text[], $2::bigint[]) AS x(t, s) \
                             WHERE k.tenant = x.t AND k.slot = x.s AND k.owner IS NULL",
                            &[&tenants, &unused],
                        )
                        .await
                        .map_err(db_err)
                })
            });
            let _ = done.send(released);
        });
        match wait.recv_timeout(std::time::Duration::from_secs(2)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not give the key pool's unused keys back"),
            Err(_) => tracing::warn!("giving the key pool's unused keys back did not finish in time"),
        }
    }
}

impl PgKeyStore {
    /// Opens the key store in `schema` (migrated already, by the event store), unwrapping every
    /// key with `master`; then listens for keys destroyed by other nodes.
    pub async fn open(url: &str, schema: &str, master: MasterKey) -> Result<PgKeyStore, KeyError> {
        let db = Arc::new(Db { url: url.to_owned(), schema: schema.to_owned(), client: tokio::sync::Mutex::new(None) });
        let mut held = Held::default();
        {
            let client = db.client().await?;
            let rows = client.query("SELECT slot, owner, master_version, wrapped, tenant FROM keys", &[]).await.map_err(db_err)?;
            for row in rows {
                let slot = row.get::<_, i64>(0) as u64;
                let version = row.get::<_, i32>(2) as u32;
                if version != master.version {
                    return Err(KeyError::Invalid(format!(
                        "a key in the database is wrapped by master key version {version}, but version {} was given",
                        master.version
                    )));
                }
                let key = master.unwrap_for_slot(slot, row.get(3)).ok_or_else(|| {
                    KeyError::Invalid(
                        "a data key in the database does not unwrap with this master key: every node over one database \
                         needs the same master key (--master-key-file or CHRONICLE_MASTER_KEY)"
                            .into(),
                    )
                })?;
                match row.get::<_, Option<Vec<u8>>>(1).and_then(|o| <[u8; 32]>::try_from(o).ok()) {
                    Some(owner) => {
                        held.owners.insert(owner, slot);
                    }
                    None => held.unowned += 1,
                }
                held.hold(row.get(4), slot, key);
            }
        }
        let held = Arc::new(Mutex::new(held));
        let (records, inbox) = mpsc::unbounded_channel();
        tokio::spawn(record_owners(db.clone(), inbox));
        tokio::spawn(listen(db.clone(), Arc::downgrade(&held)));
        Ok(PgKeyStore { db, master, held, records, handle: tokio::runtime::Handle::current() })
    }

    /// Runs `f` to its end from synchronous code: on a runtime's worker thread (which it
    /// gives up meanwhile), on a blocking-pool thread, or on a thread of its own.
    /// A current-thread runtime cannot give its thread up: refused there with an error.
    fn block<T>(&self, f: impl Future<Output = Result<T, KeyError>>) -> Result<T, KeyError> {
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread => Err(KeyError::Database(
                "the PostgreSQL key store waits for the database from synchronous code: it needs a multi-thread tokio runtime".into(),
            )),
            Ok(h) => tokio::task::block_in_place(|| h.block_on(f)),
            Err(_) => self.handle.block_on(f),
        }
    }

    /// Inserts a batch of new keys for `tenant` (one transaction) and adds them to its pool.
    async fn refill(&self, tenant: &str) -> Result<(), KeyError> {
        let size = {
            let mut h = self.held.lock().expect("key store lock");
            let t = h.tenant(tenant);
            let size = h.batch[&t];
            h.batch.insert(t, (size * 2).min(POOL_BATCH));
            size
        };
        let client = self.db.client().await?;
        let rows = client
            .query("SELECT nextval('key_slots') FROM generate_series(1, $1)", &[&(size as i32)])
            .await
            .map_err(db_err)?;
        let slots: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        let keys: Vec<DataKey> = slots.iter().map(|&s| DataKey::random().in_slot(s as u64)).collect();
        let wrapped: Vec<Vec<u8>> = slots.iter().zip(&keys).map(|(&s, k)| self.master.wrap_for_slot(s as u64, k)).collect();
        let versions = vec![self.master.version as i32; slots.len()];
        client
            .execute(
                "INSERT INTO keys (tenant, slot, master_version, wrapped) SELECT $4, * FROM unnest($1::bigint[], $2::int[], $3::bytea[])",
                &[&slots, &versions, &wrapped, &tenant],
            )
            .await
            .map_err(db_err)?;
        drop(client);
        let mut h = self.held.lock().expect("key store lock");
        let t = h.tenant(tenant);
        // Handed out lowest slot first.
        for (slot, key) in slots.iter().zip(keys).rev() {
            h.hold(tenant, *slot as u64, key);
            h.pool.entry(t.clone()).or_default().push(*slot as u64);
        }
        Ok(())
    }

    /// Deletes `tenant`'s rows of `slots` and of `owner` (every node's key for them), telling
    /// every node in the same transaction; then vacuums the table. Returns the slots deleted.
    async fn delete(&self, tenant: &str, owner: Option<[u8; 32]>, slots: Vec<u64>) -> Result<Vec<u64>, KeyError> {
        let mut client = self.db.client().await?;
        let tx = client.transaction().await.map_err(db_err)?;
        let slots: Vec<i64> = slots.into_iter().map(|s| s as i64).collect();
        let owner = owner.map(|o| o.to_vec());
        let rows = tx
            .query("DELETE FROM keys WHERE tenant = $3 AND (slot = ANY($1) OR owner = $2) RETURNING slot", &[&slots, &owner, &tenant])
            .await
            .map_err(db_err)?;
        let deleted: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        // A notification's payload is at most 8000 bytes.
        for chunk in deleted.chunks(400) {
            let payload = chunk.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            tx.execute("SELECT pg_notify($1, $2)", &[&channel(&self.db.schema), &payload]).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        if !deleted.is_empty() {
            // The deleted row versions are pruned, so no SQL reaches the wrapped keys. The rows
            // are deleted whatever happens here (autovacuum prunes them later).
            if let Err(e) = client.batch_execute("VACUUM keys").await {
                tracing::warn!(error = %e, "vacuuming the key table after a destruction failed");
            }
        }
        Ok(deleted)
    }
}

/// Writes owners into their pooled keys' rows, in batches, off the append path.
async fn record_owners(db: Arc<Db>, mut inbox: mpsc::UnboundedReceiver<(Arc<str>, u64, [u8; 32])>) {
    let mut batch = Vec::new();
    while inbox.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let tenants: Vec<&str> = batch.iter().map(|(t, _, _)| &**t).collect();
        let slots: Vec<i64> = batch.iter().map(|(_, s, _)| *s as i64).collect();
        let owners: Vec<Vec<u8>> = batch.iter().map(|(_, _, o)| o.to_vec()).collect();
        let written = async {
            db.client()
                .await?
                .execute(
                    "UPDATE keys SET owner = v.owner FROM unnest($1::bigint[], $2::bytea[], $3::text[]) AS v(slot, owner, tenant) \
                     WHERE keys.tenant = v.tenant AND keys.slot = v.slot AND keys.owner IS NULL",
                    &[&slots, &owners, &tenants],
                )
                .await
                .map_err(db_err)
        }
        .await;
        batch.clear();
        if let Err(e) = written {
            // The keys stay usable (values name their slots); erasure finds them by slot.
            tracing::warn!(error = %e, keys = slots.len(), "recording the owners of pooled keys failed");
        }
    }
}

/// Forgets the keys other nodes destroy, as they are destroyed. Each (re)connection first
/// checks every key held against the table, for what was destroyed while it was not listening.
/// Ends when the key store is dropped.
async fn listen(db: Arc<Db>, held: std::sync::Weak<Mutex<Held>>) {
    loop {
        if held.strong_count() == 0 {
            return;
        }
        if let Err(e) = listen_once(&db, &held).await {
            tracing::warn!(error = %e, "listening for destroyed keys failed; reconnecting");
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn listen_once(db: &Db, held: &std::sync::Weak<Mutex<Held>>) -> Result<(), KeyError> {
    let (client, mut connection) = chronicle_tls::postgres::connect(&db.url).await.map_err(|e| KeyError::Database(e.to_string()))?;
    let (tx, mut notes) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client.batch_execute(&format!("SET search_path TO {}; LISTEN {}", db.schema, channel(&db.schema))).await.map_err(db_err)?;
    let Some(h) = held.upgrade() else { return Ok(()) };
    let (tenants, mine) = {
        let mut h = h.lock().expect("key store lock");
        h.epoch += 1;
        h.columns(h.slots.keys().copied())
    };
    drop(h);
    let rows = client
        .query(
            "SELECT k.slot FROM unnest($1::text[], $2::bigint[]) AS x(t, s) JOIN keys k ON k.tenant = x.t AND k.slot = x.s",
            &[&tenants, &mine],
        )
        .await
        .map_err(db_err)?;
    let present: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    let destroyed: Vec<u64> = mine.into_iter().filter(|s| !present.contains(s)).map(|s| s as u64).collect();
    if let Some(h) = held.upgrade() {
        h.lock().expect("key store lock").forget(&destroyed);
    }
    while let Some(payload) = notes.recv().await {
        let slots: Vec<u64> = payload.split(',').filter_map(|s| s.parse().ok()).collect();
        let Some(h) = held.upgrade() else { return Ok(()) };
        h.lock().expect("key store lock").forget(&slots);
    }
    Err(KeyError::Database("the listening connection closed".into()))
}

#[async_trait]
impl Keys for PgKeyStore {
    fn get(&self, tenant: &str, owner: &str) -> Option<DataKey> {
        let h = self.held.lock().expect("key store lock");
        h.owners.get(&owner_digest(tenant, owner)).and_then(|s| h.slots.get(s)).cloned()
    }

    fn get_slot(&self, slot: u64) -> Option<DataKey> {
        self.held.lock().expect("key store lock").slots.get(&slot).cloned()
    }

    fn try_assign(&self, tenant: &str, owner: &str) -> Result<Option<DataKey>, KeyError> {
        let d = owner_digest(tenant, owner);
        let mut h = self.held.lock().expect("key store lock");
        if let Some(key) = h.owners.get(&d).and_then(|s| h.slots.get(s)) {
            return Ok(Some(key.clone()));
        }
        let Some(slot) = h.pool.get_mut(tenant).and_then(Vec::pop) else { return Ok(None) };
        h.owners.insert(d, slot);
        let key = h.slots.get(&slot).cloned().expect("a pooled key is held");
        let t = h.tenant(tenant);
        // The task ends only when the store is dropped.
        let _ = self.records.send((t, slot, d));
        Ok(Some(key))
    }

    fn assign(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError> {
        loop {
            if let Some(k) = self.try_assign(tenant, owner)? {
                return Ok(k);
            }
            self.block(self.refill(tenant))?;
        }
    }

    fn pool_low(&self, tenant: &str) -> bool {
        let h = self.held.lock().expect("key store lock");
        h.low(tenant) && !h.refilling.contains(tenant)
    }

    fn refill_ahead(&self, tenant: &str) -> Result<(), KeyError> {
        let t = {
            let mut h = self.held.lock().expect("key store lock");
            let t = h.tenant(tenant);
            if !h.low(tenant) || !h.refilling.insert(t.clone()) {
                return Ok(());
            }
            t
        };
        let done = self.block(self.refill(tenant));
        self.held.lock().expect("key store lock").refilling.remove(&t);
        done
    }

    fn get_or_create(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError> {
        if let Some(k) = Keys::get(self, tenant, owner) {
            return Ok(k);
        }
        let d = owner_digest(tenant, owner);
        let (slot, key) = self.block(async {
            let mut client = self.db.client().await?;
            let tx = client.transaction().await.map_err(db_err)?;
            // One key per owner whichever node asks first: the look-up and the insert are
            // serialised per owner.
            let lock = i32::from_le_bytes(d[..4].try_into().expect("4 bytes"));
            tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&OWNER_LOCK, &lock]).await.map_err(db_err)?;
            let found =
                tx.query_opt("SELECT slot, wrapped FROM keys WHERE tenant = $2 AND owner = $1 ORDER BY slot LIMIT 1", &[&d.to_vec(), &tenant])
                    .await
                    .map_err(db_err)?;
            let made = match found {
                Some(row) => {
                    let slot = row.get::<_, i64>(0) as u64;
                    let key = self
                        .master
                        .unwrap_for_slot(slot, row.get(1))
                        .ok_or_else(|| KeyError::Invalid("a data key does not unwrap with this master key".into()))?;
                    (slot, key)
                }
                None => {
                    let slot = tx.query_one("SELECT nextval('key_slots')", &[]).await.map_err(db_err)?.get::<_, i64>(0) as u64;
                    let key = DataKey::random().in_slot(slot);
                    tx.execute(
                        "INSERT INTO keys (tenant, slot, owner, master_version, wrapped) VALUES ($5, $1, $2, $3, $4)",
                        &[&(slot as i64), &d.to_vec(), &(self.master.version as i32), &self.master.wrap_for_slot(slot, &key), &tenant],
                    )
                    .await
                    .map_err(db_err)?;
                    (slot, key)
                }
            };
            tx.commit().await.map_err(db_err)?;
            Ok::<_, KeyError>(made)
        })?;
        let mut h = self.held.lock().expect("key store lock");
        if h.gone.contains(&slot) {
            // Destroyed by another node since it was read.
            return Err(KeyError::Invalid(format!("the key of {tenant}/{owner} was destroyed meanwhile")));
        }
        h.hold(tenant, slot, key.clone());
        h.owners.insert(d, slot);
        Ok(key)
    }

    fn create_many(&self, tenant: &str, owners: &[String]) -> Result<usize, KeyError> {
        let mut made = 0;
        for owner in owners {
            if Keys::get(self, tenant, owner).is_none() {
                self.assign(tenant, owner)?;
                made += 1;
            }
        }
        Ok(made)
    }

    fn destroy(&self, tenant: &str, owner: &str) -> Result<bool, KeyError> {
        let d = owner_digest(tenant, owner);
        // The key this node handed out, whose owner record may not be written yet, too.
        let mine: Vec<u64> = self.held.lock().expect("key store lock").owners.get(&d).copied().into_iter().collect();
        let deleted = self.block(self.delete(tenant, Some(d), mine))?;
        self.held.lock().expect("key store lock").forget(&deleted);
        Ok(!deleted.is_empty())
    }

    fn destroy_slots_opening(&self, tenant: &str, samples: &[(u64, String)]) -> Result<usize, KeyError> {
        let mut wanted: Vec<(String, u64)> = samples.iter().map(|(s, _)| (tenant.to_owned(), *s)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let missing = Keys::missing(self, &wanted);
        if !missing.is_empty() {
            self.block(self.fetch(missing))?;
        }
        let opening: Vec<u64> = {
            let h = self.held.lock().expect("key store lock");
            samples.iter().filter(|(slot, sample)| h.slots.get(slot).is_some_and(|k| k.open(sample).is_some())).map(|(s, _)| *s).collect()
        };
        if opening.is_empty() {
            return Ok(0);
        }
        let deleted = self.block(self.delete(tenant, None, opening))?;
        self.held.lock().expect("key store lock").forget(&deleted);
        Ok(deleted.len())
    }

    fn orphans(&self) -> usize {
        self.held.lock().expect("key store lock").unowned
    }

    fn len(&self) -> usize {
        self.held.lock().expect("key store lock").slots.len()
    }

    fn shared(&self) -> bool {
        true
    }

    fn missing(&self, wanted: &[(String, u64)]) -> Vec<(String, u64)> {
        let h = self.held.lock().expect("key store lock");
        wanted.iter().filter(|(_, s)| !h.slots.contains_key(s) && !h.gone.contains(s)).cloned().collect()
    }

    async fn fetch(&self, mut wanted: Vec<(String, u64)>) -> Result<(), KeyError> {
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        // Each slot with the ones after it, up to a pool batch: the node that made it hands its
        // tenant's pool out in order, so its next events name those — fetched now, not one
        // query each.
        let (mut ts, mut lo, mut hi): (Vec<&str>, Vec<i64>, Vec<i64>) = (Vec::new(), Vec::new(), Vec::new());
        for (t, s) in &wanted {
            match (ts.last(), hi.last_mut()) {
                (Some(last), Some(h)) if *last == t.as_str() && *s as i64 <= *h => *h = *s as i64 + POOL_BATCH as i64,
                _ => {
                    ts.push(t);
                    lo.push(*s as i64);
                    hi.push(*s as i64 + POOL_BATCH as i64);
                }
            }
        }
        let (rows, mut h) = loop {
            let epoch = self.held.lock().expect("key store lock").epoch;
            let rows = self
                .db
                .client()
                .await?
                .query(
                    "SELECT k.slot, k.master_version, k.wrapped, k.tenant FROM unnest($3::text[], $1::bigint[], $2::bigint[]) AS r(t, lo, hi) \
                     JOIN keys k ON k.tenant = r.t AND k.slot >= r.lo AND k.slot < r.hi",
                    &[&lo, &hi, &ts],
                )
                .await
                .map_err(db_err)?;
            let h = self.held.lock().expect("key store lock");
            if h.epoch == epoch {
                break (rows, h);
            }
        };
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let slot = row.get::<_, i64>(0) as u64;
            if row.get::<_, i32>(1) as u32 != self.master.version {
                return Err(KeyError::Invalid("a key in the database is wrapped by another master key version".into()));
            }
            let key = self
                .master
                .unwrap_for_slot(slot, row.get(2))
                .ok_or_else(|| KeyError::Invalid("a data key in the database does not unwrap with this master key".into()))?;
            found.push((slot, key, row.get::<_, String>(3)));
        }
        for (slot, key, tenant) in found {
            // Destroyed while the query ran (the notification came first): stays forgotten.
            if !h.gone.contains(&slot) {
                h.hold(&tenant, slot, key);
            }
        }
        // A slot an event names is committed before the event: missing now means destroyed.
        let absent: Vec<u64> = wanted.into_iter().map(|(_, s)| s).filter(|s| !h.slots.contains_key(s)).collect();
        h.gone.extend(absent);
        Ok(())
    }
}
