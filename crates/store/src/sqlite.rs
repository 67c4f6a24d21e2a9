//! `SqliteStore`: the earlier embedded backend (a folder that already holds `events.sqlite` keeps
//! it; new folders get the log, ADR 0001) — one SQLite database in a data folder, in WAL
//! mode with `synchronous=FULL`, so an append returns only once it is on disk.
//!
//! Writes go through group commit: one dedicated writer thread owns the only write connection;
//! `append` sends its request over a channel and awaits a oneshot reply, so the async runtime is
//! never blocked. The writer drains every pending request into one transaction, validates each
//! in memory (a per-stream version cache; ids through the UNIQUE index), inserts the accepted
//! ones at consecutive positions, commits once (one fsync for the whole group), calls the commit
//! hook, moves the head watch and answers. Reads use a small pool of read-only connections and
//! run directly: they are short local queries, and WAL lets them proceed during a commit.
//! docs/storage.md describes the file format and the protocol in full.

use crate::expire::{ExpireError, Expired, Expiry, EXPIRED_TYPE};
use crate::rules::{self, StoredAt};
use crate::event_store::{AppendError, AppendResult, CommitHook, EventStore, ReadError};
use async_trait::async_trait;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent, RawEnvelope};
use chrono::{DateTime, Utc};
use rusqlite::types::{Type, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OpenFlags, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// The database file inside the data folder.
pub const DB_FILE: &str = "events.sqlite";
/// `PRAGMA user_version` of the layout this build writes; see docs/storage.md.
pub const FORMAT_VERSION: i64 = 2;

/// Group limits: enough to amortise one fsync over many appends, small enough that one group's
/// latency stays in the low milliseconds.
const MAX_GROUP_REQUESTS: usize = 1024;
const MAX_GROUP_EVENTS: usize = 10_000;
/// Requests waiting for the writer; beyond this, `append` waits (async) for room.
const QUEUE_CAPACITY: usize = 4096;
const MAX_IDLE_READERS: usize = 4;
/// The version cache is dropped wholesale past this many streams (~100 MB at worst) and refills
/// lazily from the index.
const MAX_CACHED_STREAMS: usize = 1_000_000;

const SCHEMA: &str = "
CREATE TABLE events (
    position       INTEGER PRIMARY KEY,
    id             BLOB    NOT NULL,
    tenant         TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    event_time     INTEGER NOT NULL,
    ingest_time    INTEGER NOT NULL,
    source         TEXT    NOT NULL,
    causation_id   BLOB,
    correlation_id BLOB,
    actor          TEXT,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL
) STRICT;
CREATE UNIQUE INDEX events_id ON events(tenant, id);
CREATE UNIQUE INDEX events_stream ON events(tenant, stream, version);
PRAGMA user_version = 2;
";

/// Layout 1 → 2: ids are unique per tenant, not across tenants (issue 17). Every id of a
/// layout-1 database is unique across tenants, so it is unique per tenant too.
const MIGRATE_1_TO_2: &str = "
DROP INDEX events_id;
CREATE UNIQUE INDEX events_id ON events(tenant, id);
PRAGMA user_version = 2;
";

macro_rules! columns {
    () => {
        "position, id, tenant, stream, version, type, schema_version, event_time, ingest_time, \
         source, causation_id, correlation_id, actor, data, metadata"
    };
}
const INSERT: &str = concat!(
    "INSERT INTO events (",
    columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
);
const READ_ALL: &str = concat!("SELECT ", columns!(), " FROM events WHERE position > ?1 ORDER BY position LIMIT ?2");
const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE tenant = ?1 AND stream = ?2 AND version >= ?3 ORDER BY version LIMIT ?4"
);
const READ_STREAM_UNTIL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE tenant = ?1 AND stream = ?2 AND version >= ?3 AND event_time <= ?4 ORDER BY version"
);
const STREAM_VERSION: &str = "SELECT max(version) FROM events WHERE tenant = ?1 AND stream = ?2";
const HEAD: &str = "SELECT max(position) FROM events";
const FIND_ID: &str = "SELECT tenant, stream, version, position FROM events WHERE tenant = ?1 AND id = ?2";
const UNDO_FROM: &str = "DELETE FROM events WHERE position >= ?1";

#[derive(Debug, thiserror::Error)]
pub enum StoreOpenError {
    #[error("cannot create the data folder {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot open the event database {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("{path} is in storage format {found}, this build knows format {FORMAT_VERSION}: upgrade Chronicle")]
    UnsupportedFormat { path: PathBuf, found: i64 },
    #[error("cannot put {path} in WAL mode (journal mode is {mode})")]
    NoWal { path: PathBuf, mode: String },
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

pub struct SqliteStore {
    path: PathBuf,
    /// `None` only while dropping: closing the channel is what stops the writer.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    head: Arc<watch::Sender<u64>>,
    hook: Arc<RwLock<Option<CommitHook>>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `dir`, i.e. `dir/events.sqlite`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreOpenError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreOpenError::Io { path: dir.to_path_buf(), source })?;
        let path = dir.join(DB_FILE);
        let sqlite_err = |source| StoreOpenError::Sqlite { path: path.clone(), source };

        let conn = Connection::open(&path).map_err(sqlite_err)?;
        configure_writer(&conn, &path)?;
        migrate(&conn, &path)?;
        let head_position = query_head(&conn).map_err(sqlite_err)?;
        let data_version = data_version(&conn).map_err(sqlite_err)?;

        let head = Arc::new(watch::Sender::new(head_position));
        let hook: Arc<RwLock<Option<CommitHook>>> = Arc::new(RwLock::new(None));
        let writer = Writer {
            conn,
            versions: HashMap::new(),
            cached_streams: 0,
            next_position: head_position + 1,
            data_version,
            stale: false,
            head: head.clone(),
            hook: hook.clone(),
        };
        let (requests, inbox) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("chronicle-store-writer".into())
            .spawn(move || writer.run(inbox))
            .map_err(StoreOpenError::Thread)?;
        Ok(SqliteStore {
            path,
            requests: Some(requests),
            writer: Some(writer),
            readers: Mutex::new(Vec::new()),
            head,
            hook,
        })
    }

    /// Replaces the events at `expiry.positions` with tombstones and appends `expiry.records`
    /// in one transaction, offline: no `SqliteStore` may be open on `dir`. See [`crate::expire`].
    /// With `secure_delete` on, then a `VACUUM` and a truncating checkpoint, the expired
    /// payloads leave no copy in free pages or the WAL.
    pub fn expire(dir: &Path, expiry: &Expiry<'_>) -> Result<Expired, ExpireError> {
        let path = dir.join(DB_FILE);
        crate::expire::check_positions(expiry.positions)?;
        let failed = |e: rusqlite::Error| ExpireError::Failed { path: path.clone(), reason: e.to_string() };
        let size = || {
            ["", "-wal"].iter().map(|s| std::fs::metadata(format!("{}{s}", path.display())).map_or(0, |m| m.len())).sum::<u64>()
        };
        let bytes_before = size();
        let mut conn = Connection::open(&path).map_err(failed)?;
        configure_wal_writer(&conn).map_err(failed)?;
        conn.pragma_update(None, "secure_delete", "ON").map_err(failed)?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(failed)?;
        let head = query_head(&tx).map_err(failed)?;
        if let Some(&last) = expiry.positions.last().filter(|&&p| p > head) {
            return Err(ExpireError::Invalid(format!("position {last} is beyond the head {head}")));
        }
        let mut expired = 0;
        for &position in expiry.positions {
            let event_type: String =
                tx.query_row("SELECT type FROM events WHERE position = ?1", [to_i64(position)], |r| r.get(0)).map_err(failed)?;
            if event_type == EXPIRED_TYPE {
                continue;
            }
            tx.execute(
                "UPDATE events SET type = ?2, schema_version = 1, data = ?3, metadata = '{}', actor = NULL, \
                 causation_id = NULL, correlation_id = NULL WHERE position = ?1",
                params![to_i64(position), EXPIRED_TYPE, crate::expire::tombstone_data(&event_type).to_string()],
            )
            .map_err(failed)?;
            expired += 1;
        }
        let ingest = rules::to_micros(rules::truncate_to_micros(Utc::now()));
        let mut position = head;
        for (tenant, stream, e) in &expiry.records {
            let stored = tx.prepare_cached(FIND_ID).map_err(failed)?.exists(params![tenant, &e.id.as_bytes()[..]]).map_err(failed)?;
            if stored {
                return Err(ExpireError::Invalid(format!("the record's id {} is already stored", e.id)));
            }
            position += 1;
            let version = query_stream_version(&tx, tenant, stream).map_err(failed)? + 1;
            let row = RowAt { position, version, tenant, stream, ingest_time: ingest };
            insert_row(&tx, &row, e, &e.data.json_text(), &e.metadata.to_string()).map_err(failed)?;
        }
        tx.commit().map_err(failed)?;
        conn.execute_batch("VACUUM").map_err(failed)?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).map_err(failed)?;
        drop(conn);
        Ok(Expired { expired, head: position, bytes_before, bytes_after: size() })
    }

    /// Runs one read on a pooled read-only connection.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, ReadError> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_reader(&self.path).map_err(read_error)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out.map_err(read_error)
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Readers first, so the writer's connection is the last one and checkpoints the WAL
        // into the main file on close.
        self.readers.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Closing the channel ends the writer once it has answered everything queued.
        self.requests.take();
        rules::join_writer(self.writer.take());
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        rules::check_batch(&events)?;
        // JSON is serialised here, on the caller's task, to keep the single writer thread lean.
        let events = events
            .into_iter()
            .map(|event| Prepared {
                data: event.data.json_text().into_owned(),
                metadata: event.metadata.to_string(),
                event,
            })
            .collect();
        let (reply, answer) = oneshot::channel();
        let request = Request { tenant: tenant.to_string(), stream: stream.to_string(), expected, events, reply };
        let requests = self.requests.as_ref().ok_or_else(writer_gone)?;
        // If this future is dropped after the send, the append still happens: cancelling a
        // request already handed to the writer is not possible.
        requests.send(request).await.map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }

    async fn read_stream(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|c| {
            let mut stmt = c.prepare_cached(READ_STREAM)?;
            let rows = stmt.query_map(params![tenant, stream, to_i64(from_version), to_i64(limit as u64)], envelope)?;
            rows.map(|r| r.map(rules::upcast_on_read)).collect()
        })
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|c| {
            let mut stmt = c.prepare_cached(READ_ALL)?;
            let rows = stmt.query_map(params![to_i64(after), to_i64(limit as u64)], envelope)?;
            rows.map(|r| r.map(rules::upcast_on_read)).collect()
        })
    }

    async fn read_all_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEnvelope>, ReadError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.read(|c| {
            let mut stmt = c.prepare_cached(READ_ALL)?;
            let rows = stmt.query_map(params![to_i64(after), to_i64(limit as u64)], raw_envelope)?;
            rows.collect()
        })
    }

    /// Filters on event time inside SQLite, so only the events that count are decoded.
    async fn read_stream_until(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        until: chrono::DateTime<Utc>,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(READ_STREAM_UNTIL)?;
            let rows =
                stmt.query_map(params![tenant, stream, to_i64(from_version), rules::to_micros(until)], envelope)?;
            rows.map(|r| r.map(rules::upcast_on_read)).collect()
        })
    }

    async fn head(&self) -> Result<u64, ReadError> {
        self.read(query_head)
    }

    async fn stored(&self, tenant: &str, ids: &[uuid::Uuid]) -> Result<Vec<bool>, ReadError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(FIND_ID)?;
            ids.iter().map(|id| stmt.exists(params![tenant, &id.as_bytes()[..]])).collect()
        })
    }

    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, ReadError> {
        self.read(|c| query_stream_version(c, tenant, stream))
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn set_commit_hook(&self, hook: CommitHook) {
        *self.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }
}

/// One append on its way to the writer.
struct Request {
    tenant: String,
    stream: String,
    expected: ExpectedVersion,
    events: Vec<Prepared>,
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

struct Prepared {
    event: NewEvent,
    data: String,
    metadata: String,
}

/// What the writer decided for one request of a group.
struct Outcome {
    result: Result<AppendResult, AppendError>,
    /// Whether the request's events are in this group's transaction (not a replay or rejection).
    appended: bool,
}

/// The writer thread's state. Only this thread writes; the caches below are therefore exact,
/// except when another process writes the same file, which `PRAGMA data_version` detects.
struct Writer {
    conn: Connection,
    /// tenant → stream → current version; filled lazily from the `events_stream` index.
    versions: HashMap<String, HashMap<String, u64>>,
    cached_streams: usize,
    next_position: u64,
    data_version: i64,
    /// Set when a group failed: the caches are reloaded before the next one.
    stale: bool,
    head: Arc<watch::Sender<u64>>,
    hook: Arc<RwLock<Option<CommitHook>>>,
}

impl Writer {
    fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP_REQUESTS);
        while let Some(first) = inbox.blocking_recv() {
            rules::fill_group(&mut group, first, &mut inbox, |r| r.events.len(), (MAX_GROUP_REQUESTS, MAX_GROUP_EVENTS));
            self.commit_group(&mut group);
        }
    }

    fn commit_group(&mut self, group: &mut Vec<Request>) {
        let ingest_time = rules::truncate_to_micros(Utc::now());
        let outcomes = match self.write_group(group, rules::to_micros(ingest_time)) {
            Ok(outcomes) => outcomes,
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.stale = true;
                let message = e.to_string();
                for request in group.drain(..) {
                    let _ = request.reply.send(Err(AppendError::Storage(message.clone())));
                }
                return;
            }
        };

        let appended_any = outcomes.iter().any(|o| o.appended);
        if appended_any {
            self.call_hook(group, &outcomes, ingest_time);
            self.head.send_replace(self.next_position - 1);
        }
        for (request, outcome) in group.drain(..).zip(outcomes) {
            // The caller may have gone away (a cancelled future); its append stands regardless.
            let _ = request.reply.send(outcome.result);
        }
    }

    /// The transaction of one group. An `Err` means the group failed as a whole.
    fn write_group(&mut self, group: &[Request], ingest_time: i64) -> rusqlite::Result<Vec<Outcome>> {
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let dv = data_version(&self.conn)?;
        if self.stale || dv != self.data_version {
            self.versions.clear();
            self.cached_streams = 0;
            self.next_position = query_head(&self.conn)? + 1;
            self.data_version = dv;
            self.stale = false;
        }
        let mut outcomes = Vec::with_capacity(group.len());
        for request in group {
            outcomes.push(self.apply(request, ingest_time)?);
        }
        if outcomes.iter().any(|o| o.appended) {
            // The one fsync of the group happens here.
            self.conn.prepare_cached("COMMIT")?.execute([])?;
        } else {
            self.conn.prepare_cached("ROLLBACK")?.execute([])?;
        }
        Ok(outcomes)
    }

    /// Validates and inserts one request inside the group's transaction. A rejected request
    /// leaves no row behind and consumes no position.
    fn apply(&mut self, request: &Request, ingest_time: i64) -> rusqlite::Result<Outcome> {
        let actual = self.version_of(&request.tenant, &request.stream)?;
        if !request.expected.admits(actual) {
            // A replay wins over a stale expected version, so the ids are checked first.
            let result = match self.classify(request)? {
                Some(result) => result,
                None => Err(rules::conflict(&request.stream, request.expected, actual)),
            };
            return Ok(Outcome { result, appended: false });
        }

        let first_position = self.next_position;
        match self.insert(request, actual, first_position, ingest_time) {
            Ok(()) => {
                let n = request.events.len() as u64;
                self.next_position += n;
                if let Some(v) = self.versions.get_mut(&request.tenant).and_then(|s| s.get_mut(&request.stream)) {
                    *v = actual + n;
                }
                let result = AppendResult {
                    first_version: actual + 1,
                    last_version: actual + n,
                    position: first_position + n - 1,
                };
                Ok(Outcome { result: Ok(result), appended: true })
            }
            // Ids are checked by the UNIQUE index rather than a lookup per event: the hot path
            // does no SELECT, and only a clash pays for classifying the batch.
            Err(e) if is_constraint_violation(&e) => {
                self.conn.prepare_cached(UNDO_FROM)?.execute([to_i64(first_position)])?;
                match self.classify(request)? {
                    Some(result) => Ok(Outcome { result, appended: false }),
                    // No stored id, so the clash was on a version or a position: the caches are
                    // wrong. Fail the group; the caches are reloaded.
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn insert(&self, request: &Request, actual: u64, first_position: u64, ingest_time: i64) -> rusqlite::Result<()> {
        for (i, p) in request.events.iter().enumerate() {
            let row = RowAt {
                position: first_position + i as u64,
                version: actual + 1 + i as u64,
                tenant: &request.tenant,
                stream: &request.stream,
                ingest_time,
            };
            insert_row(&self.conn, &row, &p.event, &p.data, &p.metadata)?;
        }
        Ok(())
    }

    /// The stream's current version, from the cache or (first touch) the index.
    fn version_of(&mut self, tenant: &str, stream: &str) -> rusqlite::Result<u64> {
        if let Some(v) = self.versions.get(tenant).and_then(|s| s.get(stream)) {
            return Ok(*v);
        }
        let v = query_stream_version(&self.conn, tenant, stream)?;
        if self.cached_streams >= MAX_CACHED_STREAMS {
            self.versions.clear();
            self.cached_streams = 0;
        }
        self.versions.entry(tenant.to_string()).or_default().insert(stream.to_string(), v);
        self.cached_streams += 1;
        Ok(v)
    }

    /// Looks every id of the request up (the slow path, after a conflict or an id clash).
    fn classify(&self, request: &Request) -> rusqlite::Result<Option<Result<AppendResult, AppendError>>> {
        let mut stmt = self.conn.prepare_cached(FIND_ID)?;
        let ids: Vec<Uuid> = request.events.iter().map(|p| p.event.id).collect();
        let mut rows = Vec::with_capacity(ids.len());
        for id in &ids {
            let mut found = stmt.query(params![&request.tenant, &id.as_bytes()[..]])?;
            rows.push(match found.next()? {
                Some(r) => {
                    Some((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
                }
                None => None,
            });
        }
        let found: Vec<Option<StoredAt<'_>>> = rows
            .iter()
            .map(|r| {
                r.as_ref().map(|(tenant, stream, version, position)| StoredAt {
                    tenant,
                    stream,
                    version: *version as u64,
                    position: *position as u64,
                })
            })
            .collect();
        Ok(rules::classify_ids(&request.tenant, &request.stream, &ids, &found))
    }

    /// Hands the group's committed events, in position order, to the commit hook.
    fn call_hook(&self, group: &[Request], outcomes: &[Outcome], ingest_time: DateTime<Utc>) {
        let appended = group.iter().zip(outcomes).filter_map(|(request, outcome)| match outcome {
            Outcome { appended: true, result: Ok(result) } => {
                let events = request.events.iter().map(|p| &p.event).collect();
                Some((request.tenant.as_str(), request.stream.as_str(), *result, events))
            }
            _ => None,
        });
        crate::event_store::call_hook(&self.hook, appended, ingest_time);
    }
}

/// Where an event row goes and what the store assigns it.
struct RowAt<'a> {
    position: u64,
    version: u64,
    tenant: &'a str,
    stream: &'a str,
    ingest_time: i64,
}

/// Inserts one event (its payload and metadata already as JSON text).
fn insert_row(conn: &Connection, at: &RowAt<'_>, e: &NewEvent, data: &str, metadata: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(INSERT)?.execute(params![
        to_i64(at.position),
        &e.id.as_bytes()[..],
        at.tenant,
        at.stream,
        to_i64(at.version),
        e.event_type,
        e.schema_version,
        rules::to_micros(e.event_time),
        at.ingest_time,
        e.source,
        e.causation_id.as_ref().map(|u| &u.as_bytes()[..]),
        e.correlation_id.as_ref().map(|u| &u.as_bytes()[..]),
        e.actor,
        data,
        metadata,
    ])?;
    Ok(())
}

fn configure_writer(conn: &Connection, path: &Path) -> Result<(), StoreOpenError> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|source| StoreOpenError::Sqlite { path: path.to_path_buf(), source })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreOpenError::NoWal { path: path.to_path_buf(), mode });
    }
    configure_wal_writer(conn).map_err(|source| StoreOpenError::Sqlite { path: path.to_path_buf(), source })
}

fn configure_wal_writer(conn: &Connection) -> rusqlite::Result<()> {
    // FULL: every commit fsyncs the WAL, so an acknowledged append survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -64 * 1024)?; // KiB: 64 MiB of page cache
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn migrate(conn: &Connection, path: &Path) -> Result<(), StoreOpenError> {
    let sqlite_err = |source| StoreOpenError::Sqlite { path: path.to_path_buf(), source };
    let user_version = |c: &Connection| c.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    // Each step: from layout `from` (0: an empty database) by running `sql`, in one write
    // transaction; the version is read again under the write lock, as another process may have
    // taken the step meanwhile.
    for (from, sql) in [(0, SCHEMA), (1, MIGRATE_1_TO_2)] {
        if user_version(conn).map_err(sqlite_err)? != from {
            continue;
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sqlite_err)?;
        let stepped = match user_version(conn) {
            Ok(v) if v == from => conn.execute_batch(sql),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        match stepped {
            Ok(()) => conn.execute_batch("COMMIT").map_err(sqlite_err)?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(sqlite_err(e));
            }
        }
    }
    match user_version(conn).map_err(sqlite_err)? {
        FORMAT_VERSION => Ok(()),
        found => Err(StoreOpenError::UnsupportedFormat { path: path.to_path_buf(), found }),
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(16);
    Ok(conn)
}

fn query_head(conn: &Connection) -> rusqlite::Result<u64> {
    let head: Option<i64> = conn.prepare_cached(HEAD)?.query_row([], |r| r.get(0))?;
    Ok(head.unwrap_or(0) as u64)
}

fn query_stream_version(conn: &Connection, tenant: &str, stream: &str) -> rusqlite::Result<u64> {
    let v: Option<i64> = conn.prepare_cached(STREAM_VERSION)?.query_row([tenant, stream], |r| r.get(0))?;
    Ok(v.unwrap_or(0) as u64)
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))
}

fn is_constraint_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation)
}

/// Positions, versions and limits are u64 in the API and INTEGER (i64) in SQLite.
fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read_error(e: rusqlite::Error) -> ReadError {
    ReadError::Storage(e.to_string())
}

fn writer_gone() -> AppendError {
    AppendError::Storage("the store's writer has stopped".into())
}

/// One row of `columns!()` as an envelope.
fn envelope(row: &Row<'_>) -> rusqlite::Result<EventEnvelope> {
    // `decode` also upcasts; the read path's `upcast_on_read` then finds nothing left to do.
    raw_envelope(row)?.decode().map_err(|e| bad_column(13, Type::Text, e))
}

fn raw_envelope(row: &Row<'_>) -> rusqlite::Result<RawEnvelope> {
    Ok(RawEnvelope {
        position: row.get::<_, i64>(0)? as u64,
        id: uuid_at(row, 1)?,
        tenant: row.get(2)?,
        stream: row.get(3)?,
        version: row.get::<_, i64>(4)? as u64,
        event_type: row.get(5)?,
        schema_version: row.get(6)?,
        event_time: time_at(row, 7)?,
        ingest_time: time_at(row, 8)?,
        source: row.get(9)?,
        causation_id: optional_uuid_at(row, 10)?,
        correlation_id: optional_uuid_at(row, 11)?,
        actor: row.get(12)?,
        data: row.get(13)?,
        metadata: row.get(14)?,
    })
}

fn bad_column(i: usize, ty: Type, why: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, why.into())
}

fn uuid_at(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    Uuid::from_slice(row.get_ref(i)?.as_blob()?).map_err(|e| bad_column(i, Type::Blob, e))
}

fn optional_uuid_at(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<Uuid>> {
    match row.get_ref(i)? {
        ValueRef::Null => Ok(None),
        _ => uuid_at(row, i).map(Some),
    }
}

fn time_at(row: &Row<'_>, i: usize) -> rusqlite::Result<chrono::DateTime<Utc>> {
    let micros: i64 = row.get(i)?;
    rules::from_micros(micros).ok_or_else(|| bad_column(i, Type::Integer, "timestamp out of range"))
}
