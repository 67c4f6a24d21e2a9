//! `LogStore`: an embedded backend that is one append-only file (`events.log`) plus in-memory
//! indexes rebuilt from it on open. A commit writes only the group's event bytes and fsyncs
//! once, so its cost does not grow with the number of streams the group touches (SQLite's
//! random per-stream index pages are what cap `SqliteStore`; see ADR 0001).
//!
//! Writes use the same group commit as [`SqliteStore`](crate::sqlite::SqliteStore): one writer
//! thread, requests over a channel with a oneshot reply. Each record is encoded on the caller's
//! task; the writer validates a group against the in-memory indexes, copies the accepted records
//! into one checksummed *frame* with a commit marker, writes it with one `pwrite` into space it
//! has zeroed ahead of time, calls `fdatasync` once, and only then publishes the new head to
//! readers. Reads take offsets from the index and `pread` the file directly, so they never wait
//! for the writer's fsync. docs/storage.md describes the format, the protocol and the recovery.

use crate::expire::{ExpireError, Expired, Expiry, EXPIRED_TYPE};
use crate::rules::{self, StoredAt};
use crate::event_store::{AppendError, AppendResult, CommitHook, EventStore, ReadError};
use async_trait::async_trait;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent, RawEnvelope};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

/// The log file inside the data folder.
pub const LOG_FILE: &str = "events.log";
/// The on-disk format this build writes and reads; see docs/storage.md.
pub const FORMAT_VERSION: u32 = 1;

/// File header: magic, format version (u32 LE), 4 reserved zero bytes.
const FILE_MAGIC: [u8; 8] = *b"CHRONLOG";
const FILE_HEADER_LEN: u64 = 16;
/// Frame header: magic, event count (u32), first position (u64), body length (u64), reserved
/// (u32), CRC32 of the preceding 28 bytes. 0xFF never occurs in UTF-8, so JSON payloads cannot
/// contain a frame magic.
const FRAME_MAGIC: [u8; 4] = [0xFF, b'G', b'R', b'P'];
const FRAME_HEADER_LEN: usize = 32;
/// Commit marker after a frame's records: magic, then the CRC32 of the frame header followed by
/// every record's CRC. A group counts only if this marker matches.
const TRAILER_MAGIC: [u8; 4] = [0xFF, b'E', b'N', b'D'];
const TRAILER_LEN: usize = 8;
/// Each record: payload length (u32), CRC32 of the payload (u32), payload.
const RECORD_HEADER_LEN: usize = 8;

/// Group limits, as in `SqliteStore`: enough to amortise one fsync, small enough to keep a
/// group's latency in the low milliseconds.
const MAX_GROUP_REQUESTS: usize = 1024;
const MAX_GROUP_EVENTS: usize = 10_000;
const QUEUE_CAPACITY: usize = 4096;
/// Reads coalesce records into one `pread` while the hole between them is at most this…
const MAX_READ_GAP: u64 = 16 * 1024;
/// …and the read stays below this (a single larger record is still read whole).
const MAX_READ_SPAN: u64 = 2 * 1024 * 1024;
/// The writer keeps this much zeroed space allocated past the end of the log (see
/// `Writer::write_frame`); a clean shutdown trims it.
const PREALLOCATE: u64 = 4 * 1024 * 1024;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
/// The writer's encode buffer is dropped after a group bigger than this, so one huge batch
/// does not pin its memory.
const MAX_KEPT_BUFFER: usize = 16 * 1024 * 1024;

/// Payload flags.
const HAS_CAUSATION: u8 = 1;
const HAS_CORRELATION: u8 = 2;
const HAS_ACTOR: u8 = 4;
/// Fixed offsets in a payload. The writer fills in position, version and ingest time; time-travel
/// reads filter on event time without decoding the rest.
const POSITION_AT: usize = 0;
const VERSION_AT: usize = 24;
const EVENT_TIME_AT: usize = 32;
const INGEST_TIME_AT: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum LogOpenError {
    #[error("cannot open the event log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a Chronicle event log (bad header)")]
    NotALog { path: PathBuf },
    #[error("{path} is in log format {found}, this build knows format {FORMAT_VERSION}: upgrade Chronicle")]
    UnsupportedFormat { path: PathBuf, found: u32 },
    /// Damage before the end of the log: acknowledged events would be lost by skipping it, so
    /// the store refuses to open (restore from a backup, or truncate at `offset` by hand and
    /// accept losing everything after it).
    #[error("{path} is corrupt at byte {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("cannot start the writer thread: {0}")]
    Thread(std::io::Error),
}

/// The append-only log store. See the module docs and docs/storage.md.
pub struct LogStore {
    shared: Arc<Shared>,
    /// `None` only while dropping: closing the channel is what stops the writer.
    requests: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
    head: Arc<watch::Sender<u64>>,
    hook: Arc<RwLock<Option<CommitHook>>>,
    truncated: u64,
}

/// What the writer and the readers share: the file (one handle; `pread`/`pwrite` need no
/// locking) and the index.
struct Shared {
    path: PathBuf,
    file: LogFile,
    index: RwLock<Index>,
}

/// Failures to inject into a log's writes, for the store's tests of its failure paths (in
/// redb's manner: the file layer under the store fails on purpose). Each flag holds until it
/// is cleared; a store opened with [`LogStore::open`] has none.
#[derive(Debug, Default)]
pub struct Faults {
    /// Writes fail (`ENOSPC`).
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// Writes put down the first half of their bytes, then fail (a torn write).
    pub tear_writes: std::sync::atomic::AtomicBool,
    /// A group's fsync fails (`EIO`).
    pub fail_syncs: std::sync::atomic::AtomicBool,
    /// Cutting the file back (`set_len`, and the `sync_all` after it) fails.
    pub fail_cuts: std::sync::atomic::AtomicBool,
}

/// The log's file, with the failures of [`Faults`] when a test asks for them. Reads go to the
/// file as they are.
struct LogFile {
    file: File,
    faults: Option<Arc<Faults>>,
}

impl std::ops::Deref for LogFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl LogFile {
    fn fault(&self, which: impl Fn(&Faults) -> &std::sync::atomic::AtomicBool) -> bool {
        self.faults.as_ref().is_some_and(|f| which(f).load(std::sync::atomic::Ordering::SeqCst))
    }

    fn write_all_at(&self, buf: &[u8], at: u64) -> std::io::Result<()> {
        if self.fault(|f| &f.tear_writes) {
            self.file.write_all_at(&buf[..buf.len() / 2], at)?;
            return Err(std::io::Error::other("injected: torn write"));
        }
        if self.fault(|f| &f.fail_writes) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.file.write_all_at(buf, at)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        if self.fault(|f| &f.fail_syncs) {
            return Err(std::io::Error::from_raw_os_error(5)); // EIO
        }
        self.file.sync_data()
    }

    fn sync_all(&self) -> std::io::Result<()> {
        if self.fault(|f| &f.fail_cuts) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        self.file.sync_all()
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        if self.fault(|f| &f.fail_cuts) {
            return Err(std::io::Error::other("injected: cutting the file failed"));
        }
        self.file.set_len(len)
    }
}

impl Shared {
    fn read_index(&self) -> RwLockReadGuard<'_, Index> {
        // The writer mutates the index only in steps that leave it consistent, so a poisoned
        // lock still guards a usable index.
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_index(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the records at `locs` (in file order), coalescing neighbours into large `pread`s,
    /// checks each record's CRC and position, and hands its payload to `f`.
    fn read_records(
        &self,
        locs: &[Loc],
        mut f: impl FnMut(u64, &[u8]) -> Result<(), ReadError>,
    ) -> Result<(), ReadError> {
        let mut buf = Vec::new();
        let mut i = 0;
        while i < locs.len() {
            let span_start = locs[i].start;
            let mut span_end = locs[i].end;
            let mut j = i + 1;
            while j < locs.len()
                && locs[j].start - span_end <= MAX_READ_GAP
                && locs[j].end - span_start <= MAX_READ_SPAN
            {
                span_end = locs[j].end;
                j += 1;
            }
            let len = (span_end - span_start) as usize;
            if buf.len() < len {
                buf.resize(len, 0);
            }
            self
                .file
                .read_exact_at(&mut buf[..len], span_start)
                .map_err(|e| self.read_error(locs[i].position, &e.to_string()))?;
            for loc in &locs[i..j] {
                let rel = (loc.start - span_start) as usize;
                let lim = (loc.end - span_start) as usize;
                let payload =
                    checked_payload(&buf[rel..lim], loc.position).map_err(|why| self.read_error(loc.position, why))?;
                f(loc.position, payload)?;
            }
            i = j;
        }
        Ok(())
    }

    fn read_error(&self, position: u64, why: &str) -> ReadError {
        ReadError::Storage(format!(
            "{}: cannot read the event at position {position}: {why}",
            self.path.display()
        ))
    }
}

/// The in-memory indexes. Positions `1..=head` are committed; during a group the writer adds the
/// group's ids and stream positions *tentatively* (so later requests of the same group see
/// them), and readers bound every lookup by `head`, so they never see an uncommitted event.
#[derive(Default)]
struct Index {
    /// The last durable position; readers see nothing beyond it.
    head: u64,
    /// The file length up to the end of the last durable frame.
    end: u64,
    /// File offset of each committed event's record: position `p` at `[p - 1]`.
    offsets: Vec<u64>,
    /// Stream slot of each event (including the tentative ones of the group being written).
    stream_of: Vec<u32>,
    /// Interned streams, by slot.
    streams: Vec<StreamEntry>,
    tenants: Vec<Arc<str>>,
    tenant_ids: FastMap<Arc<str>, u32>,
    /// Per tenant (by tenant id): stream name → slot.
    slots: Vec<FastMap<Arc<str>, u32>>,
    /// (Tenant id, event id) → position: idempotency, and the uniqueness of ids within a
    /// tenant (an id stored in another tenant is neither a duplicate nor a clash).
    ids: FastMap<(u32, Uuid), u64>,
}

/// The index's maps: looked up several times per event in the commit path. foldhash is seeded
/// per process (no fixed collisions to aim at) and several times faster than SipHash here.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

struct StreamEntry {
    tenant: u32,
    name: Arc<str>,
    /// The stream's positions in version order (version `v` at `[v - 1]`).
    positions: Vec<u64>,
}

impl Index {
    /// Where `id` is stored in `tenant` (committed or tentative).
    fn id_position(&self, tenant: &str, id: &Uuid) -> Option<u64> {
        let t = *self.tenant_ids.get(tenant)?;
        self.ids.get(&(t, *id)).copied()
    }

    fn slot(&self, tenant: &str, stream: &str) -> Option<u32> {
        let t = *self.tenant_ids.get(tenant)?;
        self.slots[t as usize].get(stream).copied()
    }

    fn intern(&mut self, tenant: &str, stream: &str) -> u32 {
        let t = match self.tenant_ids.get(tenant) {
            Some(&t) => t,
            None => {
                let t = self.tenants.len() as u32;
                let name: Arc<str> = tenant.into();
                self.tenants.push(name.clone());
                self.tenant_ids.insert(name, t);
                self.slots.push(FastMap::default());
                t
            }
        };
        let slot = self.streams.len() as u32;
        let name: Arc<str> = stream.into();
        self.streams.push(StreamEntry { tenant: t, name: name.clone(), positions: Vec::new() });
        self.slots[t as usize].insert(name, slot);
        slot
    }

    /// The committed part of a stream's positions.
    fn committed(&self, slot: u32) -> &[u64] {
        let positions = &self.streams[slot as usize].positions;
        let head = self.head;
        match positions.last() {
            Some(&last) if last > head => &positions[..positions.partition_point(|&p| p <= head)],
            _ => positions,
        }
    }

    /// Where an event (committed or tentative) is stored, for the idempotency rules.
    fn stored_at(&self, position: u64) -> StoredAt<'_> {
        let entry = &self.streams[self.stream_of[(position - 1) as usize] as usize];
        let version = entry.positions.binary_search(&position).map_or(0, |i| i as u64 + 1);
        StoredAt { tenant: &self.tenants[entry.tenant as usize], stream: &entry.name, version, position }
    }

    /// The byte range that holds the record of committed position `p`: from its start to the
    /// next record's start (or the end of the log), so a read never crosses the head.
    fn locate(&self, position: u64) -> Loc {
        let i = (position - 1) as usize;
        let end = if position < self.head { self.offsets[i + 1] } else { self.end };
        Loc { position, start: self.offsets[i], end }
    }
}

/// A committed record's place in the file.
struct Loc {
    position: u64,
    start: u64,
    /// The record ends at or before this offset.
    end: u64,
}

impl LogStore {
    /// Opens (creating if needed) the log in `dir`, i.e. `dir/events.log`: checks the header,
    /// scans every frame (checksums, framing, positions, versions), truncates a torn tail and
    /// rebuilds the indexes.
    pub fn open(dir: &Path) -> Result<LogStore, LogOpenError> {
        LogStore::open_with(dir, None)
    }

    /// [`open`](Self::open) with failures injected into the log's writes (for tests of the
    /// failure paths).
    pub fn open_with_faults(dir: &Path, faults: Arc<Faults>) -> Result<LogStore, LogOpenError> {
        LogStore::open_with(dir, Some(faults))
    }

    fn open_with(dir: &Path, faults: Option<Arc<Faults>>) -> Result<LogStore, LogOpenError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LogOpenError::Io { path, source }
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            if let Some(parent) = dir.parent() {
                // Make the new folder's own directory entry durable.
                sync_dir(parent).map_err(io_err(parent))?;
            }
        }
        let path = dir.join(LOG_FILE);
        if !path.exists() {
            create_log(dir, &path).map_err(io_err(&path))?;
        }
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io_err(&path))?;
        let (index, truncated) = recover(&file, &path)?;

        let head = Arc::new(watch::Sender::new(index.head));
        let hook: Arc<RwLock<Option<CommitHook>>> = Arc::new(RwLock::new(None));
        let shared = Arc::new(Shared { path, file: LogFile { file, faults }, index: RwLock::new(index) });
        let writer = Writer {
            shared: shared.clone(),
            frame: FrameBuf::default(),
            failed: None,
            head: head.clone(),
            hook: hook.clone(),
            allocated: shared.read_index().end,
        };
        let (requests, inbox) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("chronicle-log-writer".into())
            .spawn(move || writer.run(inbox))
            .map_err(LogOpenError::Thread)?;
        Ok(LogStore { shared, requests: Some(requests), writer: Some(writer), head, hook, truncated })
    }

    /// Replaces the events at `expiry.positions` with tombstones and appends `expiry.records`,
    /// offline: no `LogStore` may be open on `dir` (the caller holds the folder's lock). See
    /// [`crate::expire`].
    ///
    /// The log is copied into `events.log.compact` with the tombstones in place (in frames of
    /// its own size, every event already committed), the records follow as one last frame, the
    /// copy is synced and then renamed over the log: a crash leaves the old log or the new
    /// one, never a mix. The expired events' bytes leave with the old file.
    pub fn expire(dir: &Path, expiry: &Expiry<'_>) -> Result<Expired, ExpireError> {
        let path = dir.join(LOG_FILE);
        let tmp = dir.join(format!("{LOG_FILE}.compact"));
        let failed = |reason: String| ExpireError::Failed { path: path.clone(), reason };
        crate::expire::check_positions(expiry.positions)?;
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| failed(e.to_string()))?;
        let (ix, _) = recover(&file, &path).map_err(|e| failed(e.to_string()))?;
        if let Some(&last) = expiry.positions.last() {
            if last > ix.head {
                return Err(ExpireError::Invalid(format!("position {last} is beyond the head {}", ix.head)));
            }
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((_, _, e)) = expiry
            .records
            .iter()
            .find(|(tenant, _, e)| ix.id_position(tenant, &e.id).is_some() || !seen.insert((tenant.clone(), e.id)))
        {
            return Err(ExpireError::Invalid(format!("the record's id {} is already stored", e.id)));
        }
        let bytes_before = ix.end;
        let shared = Shared { path: path.clone(), file: LogFile { file, faults: None }, index: RwLock::new(ix) };
        let written = copy_expiring(&shared, &tmp, expiry).map_err(|e| failed(e.to_string()));
        let (expired, head, bytes_after) = match written {
            Ok(done) => done,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        std::fs::rename(&tmp, &path).and_then(|()| sync_dir(dir)).map_err(|e| failed(e.to_string()))?;
        Ok(Expired { expired, head, bytes_before, bytes_after })
    }

    /// How many bytes of torn tail `open` cut off (0 after a clean shutdown, and after a crash
    /// between commits; the zeroed space the writer keeps ahead of the log is not counted). A
    /// non-zero value means the last run crashed during a commit; the cut group was never
    /// acknowledged.
    pub fn truncated_on_open(&self) -> u64 {
        self.truncated
    }

    /// The committed length of the log in bytes. While the store is open the file is longer:
    /// the writer keeps zeroed space allocated past the end.
    pub fn committed_len(&self) -> u64 {
        self.shared.read_index().end
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn locate_range(&self, after: u64, limit: usize) -> Vec<Loc> {
        let ix = self.shared.read_index();
        if limit == 0 || after >= ix.head {
            return Vec::new();
        }
        let last = ix.head.min(after.saturating_add(limit as u64));
        (after + 1..=last).map(|p| ix.locate(p)).collect()
    }

    fn locate_stream(&self, tenant: &str, stream: &str, from_version: u64, limit: usize) -> Vec<Loc> {
        let ix = self.shared.read_index();
        let Some(slot) = ix.slot(tenant, stream) else {
            return Vec::new();
        };
        let positions = ix.committed(slot);
        let from = (from_version.saturating_sub(1) as usize).min(positions.len());
        positions[from..].iter().take(limit).map(|&p| ix.locate(p)).collect()
    }

    fn read_raws(&self, locs: &[Loc]) -> Result<Vec<RawEnvelope>, ReadError> {
        let mut out = Vec::with_capacity(locs.len());
        self.shared.read_records(locs, |position, payload| {
            out.push(to_raw(payload).map_err(|why| self.shared.read_error(position, why))?);
            Ok(())
        })?;
        Ok(out)
    }

    fn read_envelopes(&self, locs: &[Loc]) -> Result<Vec<EventEnvelope>, ReadError> {
        let mut out = Vec::with_capacity(locs.len());
        self.shared.read_records(locs, |position, payload| {
            let e = to_envelope(payload).map_err(|why| self.shared.read_error(position, why))?;
            out.push(rules::upcast_on_read(e));
            Ok(())
        })?;
        Ok(out)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer once it has answered everything queued.
        self.requests.take();
        rules::join_writer(self.writer.take());
    }
}

#[async_trait]
impl EventStore for LogStore {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        rules::check_batch(&events)?;
        // Each record is encoded here, on the caller's task (JSON included), so the one writer
        // thread only fills in position, version and ingest time, copies and checksums.
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            let payload = encode_payload(tenant, stream, &event);
            if payload.len() > u32::MAX as usize {
                return Err(AppendError::Invalid(format!(
                    "event {} is larger than a log record can hold (4 GiB)",
                    event.id
                )));
            }
            prepared.push(Prepared { event, payload });
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            tenant: tenant.to_string(),
            stream: stream.to_string(),
            expected,
            events: prepared,
            reply: Some(reply),
        };
        let requests = self.requests.as_ref().ok_or_else(writer_gone)?;
        // If this future is dropped after the send, the append still happens: cancelling a
        // request already handed to the writer is not possible.
        requests.send(request).await.map_err(|_| writer_gone())?;
        let (result, request) = answer.await.map_err(|_| writer_gone())?;
        // Freed here, on the thread that allocated it (see `answer`).
        drop(request);
        result
    }

    async fn read_stream(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        let locs = self.locate_stream(tenant, stream, from_version, limit);
        self.read_envelopes(&locs)
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError> {
        let locs = self.locate_range(after, limit);
        self.read_envelopes(&locs)
    }

    async fn read_all_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEnvelope>, ReadError> {
        self.read_raws(&self.locate_range(after, limit))
    }

    async fn read_stream_raw(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        limit: usize,
    ) -> Result<Vec<RawEnvelope>, ReadError> {
        self.read_raws(&self.locate_stream(tenant, stream, from_version, limit))
    }

    /// Reads the stream's records but decodes only those whose event time (a fixed field at the
    /// front of the payload) is at or before `until`.
    async fn read_stream_until(
        &self,
        tenant: &str,
        stream: &str,
        from_version: u64,
        until: DateTime<Utc>,
    ) -> Result<Vec<EventEnvelope>, ReadError> {
        let locs = self.locate_stream(tenant, stream, from_version, usize::MAX);
        let until = rules::to_micros(until);
        let mut out = Vec::new();
        self.shared.read_records(&locs, |position, payload| {
            let time = payload
                .get(EVENT_TIME_AT..EVENT_TIME_AT + 8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| self.shared.read_error(position, "record too short"))?;
            if time <= until {
                let e = to_envelope(payload).map_err(|why| self.shared.read_error(position, why))?;
                out.push(rules::upcast_on_read(e));
            }
            Ok(())
        })?;
        Ok(out)
    }

    async fn head(&self) -> Result<u64, ReadError> {
        Ok(self.shared.read_index().head)
    }

    async fn stored(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<bool>, ReadError> {
        let ix = self.shared.read_index();
        // Ids of a group still being committed are in the index tentatively, above the head.
        Ok(ids.iter().map(|id| ix.id_position(tenant, id).is_some_and(|p| p <= ix.head)).collect())
    }

    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, ReadError> {
        let ix = self.shared.read_index();
        Ok(ix.slot(tenant, stream).map_or(0, |slot| ix.committed(slot).len() as u64))
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
    /// Taken when the request is answered; the answer carries the request back.
    reply: Option<oneshot::Sender<Answer>>,
}

type Answer = (Result<AppendResult, AppendError>, Request);

struct Prepared {
    /// Kept for the commit hook, which gets the event itself rather than a re-parse.
    event: NewEvent,
    /// The encoded record payload, with position, version and ingest time still zero.
    payload: Vec<u8>,
}

/// Sends the writer's answer, with the request itself: the caller drops it on its own thread.
/// Freeing hundreds of JSON nodes per group on the writer thread, with the callers' threads
/// allocating from the same malloc arenas, made lock contention in `free` the writer's main
/// cost (seen with perf); handing the memory back keeps the serial part of a commit short.
fn answer(mut request: Request, result: Result<AppendResult, AppendError>) {
    if let Some(reply) = request.reply.take() {
        // The caller may have gone away (a cancelled future); its append stands regardless.
        let _ = reply.send((result, request));
    }
}

/// What the writer decided for one request of a group.
struct Outcome {
    result: Result<AppendResult, AppendError>,
    /// Whether the request's events are in this group's frame (not a replay or rejection).
    appended: bool,
}

/// The writer thread: the only code that appends to the file or changes the index.
struct Writer {
    shared: Arc<Shared>,
    /// The frame being encoded, reused between groups.
    frame: FrameBuf,
    /// Set when a failed group could not be cut off the file again: the file's tail is then
    /// unknown, so no further group may be written after it.
    failed: Option<String>,
    head: Arc<watch::Sender<u64>>,
    hook: Arc<RwLock<Option<CommitHook>>>,
    /// The file's length: the log, then zeroed space up to here.
    allocated: u64,
}

impl Writer {
    /// Forms groups and commits them until the store is dropped: a group is the first waiting
    /// request plus everything queued behind it, up to the group limits.
    fn run(mut self, mut inbox: mpsc::Receiver<Request>) {
        let mut group = Vec::with_capacity(MAX_GROUP_REQUESTS);
        while let Some(first) = inbox.blocking_recv() {
            rules::fill_group(&mut group, first, &mut inbox, |r| r.events.len(), (MAX_GROUP_REQUESTS, MAX_GROUP_EVENTS));
            let results = self.commit_group(&mut group);
            for (request, result) in group.drain(..).zip(results) {
                answer(request, result);
            }
        }
        self.trim();
    }

    /// On shutdown, gives the zeroed space back, so a cleanly closed log ends with its last
    /// frame. (After a crash the next open cuts it instead.)
    fn trim(&mut self) {
        let end = self.shared.read_index().end;
        if self.failed.is_none() && self.allocated > end {
            let trimmed = self.shared.file.set_len(end).and_then(|()| self.shared.file.sync_all());
            if trimmed.is_ok() {
                self.allocated = end;
            }
        }
    }

    /// Validates, writes and publishes one group; returns each request's answer. A write or
    /// fsync failure answers every request of the group with `Storage`, including replays and
    /// rejections, which were judged against events that are now gone.
    fn commit_group(&mut self, group: &mut [Request]) -> Vec<Result<AppendResult, AppendError>> {
        if let Some(why) = &self.failed {
            let message = format!("the log stopped accepting writes: {why}");
            return storage_errors(&message, group.len());
        }
        let ingest_time = rules::truncate_to_micros(Utc::now());

        // Validate under the write lock, adding accepted events to the index tentatively.
        let (outcomes, first_position, base_end) = {
            let mut ix = self.shared.write_index();
            let first_position = ix.head + 1;
            let mut next = first_position;
            let outcomes: Vec<Outcome> = group
                .iter()
                .map(|request| {
                    let outcome = validate(&mut ix, request, next);
                    if outcome.appended {
                        next += request.events.len() as u64;
                    }
                    outcome
                })
                .collect();
            (outcomes, first_position, ix.end)
        };
        if !outcomes.iter().any(|o| o.appended) {
            // Nothing to write (replays and rejections only): no disk access at all.
            return outcomes.into_iter().map(|o| o.result).collect();
        }

        let written = self.write_frame(group, &outcomes, first_position, base_end, rules::to_micros(ingest_time));
        match written {
            Ok((offsets, end)) => {
                let head = {
                    let mut ix = self.shared.write_index();
                    ix.offsets.extend_from_slice(&offsets);
                    ix.head += offsets.len() as u64;
                    ix.end = end;
                    ix.head
                };
                if self.frame.buf.capacity() > MAX_KEPT_BUFFER {
                    self.frame = FrameBuf::default();
                }
                self.call_hook(group, &outcomes, ingest_time);
                self.head.send_replace(head);
                outcomes.into_iter().map(|o| o.result).collect()
            }
            Err(e) => {
                let mut message = format!("writing the log failed: {e}");
                // Cut the group off again, so the file ends at the last durable frame.
                let cut = self.shared.file.set_len(base_end).and_then(|()| self.shared.file.sync_all());
                match cut {
                    Ok(()) => self.allocated = base_end,
                    Err(cut) => {
                        message = format!("{message}; removing the partial group failed too: {cut}");
                        self.failed = Some(message.clone());
                    }
                }
                rollback(&mut self.shared.write_index(), group, &outcomes);
                storage_errors(&message, group.len())
            }
        }
    }

    /// Encodes the group's accepted events as one frame, writes it at `base_end` and fsyncs.
    /// Returns the records' offsets and the new end of the log.
    fn write_frame(
        &mut self,
        group: &[Request],
        outcomes: &[Outcome],
        first_position: u64,
        base_end: u64,
        ingest_micros: i64,
    ) -> std::io::Result<(Vec<u64>, u64)> {
        let frame = &mut self.frame;
        frame.begin();
        let mut offsets = Vec::new();
        for (request, outcome) in group.iter().zip(outcomes) {
            let (true, Ok(result)) = (outcome.appended, &outcome.result) else {
                continue;
            };
            let first = result.position + 1 - request.events.len() as u64;
            for (i, p) in request.events.iter().enumerate() {
                let at = frame.push(&p.payload, |payload| {
                    fill_in(payload, first + i as u64, result.first_version + i as u64, ingest_micros)
                });
                offsets.push(base_end + at as u64);
            }
        }
        let buf = frame.finish(first_position);
        let end = base_end + buf.len() as u64;
        if end > self.allocated {
            // Zero the space ahead of the log now, once, so the next groups' fsyncs only
            // overwrite blocks that are already allocated and written: such a sync has no
            // block allocation or file size change to journal, and costs about half as much
            // as one that extends the file (measured on the project VM). The zeros are synced
            // with this group; recovery treats them as an empty tail.
            let allocated = end + PREALLOCATE;
            let mut at = end;
            while at < allocated {
                let n = ZEROS.len().min((allocated - at) as usize);
                self.shared.file.write_all_at(&ZEROS[..n], at)?;
                at += n as u64;
            }
            self.allocated = allocated;
        }
        self.shared.file.write_all_at(buf, base_end)?;
        // The group's one fsync.
        self.shared.file.sync_data()?;
        Ok((offsets, end))
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

/// Judges one request against the index (which already holds the earlier requests of the same
/// group). An accepted request's events enter the index tentatively, at `next…`; a rejected one
/// changes nothing and uses no position.
fn validate(ix: &mut Index, request: &Request, next: u64) -> Outcome {
    if request.events.iter().any(|p| ix.id_position(&request.tenant, &p.event.id).is_some()) {
        let ids: Vec<Uuid> = request.events.iter().map(|p| p.event.id).collect();
        let found: Vec<Option<StoredAt<'_>>> =
            ids.iter().map(|id| ix.id_position(&request.tenant, id).map(|position| ix.stored_at(position))).collect();
        if let Some(result) = rules::classify_ids(&request.tenant, &request.stream, &ids, &found) {
            return Outcome { result, appended: false };
        }
    }
    let slot = ix.slot(&request.tenant, &request.stream);
    let actual = slot.map_or(0, |s| ix.streams[s as usize].positions.len() as u64);
    if !request.expected.admits(actual) {
        return Outcome { result: Err(rules::conflict(&request.stream, request.expected, actual)), appended: false };
    }
    let slot = slot.unwrap_or_else(|| ix.intern(&request.tenant, &request.stream));
    let tenant = ix.streams[slot as usize].tenant;
    for (i, p) in request.events.iter().enumerate() {
        let position = next + i as u64;
        ix.ids.insert((tenant, p.event.id), position);
        ix.streams[slot as usize].positions.push(position);
        ix.stream_of.push(slot);
    }
    let n = request.events.len() as u64;
    Outcome {
        result: Ok(AppendResult { first_version: actual + 1, last_version: actual + n, position: next + n - 1 }),
        appended: true,
    }
}

/// Takes a failed group's tentative entries back out of the index.
fn rollback(ix: &mut Index, group: &[Request], outcomes: &[Outcome]) {
    for (request, outcome) in group.iter().zip(outcomes) {
        if outcome.appended {
            let Some(&tenant) = ix.tenant_ids.get(request.tenant.as_str()) else { continue };
            for p in &request.events {
                ix.ids.remove(&(tenant, p.event.id));
            }
        }
    }
    let head = ix.head;
    let mut touched = ix.stream_of.split_off(head as usize);
    touched.sort_unstable();
    touched.dedup();
    for slot in touched {
        let positions = &mut ix.streams[slot as usize].positions;
        positions.truncate(positions.partition_point(|&p| p <= head));
    }
}

fn storage_errors(message: &str, n: usize) -> Vec<Result<AppendResult, AppendError>> {
    (0..n).map(|_| Err(AppendError::Storage(message.to_string()))).collect()
}

fn writer_gone() -> AppendError {
    AppendError::Storage("the store's writer has stopped".into())
}

// ---------------------------------------------------------------------------------------------
// Creating and recovering the file.

/// Writes the compacted copy of the log to `tmp` and syncs it; returns how many events were
/// expired, the new head and the copy's length. See [`LogStore::expire`].
fn copy_expiring(shared: &Shared, tmp: &Path, expiry: &Expiry<'_>) -> std::io::Result<(u64, u64, u64)> {
    const FRAME_EVENTS: usize = MAX_GROUP_EVENTS;
    const FRAME_BYTES: usize = 4 << 20;
    let invalid = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let mut out = std::io::BufWriter::with_capacity(1 << 20, File::create(tmp)?);
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    header[..8].copy_from_slice(&FILE_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.write_all(&header)?;
    let mut len = FILE_HEADER_LEN;

    let (head, mut versions) = {
        let ix = shared.read_index();
        (ix.head, HashMap::<(String, String), u64>::new())
    };
    let mut frame = FrameBuf::default();
    frame.begin();
    let mut first = 1;
    let mut expiring = expiry.positions.iter().peekable();
    let mut expired = 0;
    let mut after = 0;
    while after < head {
        let locs: Vec<Loc> = {
            let ix = shared.read_index();
            (after + 1..=head.min(after + FRAME_EVENTS as u64)).map(|p| ix.locate(p)).collect()
        };
        let mut result = Ok(());
        shared
            .read_records(&locs, |position, payload| {
                if expiring.next_if_eq(&&position).is_none() {
                    frame.push(payload, |_| ());
                } else {
                    match tombstone(payload) {
                        Ok(Some(t)) => {
                            frame.push(&t, |_| ());
                            expired += 1;
                        }
                        Ok(None) => {
                            frame.push(payload, |_| ());
                        }
                        Err(why) => result = Err(invalid(why)),
                    }
                }
                Ok(())
            })
            .map_err(|e| invalid(&e.to_string()))?;
        result?;
        after = locs.last().map_or(head, |l| l.position);
        if frame.count as usize >= FRAME_EVENTS || frame.buf.len() >= FRAME_BYTES || after == head {
            let n = frame.count as u64;
            let bytes = frame.finish(first);
            out.write_all(bytes)?;
            len += bytes.len() as u64;
            first += n;
            frame.begin();
        }
    }

    // The record, as one more frame.
    let ingest = rules::to_micros(rules::truncate_to_micros(Utc::now()));
    let mut position = head;
    for (tenant, stream, event) in &expiry.records {
        let version = match versions.get_mut(&(tenant.clone(), stream.clone())) {
            Some(v) => v,
            None => {
                let ix = shared.read_index();
                let current = ix.slot(tenant, stream).map_or(0, |slot| ix.committed(slot).len() as u64);
                versions.entry((tenant.clone(), stream.clone())).or_insert(current)
            }
        };
        *version += 1;
        position += 1;
        let (v, p) = (*version, position);
        frame.push(&encode_payload(tenant, stream, event), |payload| fill_in(payload, p, v, ingest));
    }
    if frame.count > 0 {
        let bytes = frame.finish(head + 1);
        out.write_all(bytes)?;
        len += bytes.len() as u64;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((expired, position, len))
}

/// The tombstone of a stored payload (see [`crate::expire`]); `None` when it is one already.
fn tombstone(payload: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let r = decode(payload)?;
    let event_type = utf8(r.event_type)?;
    if event_type == EXPIRED_TYPE {
        return Ok(None);
    }
    let e = NewEvent::new(r.id, EXPIRED_TYPE, crate::expire::tombstone_data(event_type), time(r.event_time)?)
        .with_source(utf8(r.source)?);
    let mut out = encode_payload(utf8(r.tenant)?, utf8(r.stream)?, &e);
    fill_in(&mut out, r.position, r.version, r.ingest_time);
    Ok(Some(out))
}

fn create_log(dir: &Path, path: &Path) -> std::io::Result<()> {
    // Header first in a temp file, then an atomic rename: a crash can never leave a log with a
    // half-written header.
    let tmp = dir.join(format!("{LOG_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    header[..8].copy_from_slice(&FILE_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    f.write_all(&header)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Make a folder's entries durable (a file created or renamed in it): without it, a crash can
/// lose the new name even though the file's own bytes were synced.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Scans the whole log: returns the rebuilt index and how many torn bytes were cut off the end.
///
/// A frame that fails its checks is a *torn tail* (the unacknowledged last group of a crashed
/// run: cut off, fsync'd) when no intact frame header follows it; otherwise it is damage in the
/// middle of the log and `open` fails with `Corrupt`. Groups are written one at a time, each
/// after the previous one's fsync, so only the last frame can ever be torn.
fn recover(file: &File, path: &Path) -> Result<(Index, u64), LogOpenError> {
    let io_err = |source| LogOpenError::Io { path: path.to_path_buf(), source };
    let corrupt = |offset: u64, reason: String| LogOpenError::Corrupt { path: path.to_path_buf(), offset, reason };
    let len = file.metadata().map_err(io_err)?.len();
    let mut header = [0u8; FILE_HEADER_LEN as usize];
    if len < FILE_HEADER_LEN {
        return Err(LogOpenError::NotALog { path: path.to_path_buf() });
    }
    file.read_exact_at(&mut header, 0).map_err(io_err)?;
    if header[..8] != FILE_MAGIC {
        return Err(LogOpenError::NotALog { path: path.to_path_buf() });
    }
    let found = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if found != FORMAT_VERSION {
        return Err(LogOpenError::UnsupportedFormat { path: path.to_path_buf(), found });
    }

    let mut ix = Index::default();
    let mut reader = BufReader::with_capacity(4 << 20, file);
    reader.seek(SeekFrom::Start(FILE_HEADER_LEN)).map_err(io_err)?;
    let mut at = FILE_HEADER_LEN;
    let mut body = Vec::new();
    let mut torn_at = None;
    while at < len {
        if len - at < FRAME_HEADER_LEN as u64 {
            torn_at = Some(at);
            break;
        }
        let mut h = [0u8; FRAME_HEADER_LEN];
        reader.read_exact(&mut h).map_err(io_err)?;
        let frame = match parse_frame_header(&h, ix.head + 1) {
            FrameHeader::Valid(frame) => frame,
            FrameHeader::Unreadable => {
                if frame_follows(file, at + 1, len).map_err(io_err)? {
                    return Err(corrupt(at, "unreadable frame header".into()));
                }
                torn_at = Some(at);
                break;
            }
            FrameHeader::Inconsistent(reason) => return Err(corrupt(at, reason)),
        };
        let frame_end =
            (at + FRAME_HEADER_LEN as u64).checked_add(frame.body_len).and_then(|e| e.checked_add(TRAILER_LEN as u64));
        let Some(frame_end) = frame_end.filter(|&e| e <= len) else {
            // The group's write did not finish.
            torn_at = Some(at);
            break;
        };
        body.clear();
        body.resize((frame_end - at) as usize - FRAME_HEADER_LEN, 0);
        reader.read_exact(&mut body).map_err(io_err)?;
        let records = match verify_frame(&h, frame.count, &body) {
            Ok(records) => records,
            Err((rel, reason)) => {
                if frame_end < len && frame_follows(file, frame_end, len).map_err(io_err)? {
                    return Err(corrupt(at + (FRAME_HEADER_LEN + rel) as u64, reason));
                }
                torn_at = Some(at);
                break;
            }
        };
        let body_at = at + FRAME_HEADER_LEN as u64;
        for (i, (rel, payload_len)) in records.into_iter().enumerate() {
            let record_at = body_at + (rel - RECORD_HEADER_LEN) as u64;
            let payload = &body[rel..rel + payload_len];
            index_record(&mut ix, payload, frame.first_position + i as u64, record_at)
                .map_err(|reason| corrupt(record_at, reason))?;
        }
        at = frame_end;
    }

    let mut torn = 0;
    if let Some(cut) = torn_at {
        drop(reader);
        torn = nonzero_len(file, cut, len).map_err(io_err)?;
        file.set_len(cut).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        at = cut;
    }
    ix.end = at;
    Ok((ix, torn))
}

/// The length of `[from, len)` up to its last non-zero byte: the torn part of a cut tail, as
/// opposed to the zeroed space the writer preallocates.
fn nonzero_len(file: &File, from: u64, len: u64) -> std::io::Result<u64> {
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut last = None;
    let mut at = from;
    while at < len {
        let n = CHUNK.min(len - at) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            last = Some(at + i as u64);
        }
        at += n as u64;
    }
    Ok(last.map_or(0, |l| l + 1 - from))
}

struct Frame {
    count: u32,
    first_position: u64,
    body_len: u64,
}

enum FrameHeader {
    Valid(Frame),
    /// No magic or a bad checksum: garbage, or the start of a torn write.
    Unreadable,
    /// A header with a good checksum that does not fit the log: never a torn write.
    Inconsistent(String),
}

fn frame_header(count: u32, first_position: u64, body_len: u64) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&FRAME_MAGIC);
    h[4..8].copy_from_slice(&count.to_le_bytes());
    h[8..16].copy_from_slice(&first_position.to_le_bytes());
    h[16..24].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32::checksum(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A frame being encoded: room for the header, the records, then (on `finish`) the header
/// and the commit marker. Reused between groups.
#[derive(Default)]
struct FrameBuf {
    buf: Vec<u8>,
    /// Each record's CRC, little-endian, for the commit marker.
    crcs: Vec<u8>,
    count: u32,
}

impl FrameBuf {
    fn begin(&mut self) {
        self.buf.clear();
        self.buf.resize(FRAME_HEADER_LEN, 0);
        self.crcs.clear();
        self.count = 0;
    }

    /// Adds a record holding `payload` as `fill` leaves it; returns the record's offset in the
    /// frame.
    fn push(&mut self, payload: &[u8], fill: impl FnOnce(&mut [u8])) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; RECORD_HEADER_LEN]);
        self.buf.extend_from_slice(payload);
        let payload = &mut self.buf[start + RECORD_HEADER_LEN..];
        fill(payload);
        let crc = crc32::checksum(payload);
        let len = payload.len() as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.crcs.extend_from_slice(&crc.to_le_bytes());
        self.count += 1;
        start
    }

    /// The bytes of the frame, its records numbered from `first_position`.
    fn finish(&mut self, first_position: u64) -> &[u8] {
        let body_len = (self.buf.len() - FRAME_HEADER_LEN) as u64;
        let header = frame_header(self.count, first_position, body_len);
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&header);
        self.buf.extend_from_slice(&TRAILER_MAGIC);
        self.buf.extend_from_slice(&crc32::update(crc32::checksum(&header), &self.crcs).to_le_bytes());
        &self.buf
    }
}

/// Fills in the fields of a payload that the log assigns.
fn fill_in(payload: &mut [u8], position: u64, version: u64, ingest_micros: i64) {
    payload[POSITION_AT..POSITION_AT + 8].copy_from_slice(&position.to_le_bytes());
    payload[VERSION_AT..VERSION_AT + 8].copy_from_slice(&version.to_le_bytes());
    payload[INGEST_TIME_AT..INGEST_TIME_AT + 8].copy_from_slice(&ingest_micros.to_le_bytes());
}

fn header_checksum_ok(h: &[u8]) -> bool {
    h[..4] == FRAME_MAGIC && crc32::checksum(&h[..28]) == u32::from_le_bytes(h[28..32].try_into().expect("4 bytes"))
}

fn parse_frame_header(h: &[u8; FRAME_HEADER_LEN], expected_first: u64) -> FrameHeader {
    if !header_checksum_ok(h) {
        return FrameHeader::Unreadable;
    }
    let count = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    let first_position = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
    let body_len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
    if first_position != expected_first {
        return FrameHeader::Inconsistent(format!(
            "frame starts at position {first_position}, expected {expected_first}"
        ));
    }
    if count == 0 || body_len < u64::from(count) * RECORD_HEADER_LEN as u64 {
        return FrameHeader::Inconsistent(format!("frame of {count} events in {body_len} bytes"));
    }
    FrameHeader::Valid(Frame { count, first_position, body_len })
}

/// Checks a frame's records and its commit marker (`body` = records then trailer). Returns each
/// record's payload as (offset in `body`, length), or where and why the frame is bad.
fn verify_frame(header: &[u8], count: u32, body: &[u8]) -> Result<Vec<(usize, usize)>, (usize, String)> {
    let body_len = body.len() - TRAILER_LEN;
    let mut records = Vec::with_capacity(count as usize);
    let mut marker = crc32::checksum(header);
    let mut at = 0;
    for _ in 0..count {
        let Some(h) = body[..body_len].get(at..at + RECORD_HEADER_LEN) else {
            return Err((at, "record header beyond the frame".into()));
        };
        let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
        let start = at + RECORD_HEADER_LEN;
        let Some(payload) = body[..body_len].get(start..start + len) else {
            return Err((at, "record beyond the frame".into()));
        };
        if crc32::checksum(payload) != crc {
            return Err((at, "record checksum mismatch".into()));
        }
        marker = crc32::update(marker, &crc.to_le_bytes());
        records.push((start, len));
        at = start + len;
    }
    if at != body_len {
        return Err((at, "frame length does not match its records".into()));
    }
    let trailer = &body[body_len..];
    if trailer[..4] != TRAILER_MAGIC || u32::from_le_bytes(trailer[4..].try_into().expect("4 bytes")) != marker {
        return Err((body_len, "commit marker missing or wrong".into()));
    }
    Ok(records)
}

/// Whether an intact frame header (magic and checksum) starts anywhere in `[from, len)`: the
/// test that tells damage in the middle of the log from a torn tail.
fn frame_follows(file: &File, from: u64, len: u64) -> std::io::Result<bool> {
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK + FRAME_HEADER_LEN];
    let mut at = from;
    while at + FRAME_HEADER_LEN as u64 <= len {
        let n = (buf.len() as u64).min(len - at) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        let found = (0..=n - FRAME_HEADER_LEN)
            .any(|i| buf[i] == FRAME_MAGIC[0] && header_checksum_ok(&buf[i..i + FRAME_HEADER_LEN]));
        if found {
            return Ok(true);
        }
        at += (n - FRAME_HEADER_LEN + 1) as u64;
    }
    Ok(false)
}

/// Adds one verified record to the index, checking what its checksum cannot: its position,
/// its version, and that its id is new.
fn index_record(ix: &mut Index, payload: &[u8], position: u64, at: u64) -> Result<(), String> {
    let r = decode(payload).map_err(|why| format!("record at position {position}: {why}"))?;
    if r.position != position {
        return Err(format!("record holds position {}, expected {position}", r.position));
    }
    let tenant = utf8(r.tenant).map_err(str::to_string)?;
    let stream = utf8(r.stream).map_err(str::to_string)?;
    let slot = match ix.slot(tenant, stream) {
        Some(slot) => slot,
        None => ix.intern(tenant, stream),
    };
    let version = ix.streams[slot as usize].positions.len() as u64 + 1;
    if r.version != version {
        return Err(format!("position {position} is version {} of {tenant}/{stream}, expected {version}", r.version));
    }
    if ix.ids.insert((ix.streams[slot as usize].tenant, r.id), position).is_some() {
        return Err(format!("event id {} is stored twice in tenant {tenant}", r.id));
    }
    ix.streams[slot as usize].positions.push(position);
    ix.stream_of.push(slot);
    ix.offsets.push(at);
    ix.head = position;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The record encoding. A payload is, little-endian:
//   position u64 | id [16] | version u64 | event_time i64 µs | ingest_time i64 µs |
//   schema_version u32 | flags u8 | [causation_id 16] | [correlation_id 16] |
//   tenant | stream | type | source | [actor] | data | metadata
// where each string is a LEB128 length and UTF-8 bytes, and `data`/`metadata` are compact JSON.

/// Encodes a payload with position, version and ingest time left zero, for the writer to fill.
fn encode_payload(tenant: &str, stream: &str, e: &NewEvent) -> Vec<u8> {
    let data = e.data.json_text();
    // Most events carry no metadata: no need to run the serializer for "{}".
    let metadata = match &e.metadata {
        serde_json::Value::Object(m) if m.is_empty() => std::borrow::Cow::Borrowed("{}"),
        v => std::borrow::Cow::Owned(v.to_string()),
    };
    let strings = [
        tenant.len(),
        stream.len(),
        e.event_type.len(),
        e.source.len(),
        e.actor.as_ref().map_or(0, String::len),
        data.len(),
        metadata.len(),
    ];
    // Fixed fields, both optional ids, and at most 10 length bytes per string.
    let capacity = 53 + 32 + strings.iter().map(|n| n + 10).sum::<usize>();
    let mut buf = Vec::with_capacity(capacity);
    buf.extend_from_slice(&[0; 8]); // position
    buf.extend_from_slice(e.id.as_bytes());
    buf.extend_from_slice(&[0; 8]); // version
    buf.extend_from_slice(&rules::to_micros(e.event_time).to_le_bytes());
    buf.extend_from_slice(&[0; 8]); // ingest time
    buf.extend_from_slice(&e.schema_version.to_le_bytes());
    let mut flags = 0;
    if e.causation_id.is_some() {
        flags |= HAS_CAUSATION;
    }
    if e.correlation_id.is_some() {
        flags |= HAS_CORRELATION;
    }
    if e.actor.is_some() {
        flags |= HAS_ACTOR;
    }
    buf.push(flags);
    for id in [e.causation_id, e.correlation_id].into_iter().flatten() {
        buf.extend_from_slice(id.as_bytes());
    }
    put_str(&mut buf, tenant);
    put_str(&mut buf, stream);
    put_str(&mut buf, &e.event_type);
    put_str(&mut buf, &e.source);
    if let Some(actor) = &e.actor {
        put_str(&mut buf, actor);
    }
    put_str(&mut buf, &data);
    put_str(&mut buf, &metadata);
    buf
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    let mut n = s.len() as u64;
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
    buf.extend_from_slice(s.as_bytes());
}

/// A decoded payload, borrowing its strings from the read buffer.
struct Record<'a> {
    position: u64,
    id: Uuid,
    version: u64,
    event_time: i64,
    ingest_time: i64,
    schema_version: u32,
    causation_id: Option<Uuid>,
    correlation_id: Option<Uuid>,
    tenant: &'a [u8],
    stream: &'a [u8],
    event_type: &'a [u8],
    source: &'a [u8],
    actor: Option<&'a [u8]>,
    data: &'a [u8],
    metadata: &'a [u8],
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let out = self.buf.get(self.at..end).ok_or("record too short")?;
        self.at = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn varint(&mut self) -> Result<u64, &'static str> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.array::<1>()?[0];
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err("bad length")
    }

    fn bytes(&mut self) -> Result<&'a [u8], &'static str> {
        let n = usize::try_from(self.varint()?).map_err(|_| "bad length")?;
        self.take(n)
    }
}

fn decode(payload: &[u8]) -> Result<Record<'_>, &'static str> {
    let mut c = Cursor { buf: payload, at: 0 };
    let position = u64::from_le_bytes(c.array()?);
    let id = Uuid::from_bytes(c.array()?);
    let version = u64::from_le_bytes(c.array()?);
    let event_time = i64::from_le_bytes(c.array()?);
    let ingest_time = i64::from_le_bytes(c.array()?);
    let schema_version = u32::from_le_bytes(c.array()?);
    let flags = c.array::<1>()?[0];
    if flags & !(HAS_CAUSATION | HAS_CORRELATION | HAS_ACTOR) != 0 {
        return Err("unknown flags");
    }
    let mut optional_id = |flag: u8| -> Result<Option<Uuid>, &'static str> {
        Ok(if flags & flag != 0 { Some(Uuid::from_bytes(c.array()?)) } else { None })
    };
    let causation_id = optional_id(HAS_CAUSATION)?;
    let correlation_id = optional_id(HAS_CORRELATION)?;
    let tenant = c.bytes()?;
    let stream = c.bytes()?;
    let event_type = c.bytes()?;
    let source = c.bytes()?;
    let actor = if flags & HAS_ACTOR != 0 { Some(c.bytes()?) } else { None };
    let data = c.bytes()?;
    let metadata = c.bytes()?;
    if c.at != payload.len() {
        return Err("trailing bytes in record");
    }
    Ok(Record {
        position,
        id,
        version,
        event_time,
        ingest_time,
        schema_version,
        causation_id,
        correlation_id,
        tenant,
        stream,
        event_type,
        source,
        actor,
        data,
        metadata,
    })
}

/// A record's payload, checked: it fits in `bytes` (which start at the record), its CRC matches
/// and it holds `position`.
fn checked_payload(bytes: &[u8], position: u64) -> Result<&[u8], &'static str> {
    let h = bytes.get(..RECORD_HEADER_LEN).ok_or("record cut short")?;
    let len = u32::from_le_bytes(h[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(h[4..].try_into().expect("4 bytes"));
    let payload = bytes.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len).ok_or("record cut short")?;
    if crc32::checksum(payload) != crc {
        return Err("record checksum mismatch");
    }
    if payload.get(..8) != Some(&position.to_le_bytes()[..]) {
        return Err("record holds another position");
    }
    Ok(payload)
}

fn utf8(b: &[u8]) -> Result<&str, &'static str> {
    std::str::from_utf8(b).map_err(|_| "text is not UTF-8")
}

fn time(micros: i64) -> Result<DateTime<Utc>, &'static str> {
    rules::from_micros(micros).ok_or("timestamp out of range")
}

fn to_raw(payload: &[u8]) -> Result<RawEnvelope, &'static str> {
    let r = decode(payload)?;
    Ok(RawEnvelope {
        id: r.id,
        tenant: utf8(r.tenant)?.to_owned(),
        stream: utf8(r.stream)?.to_owned(),
        version: r.version,
        position: r.position,
        event_type: utf8(r.event_type)?.to_owned(),
        schema_version: r.schema_version,
        event_time: time(r.event_time)?,
        ingest_time: time(r.ingest_time)?,
        source: utf8(r.source)?.to_owned(),
        causation_id: r.causation_id,
        correlation_id: r.correlation_id,
        actor: r.actor.map(utf8).transpose()?.map(str::to_owned),
        data: utf8(r.data)?.to_owned(),
        metadata: utf8(r.metadata)?.to_owned(),
    })
}

fn to_envelope(payload: &[u8]) -> Result<EventEnvelope, &'static str> {
    let r = decode(payload)?;
    Ok(EventEnvelope {
        id: r.id,
        tenant: utf8(r.tenant)?.to_owned(),
        stream: utf8(r.stream)?.to_owned(),
        version: r.version,
        position: r.position,
        event_type: utf8(r.event_type)?.to_owned(),
        schema_version: r.schema_version,
        event_time: time(r.event_time)?,
        ingest_time: time(r.ingest_time)?,
        source: utf8(r.source)?.to_owned(),
        causation_id: r.causation_id,
        correlation_id: r.correlation_id,
        actor: r.actor.map(utf8).transpose()?.map(str::to_owned),
        data: serde_json::from_slice(r.data).map_err(|_| "data is not JSON")?,
        metadata: serde_json::from_slice(r.metadata).map_err(|_| "metadata is not JSON")?,
    })
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320: the zlib/PNG checksum), through
/// `crc32fast` (hardware-accelerated where the CPU has it). The on-disk format is unchanged: a
/// test reads a log written when this was computed by hand.
mod crc32 {
    /// The CRC of `bytes`.
    pub(super) fn checksum(bytes: &[u8]) -> u32 {
        crc32fast::hash(bytes)
    }

    /// The CRC of the bytes `crc` was computed over followed by `bytes`.
    pub(super) fn update(crc: u32, bytes: &[u8]) -> u32 {
        let mut h = crc32fast::Hasher::new_with_initial(crc);
        h.update(bytes);
        h.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32::checksum(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32::checksum(b""), 0);
        let text = b"The quick brown fox jumps over the lazy dog";
        assert_eq!(crc32::checksum(text), 0x414F_A339);
        // Chaining equals one pass, at every split point.
        for split in 0..text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(crc32::update(crc32::checksum(a), b), crc32::checksum(text));
        }
    }

    #[test]
    fn records_round_trip() {
        let mut event = NewEvent::new(Uuid::now_v7(), "Thing", serde_json::json!({"a": "é", "n": 1}), Utc::now())
            .with_actor("user:ada");
        event.causation_id = Some(Uuid::now_v7());
        let mut buf = encode_payload("t", &"s".repeat(300), &event);
        let capacity = buf.capacity();
        buf[POSITION_AT..POSITION_AT + 8].copy_from_slice(&7u64.to_le_bytes());
        buf[VERSION_AT..VERSION_AT + 8].copy_from_slice(&3u64.to_le_bytes());
        buf[INGEST_TIME_AT..INGEST_TIME_AT + 8].copy_from_slice(&42i64.to_le_bytes());
        let e = to_envelope(&buf).unwrap();
        assert_eq!(buf.capacity(), capacity, "the capacity estimate is an upper bound");
        assert_eq!((e.position, e.version, e.id), (7, 3, event.id));
        assert_eq!((e.tenant.as_str(), e.stream.len()), ("t", 300));
        assert_eq!(e.actor.as_deref(), Some("user:ada"));
        assert_eq!((e.causation_id, e.correlation_id), (event.causation_id, None));
        assert_eq!(e.data, event.data.to_value());
        assert_eq!(e.ingest_time.timestamp_micros(), 42);
        assert_eq!(e.event_time, rules::truncate_to_micros(event.event_time));
        assert!(decode(&buf[..buf.len() - 1]).is_err());
    }
}
