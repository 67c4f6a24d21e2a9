//! Opening the configured storage: the embedded store in a data folder, locked to this
//! process (a second process would break the single writer's position sequence and the
//! inline projections), plus where the projection checkpoint is kept.
//!
//! New folders get the append-only log (`LogStore`, the default since it commits several
//! times faster; ADR 0001); a folder that already holds an `events.sqlite` keeps SQLite. With
//! `--database-url` the events live in PostgreSQL (`PgStore`), shared by every node over it, and
//! so do the keys of crypto-shredding (`PgKeyStore`; every node needs the same master key) and
//! the views' checkpoint ([`PgCheckpoint`]: one for every node, written by the holder of its
//! lease). A node over PostgreSQL keeps nothing locally: it makes no data folder and takes no
//! lock (two nodes may start from one directory), and its master key comes from
//! `--master-key-file` (or `--master-key`), never a file it would make. The database records how
//! its events are sealed, and a node that does not match is refused. (A database first sealed by
//! one folder's key file, before the keys moved into PostgreSQL, stays with that one node.)

use chronicle_store::log::LogStore;
use chronicle_store::postgres::PgStore;
use chronicle_store::sqlite::{self, SqliteStore};
use chronicle_privacy::{KeyStore, Keys, MasterKey, PgKeyStore, SealedStore};
use chronicle_projections::{CheckpointError, CheckpointFile, CheckpointPlace, Saved};
use crate::App;
use chronicle_store::expire::{Expired, Expiry};
use chronicle_store::EventStore;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

/// Where the events live and how they are sealed: what `--data`, `--database-url` and the
/// sealing options say.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The data folder of the embedded store (over PostgreSQL unused, unless an older database
    /// is sealed by this folder's `keys.bin`).
    pub data: PathBuf,
    pub database_url: Option<String>,
    pub database_schema: String,
    /// `--seal` as given (none: the folder's own choice, sealed for a new one).
    pub seal: Option<bool>,
    pub master_key_file: Option<PathBuf>,
    pub master_key: Option<String>,
    /// Whether a data folder that does not exist is made (the commands that start a store:
    /// `tenant create`, `serve`, `demo`); otherwise it is refused, so a mistyped `--data` is
    /// not a new empty store.
    pub create: bool,
}

impl StorageConfig {
    /// An embedded store in `data`, sealed as the folder was made (new: sealed), with its own
    /// master key beside it; `create` makes the folder when it is missing.
    pub fn embedded(data: &std::path::Path, create: bool) -> StorageConfig {
        StorageConfig {
            data: data.to_owned(),
            database_url: None,
            database_schema: "chronicle".into(),
            seal: None,
            master_key_file: None,
            master_key: None,
            create,
        }
    }
}

/// Refuses the open with a message (returns from the function).
macro_rules! refused {
    ($($t:tt)*) => {
        return Err(StorageError::Refused(format!($($t)*)))
    };
}

type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why the storage could not be opened (or compacted): what was being done, and its cause.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        cause: Cause,
    },
    /// The folder or database may not be opened this way (in use, sealed otherwise).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Expire(#[from] chronicle_store::expire::ExpireError),
    #[error(transparent)]
    Read(#[from] chronicle_store::ReadError),
    #[error(transparent)]
    App(#[from] crate::AppError),
}

impl StorageError {
    /// `what` failed because of `cause` (for `map_err`).
    fn failed<E: Into<Cause>>(what: impl Into<String>) -> impl FnOnce(E) -> StorageError {
        let what = what.into();
        move |e| StorageError::Failed { what, cause: e.into() }
    }
}

pub struct Storage {
    /// The event store, sealing personal data (see `chronicle_privacy`).
    pub store: Arc<dyn EventStore>,
    /// The checkpoint file of a node that keeps its own (no `--database-url`).
    checkpoint: PathBuf,
    /// This process among the nodes over one database (the holder named in its leases).
    pub holder: String,
    /// With crypto-shredding on (`--seal`, or a folder that has `keys.bin`).
    pub keys: Option<Arc<dyn Keys>>,
    /// The PostgreSQL store under `store`, when `--database-url` (leases for shared work).
    pub pg: Option<Arc<PgStore>>,
    /// The data folder's lock (none over PostgreSQL, where nothing is kept locally).
    _lock: Option<File>,
}

impl Storage {
    /// The application over this storage (views from the sealed checkpoint plus the log).
    pub async fn app(&self) -> Result<Arc<App>, StorageError> {
        App::start_at(self.store.clone(), Some(self.checkpoint()), self.keys.clone())
            .await
            .map_err(StorageError::failed("starting the application"))
    }

    /// Where the views' checkpoint is kept: the folder's file, or the row every node over the
    /// database shares. Made anew on each call: `expire` closes the PostgreSQL store, which a
    /// place kept beside it would hold open.
    pub fn checkpoint(&self) -> Arc<dyn CheckpointPlace> {
        match &self.pg {
            Some(pg) => Arc::new(PgCheckpoint { pg: pg.clone(), holder: self.holder.clone() }),
            None => Arc::new(CheckpointFile(self.checkpoint.clone())),
        }
    }

    /// Replaces the events at `expiry.positions` with tombstones and appends its records
    /// (`chronicle_store::expire`): the store is closed for it and opened again after, while
    /// the folder stays locked. Nothing else may hold the store (`Arc`) meanwhile.
    pub fn expire(&mut self, cfg: &StorageConfig, expiry: &Expiry<'_>) -> Result<Expired, StorageError> {
        let closed = std::mem::replace(&mut self.store, Arc::new(chronicle_store::memory::MemoryStore::new()));
        drop(self.pg.take());
        if Arc::strong_count(&closed) != 1 {
            refused!("the event store is still in use; cannot compact it");
        }
        drop(closed);
        let expired = if let Some(url) = &cfg.database_url {
            let expire = PgStore::expire(url, &cfg.database_schema, expiry);
            wait(expire)
        } else if cfg.data.join(sqlite::DB_FILE).exists() {
            SqliteStore::expire(&cfg.data, expiry)
        } else {
            LogStore::expire(&cfg.data, expiry)
        };
        // Opened again whatever happened: an expiry that failed left the store as it was.
        let (store, pg) = open_store(cfg)?;
        (self.store, self.pg) = (sealed_by(store, self.keys.as_ref()), pg);
        Ok(expired?)
    }
}

/// Runs `f` to its end from the synchronous open path, which the async commands call on a
/// worker thread of the multi-thread runtime (given up meanwhile).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// The master key: `--master-key`, else `--master-key-file`, else `DATA/master.key` (made on
/// first use, readable by the owner only). Kept beside the data it protects, it still makes
/// erasure real (destroyed data keys are gone whatever the master key); keep it elsewhere to
/// also protect a copied data folder.
fn master_key(cfg: &StorageConfig) -> Result<MasterKey, StorageError> {
    if let Some(text) = &cfg.master_key {
        return MasterKey::parse(text).map_err(StorageError::failed("CHRONICLE_MASTER_KEY"));
    }
    if cfg.database_url.is_some() && cfg.master_key_file.is_none() && !cfg.data.join(chronicle_privacy::keystore::KEY_FILE).exists() {
        refused!(
            "this database's events are sealed (crypto-shredding) and a node over PostgreSQL keeps nothing locally: \
             give it the master key every node shares with --master-key-file (or --master-key); --seal=false for an \
             unsealed database"
        );
    }
    let path = cfg.master_key_file.clone().unwrap_or_else(|| cfg.data.join("master.key"));
    match std::fs::read_to_string(&path) {
        Ok(text) => MasterKey::parse(&text).map_err(StorageError::failed(format!("reading the master key {}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && cfg.master_key_file.is_none() => {
            let (key, text) = MasterKey::generate(1);
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(StorageError::failed(format!("creating {}", path.display())))?;
            f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(StorageError::failed(format!("writing {}", path.display())))?;
            // And its name: without the master key every sealed byte is lost.
            if let Some(dir) = path.parent() {
                chronicle_store::log::sync_dir(dir).map_err(StorageError::failed(format!("syncing {}", dir.display())))?;
            }
            tracing::warn!(path = %path.display(), "created a master key beside the data; set --master-key-file to keep it elsewhere");
            Ok(key)
        }
        Err(e) => Err(e).map_err(StorageError::failed(format!("reading the master key {}", path.display()))),
    }
}

pub fn open(cfg: &StorageConfig) -> Result<Storage, StorageError> {
    // Over PostgreSQL nothing is kept locally, so there is nothing to lock; unless an older
    // database is sealed by this folder's key file, which only this node may use.
    let lock = if cfg.database_url.is_none() || cfg.data.join(chronicle_privacy::keystore::KEY_FILE).exists() {
        Some(lock_folder(cfg)?)
    } else {
        None
    };
    // Judged before the store is opened: opening makes a new folder's (empty) log.
    let folder_sealed = lock.is_some() && sealed(cfg)?;
    let (store, pg) = open_store(cfg)?;
    let keys: Option<Arc<dyn Keys>> = match &pg {
        Some(pg) if !cfg.data.join(chronicle_privacy::keystore::KEY_FILE).exists() => database_keys(cfg, pg)?,
        _ if folder_sealed => {
            let keys = KeyStore::open(&cfg.data, master_key(cfg)?)
                .map_err(StorageError::failed(format!("opening the key store in {}", cfg.data.display())))?;
            Some(Arc::new(keys))
        }
        _ => None,
    };
    let store = sealed_by(store, keys.as_ref());
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    let storage = Storage { store, checkpoint: cfg.data.join("projections.json"), holder, keys, pg, _lock: lock };
    if let Some(pg) = &storage.pg {
        claim_sealing(pg, &*storage.store)?;
        if cfg.data.is_dir() {
            remove_folder_views(&storage.checkpoint)?;
        }
    }
    Ok(storage)
}

/// The embedded store's folder, made when the command may make it, locked to this process.
fn lock_folder(cfg: &StorageConfig) -> Result<File, StorageError> {
    if !cfg.create && !cfg.data.is_dir() {
        refused!(
            "data folder {} does not exist (only tenant create, serve and demo make one); check --data",
            cfg.data.display()
        );
    }
    std::fs::create_dir_all(&cfg.data).map_err(StorageError::failed(format!("creating data folder {}", cfg.data.display())))?;
    let lock_path = cfg.data.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(StorageError::failed(format!("opening {}", lock_path.display())))?;
    if lock.try_lock().is_err() {
        refused!(
            "data folder {} is in use by another chronicle process (a running server?); stop it first",
            cfg.data.display()
        );
    }
    Ok(lock)
}

/// A node over PostgreSQL keeps no views in its folder (they are shared in the database): a
/// checkpoint an older build left there is removed — it holds profiles that erasures made since
/// no longer reach — and so is the compaction count that went with it.
fn remove_folder_views(checkpoint: &std::path::Path) -> Result<(), StorageError> {
    for path in [checkpoint.to_path_buf(), checkpoint.with_file_name("compactions")] {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::warn!(path = %path.display(), "removed the views an older build kept in the folder; they are shared in the database now"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).map_err(StorageError::failed(format!("removing {}", path.display()))),
        }
    }
    Ok(())
}

/// The lease of the shared checkpoint: its holder writes it.
const VIEWS_LEASE: &str = "views";
/// How long the checkpoint's lease lasts unrenewed: a node renews it every
/// [`VIEWS_LEASE_RENEW`], so a dead holder's duty moves within this.
pub const VIEWS_LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(6);
pub const VIEWS_LEASE_RENEW: std::time::Duration = std::time::Duration::from_secs(2);

/// The views' checkpoint in PostgreSQL, one for every node over the schema (table
/// `checkpoints`). Every node keeps its views in memory (ADR 0002) and starts from this
/// checkpoint; only the holder of lease `views` writes it, so the nodes do not each serialise
/// and store the same views, and a dead holder's duty moves to another node within
/// [`VIEWS_LEASE_TTL`]. The lease is checked by the same statement that writes.
pub struct PgCheckpoint {
    pg: Arc<PgStore>,
    holder: String,
}

impl PgCheckpoint {
    fn block<T>(&self, f: impl std::future::Future<Output = Result<T, chronicle_store::ReadError>>) -> Result<T, CheckpointError> {
        wait(f).map_err(|e| CheckpointError::Place { path: self.describe(), message: e.to_string() })
    }
}

impl CheckpointPlace for PgCheckpoint {
    fn describe(&self) -> String {
        format!("table {}.checkpoints", self.pg.location().1)
    }

    fn read(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        self.block(self.pg.read_checkpoint(VIEWS_LEASE))
    }

    fn claim(&self) -> Result<bool, CheckpointError> {
        use chronicle_store::Leases;
        Ok(self.block(self.pg.lease(VIEWS_LEASE, &self.holder, VIEWS_LEASE_TTL, 0))?.is_some())
    }

    fn release(&self) -> Result<(), CheckpointError> {
        use chronicle_store::Leases;
        self.block(self.pg.release(VIEWS_LEASE, &self.holder, 0))
    }

    fn write(&self, position: u64, bytes: &[u8]) -> Result<Saved, CheckpointError> {
        let written = self.block(self.pg.write_checkpoint(VIEWS_LEASE, VIEWS_LEASE, &self.holder, position, bytes))?;
        Ok(match written {
            Some(replaced) => Saved::Written { replaced_key: replaced.as_deref().and_then(chronicle_projections::key_of) },
            None => Saved::NotMine,
        })
    }

    fn remove(&self) -> Result<Option<String>, CheckpointError> {
        Ok(self.block(self.pg.remove_checkpoint(VIEWS_LEASE))?.as_deref().and_then(chronicle_projections::key_of))
    }
}

/// The keys in PostgreSQL, unless the node runs unsealed: `--seal=false`, or no `--seal` over a
/// database whose events are not sealed. A new database is sealed, as a new folder is.
fn database_keys(cfg: &StorageConfig, pg: &PgStore) -> Result<Option<Arc<dyn Keys>>, StorageError> {
    let sealing = wait(pg.setting("sealing"))?;
    let seal = match (cfg.seal, sealing.as_deref()) {
        (Some(seal), _) => seal,
        (None, Some("none")) => false,
        (None, _) => true,
    };
    if !seal {
        return Ok(None);
    }
    let (url, schema) = pg.location();
    let open = PgKeyStore::open(url, schema, master_key(cfg)?);
    let keys = wait(open)
        .map_err(StorageError::failed(format!("opening the key store in PostgreSQL (schema {schema})")))?;
    Ok(Some(Arc::new(keys)))
}

/// Every node over one database must read the events as they were written: unsealed, or
/// sealed with the key store that sealed them (named by a digest of its index key): the one in
/// the database, or an older database's one data folder's key file.
fn claim_sealing(pg: &PgStore, store: &dyn EventStore) -> Result<(), StorageError> {
    let mine = match store.index_key()? {
        Some(k) => format!("keys:{}", &crate::keys::digest(&format!("{k:?}"))[..16]),
        None => "none".to_owned(),
    };
    let connect = pg.claim_setting("sealing", &mine);
    let theirs = wait(connect)?;
    if theirs != mine {
        match (theirs.as_str(), mine.as_str()) {
            ("none", _) => refused!("this database's events are not sealed; open it with --seal=false (a data folder of its own without keys.bin)"),
            (_, "none") => refused!("this database's events are sealed; open it without --seal=false, with the master key of the other nodes"),
            _ => refused!(
                "this database's events are sealed by another key store (a data folder's keys.bin, from before the keys \
                 moved into the database); only that folder's node can open them"
            ),
        }
    }
    Ok(())
}

/// Whether the folder's events are sealed (crypto-shredding): a folder that was ever sealed
/// stays sealed (its events can only be read through the keys); a new folder is sealed unless
/// `--seal=false`; a folder made unsealed stays so unless `--seal` is given.
fn sealed(cfg: &StorageConfig) -> Result<bool, StorageError> {
    let has_keys = cfg.data.join(chronicle_privacy::keystore::KEY_FILE).exists();
    let has_events = cfg.data.join(chronicle_store::log::LOG_FILE).exists() || cfg.data.join(sqlite::DB_FILE).exists();
    match (has_keys, cfg.seal) {
        (true, Some(false)) => refused!(
            "data folder {} is sealed (it holds keys.bin): it cannot be opened with --seal=false",
            cfg.data.display()
        ),
        (true, _) => Ok(true),
        (false, Some(seal)) => Ok(seal),
        (false, None) => {
            if has_events {
                tracing::warn!(
                    "crypto-shredding is off for this data folder (it was made unsealed): an erasure cannot remove \
                     personal data from its log; --seal turns it on for new events"
                );
            }
            Ok(!has_events)
        }
    }
}

/// The event store, and the PostgreSQL store under it when there is one.
type Opened = (Arc<dyn EventStore>, Option<Arc<PgStore>>);

/// The configured event store, as stored (unsealed): PostgreSQL with `--database-url`, else
/// the folder's log (or SQLite where the folder has one).
fn open_store(cfg: &StorageConfig) -> Result<Opened, StorageError> {
    let mut pg = None;
    let store: Arc<dyn EventStore> = if let Some(url) = &cfg.database_url {
        // Called from the async commands: connecting waits on this worker thread.
        let connect = PgStore::connect_in(url, &cfg.database_schema);
        let store = wait(connect)
            .map_err(StorageError::failed(format!("opening the PostgreSQL event store (schema {})", cfg.database_schema)))?;
        let store = Arc::new(store);
        pg = Some(store.clone());
        store
    } else if cfg.data.join(sqlite::DB_FILE).exists() {
        Arc::new(
            SqliteStore::open(&cfg.data)
                .map_err(StorageError::failed(format!("opening the SQLite event store in {}", cfg.data.display())))?,
        )
    } else {
        Arc::new(LogStore::open(&cfg.data).map_err(StorageError::failed(format!("opening the event log in {}", cfg.data.display())))?)
    };
    Ok((store, pg))
}

/// `store`, sealed with `keys` when there are any.
fn sealed_by(store: Arc<dyn EventStore>, keys: Option<&Arc<dyn Keys>>) -> Arc<dyn EventStore> {
    match keys {
        Some(keys) => Arc::new(SealedStore::new(store, keys.clone())),
        None => store,
    }
}
