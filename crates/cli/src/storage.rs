//! Opening the configured storage: the embedded store in a data folder, locked to this
//! process (a second process would break the single writer's position sequence and the
//! inline projections), plus the projection checkpoint's path.
//!
//! New folders get the append-only log (`LogStore`, the default since it commits several
//! times faster; ADR 0001); a folder that already holds an `events.sqlite` keeps SQLite.

use crate::config::Config;
use anyhow::{bail, Context};
use chronicle_store::log::LogStore;
use chronicle_store::sqlite::{self, SqliteStore};
use chronicle_store::EventStore;
use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Storage {
    pub store: Arc<dyn EventStore>,
    pub checkpoint: PathBuf,
    _lock: File,
}

pub fn open(cfg: &Config) -> anyhow::Result<Storage> {
    if cfg.database_url.is_some() {
        bail!("the PostgreSQL backend is not available yet; leave --database-url / CHRONICLE_DATABASE_URL unset to use the embedded store");
    }
    std::fs::create_dir_all(&cfg.data).with_context(|| format!("creating data folder {}", cfg.data.display()))?;
    let lock_path = cfg.data.join("LOCK");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "data folder {} is in use by another chronicle process (a running server?); stop it first",
            cfg.data.display()
        );
    }
    let store: Arc<dyn EventStore> = if cfg.data.join(sqlite::DB_FILE).exists() {
        Arc::new(
            SqliteStore::open(&cfg.data)
                .with_context(|| format!("opening the SQLite event store in {}", cfg.data.display()))?,
        )
    } else {
        Arc::new(LogStore::open(&cfg.data).with_context(|| format!("opening the event log in {}", cfg.data.display()))?)
    };
    Ok(Storage { store, checkpoint: cfg.data.join("projections.json"), _lock: lock })
}
