//! `PgStore`: the event store in PostgreSQL (`--database-url postgres://…`), for several
//! `chronicle serve` nodes over one database.
//!
//! **Gap-free order.** PostgreSQL commits concurrent transactions in any order, so positions
//! taken from a sequence become visible out of order and a reader following `position > last`
//! could skip one that commits late. Here every append transaction first takes one
//! transaction-scoped advisory lock (`pg_advisory_xact_lock`), then reads the head and numbers
//! its events after it: transactions that write events are serialised, from every node, so
//! positions are committed in order and a reader can never see position `p + 1` before `p`. The
//! cost is that writes do not run in parallel; group commit pays for it — each node's single
//! writer task puts every append waiting for it (up to 1,024 requests, 10,000 events) in one
//! transaction, validated together and inserted with one statement, so throughput grows with
//! concurrency instead of queueing one transaction per event.
//!
//! **Many nodes.** Each node follows what the others commit: the append transaction sends a
//! `NOTIFY` (delivered at commit, so in commit order, naming the node that committed: a node's
//! own are skipped), and a follower task per node, woken by another node's or by a poll every
//! `POLL` (200 ms), reads the events past the last one it handed out, in
//! position order, passes them through the commit hook — the same hook a node's own appends go
//! through, so every node's views see every event once, in order — and then moves the node's
//! head.
//! The writer hands out what other nodes committed before its own group first (it knows: its
//! group follows the head it read under the lock). `sync` waits until the node has handed out
//! everything the database had committed when it was called (read-your-writes across nodes).
//!
//! **By tenant.** The tenant leads every primary key and index, so the schema can be
//! distributed by tenant: events are keyed `(tenant, position)`; `heads` holds each tenant's
//! last position (the global head is their greatest; reading in position order visits the
//! tenants with events past the cursor one by one); ids, unique per tenant, are registered in
//! `event_ids` under their tenant, by the same statement that inserts the events. See
//! docs/storage.md, "Past one database".
//!
//! Versioned migrations (`schema_migrations`) run on connect, under a session advisory lock so
//! two nodes starting together do not race. Every table lives in one schema (`chronicle` by
//! default; tests use one schema each).

use crate::rules::{self, StoredAt};
use crate::event_store::{AppendError, AppendResult, CommitHook, EventStore, ReadError};
use async_trait::async_trait;
use chronicle_core::envelope::{EventEnvelope, ExpectedVersion, NewEvent, RawEnvelope};
use chrono::Utc;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

/// The key of the advisory lock every append transaction takes (any constant; "CHRN").
const ORDER_LOCK: i64 = 0x4348_524E;
/// The key of the lock migrations run under.
const MIGRATION_LOCK: i64 = 0x4348_524D;
/// The class of the schema's *open* lock (the second key is a hash of the schema's name): every
/// open store holds it shared, on its follower's connection, for as long as it is open; a
/// compaction ([`PgStore::expire`]) takes it alone, so it runs only when no node has the schema
/// open, and a node starting meanwhile waits for it to end.
const OPEN_LOCK: i32 = 0x4348_524F;
const MAX_GROUP_REQUESTS: usize = 1024;
const MAX_GROUP_EVENTS: usize = 10_000;
const QUEUE_CAPACITY: usize = 4096;
/// See [`Gather`].
const GATHER_MIN: usize = 8;
const GATHER_WAIT: std::time::Duration = std::time::Duration::from_millis(1);
const READERS: usize = 4;
/// Every query of the store is a look-up or a range on an index. A statement prepared while the
/// table was small keeps its plan (a generic plan is kept until the table's statistics change),
/// and a sequential scan planned for an empty table made the id look-up of every append group
/// read the whole table — found when one writer's backend sat at 100 % CPU on it. Index plans
/// only, whatever the table's size when a statement was prepared.
///
/// A writer cut off mid-transaction (a partition) would hold the order lock, stopping every
/// node's appends until the server noticed: the server ends such a transaction after 10 s.
///
/// `heads` (a row per tenant) is read whole, where a sequential scan is the plan: with scans
/// disabled its cost is the planner's "disabled" figure, which would make it compile the query
/// (JIT) on every run — tens of milliseconds — so JIT is off as well.
const SESSION: &str = "SET enable_seqscan = off; SET jit = off; SET idle_in_transaction_session_timeout = '10s';";
/// How often a node looks for other nodes' commits when no notification came (a lost one, a
/// reconnect): the bound on how stale a node can be when nothing tells it.
const POLL: std::time::Duration = std::time::Duration::from_millis(200);
/// The committed head: the last position (0 when empty).
/// (Each tenant's last position is kept in `heads`, moved by the appends' own statement.)
const HEAD_SQL: &str = "SELECT coalesce(max(position), 0) FROM heads";
/// How many events the follower reads per query.
const FOLLOW_PAGE: i64 = 1000;
/// How long `sync` waits for the follower before it gives up with an error.
const SYNC_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The migrations, in order; each runs once, in a transaction.
const MIGRATIONS: &[&str] = &["
CREATE TABLE events (
    position       BIGINT  PRIMARY KEY,
    id             UUID    NOT NULL,
    tenant         TEXT    NOT NULL,
    stream         TEXT    NOT NULL,
    version        BIGINT  NOT NULL,
    type           TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    event_time     BIGINT  NOT NULL,
    ingest_time    BIGINT  NOT NULL,
    source         TEXT    NOT NULL,
    causation_id   UUID,
    correlation_id UUID,
    actor          TEXT,
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL
);
CREATE UNIQUE INDEX events_id ON events (id);
CREATE UNIQUE INDEX events_stream ON events (tenant, stream, version);
", "
CREATE TABLE leases (
    name       TEXT        PRIMARY KEY,
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    progress   BIGINT      NOT NULL DEFAULT 0
);
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
", "
-- The data keys of crypto-shredding, shared by every node (`chronicle_privacy::PgKeyStore`).
CREATE SEQUENCE key_slots;
CREATE TABLE keys (
    slot           BIGINT  PRIMARY KEY,
    owner          BYTEA,
    master_version INTEGER NOT NULL,
    wrapped        BYTEA   NOT NULL
);
CREATE INDEX keys_owner ON keys (owner);
", "
-- The views' checkpoint that every node over the schema shares: written by the holder of its
-- lease, read by a node as it starts (`PgStore::write_checkpoint`).
CREATE TABLE checkpoints (
    name       TEXT        PRIMARY KEY,
    position   BIGINT      NOT NULL,
    body       BYTEA       NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
", "
-- The tenant leads every primary key and index (ARCHITECTURE.md, \"Past one database\").
-- Each tenant's last position: the global head is their greatest, and they are the tenants a
-- query that spans tenants visits one by one.
CREATE TABLE heads (
    tenant   TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);
INSERT INTO heads (tenant, position) SELECT tenant, max(position) FROM events GROUP BY tenant;
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (tenant, position);
-- Ids are unique across tenants (the store contract). The one place that knows every id is
-- Chronicle's own, in tenant _system: each id with where its event is. It replaces the id index
-- of events (its primary key keeps that index's name, which the writer recognises).
DROP INDEX events_id;
CREATE TABLE event_ids (
    tenant       TEXT   NOT NULL DEFAULT '_system',
    id           UUID   NOT NULL,
    event_tenant TEXT   NOT NULL,
    stream       TEXT   NOT NULL,
    version      BIGINT NOT NULL,
    position     BIGINT NOT NULL,
    CONSTRAINT events_id PRIMARY KEY (tenant, id)
);
INSERT INTO event_ids (id, event_tenant, stream, version, position) SELECT id, tenant, stream, version, position FROM events;
-- Chronicle's own records belong to its tenant, _system.
ALTER TABLE leases ADD COLUMN tenant TEXT NOT NULL DEFAULT '_system';
ALTER TABLE leases DROP CONSTRAINT leases_pkey;
ALTER TABLE leases ADD PRIMARY KEY (tenant, name);
ALTER TABLE settings ADD COLUMN tenant TEXT NOT NULL DEFAULT '_system';
ALTER TABLE settings DROP CONSTRAINT settings_pkey;
ALTER TABLE settings ADD PRIMARY KEY (tenant, name);
ALTER TABLE checkpoints ADD COLUMN tenant TEXT NOT NULL DEFAULT '_system';
ALTER TABLE checkpoints DROP CONSTRAINT checkpoints_pkey;
ALTER TABLE checkpoints ADD PRIMARY KEY (tenant, name);
ALTER TABLE schema_migrations ADD COLUMN tenant TEXT NOT NULL DEFAULT '_system';
ALTER TABLE schema_migrations DROP CONSTRAINT schema_migrations_pkey;
ALTER TABLE schema_migrations ADD PRIMARY KEY (tenant, version);
", "
-- The keys of crypto-shredding by tenant too: a key belongs to the tenant whose events name
-- its slot (`enc:v2:<slot>:`, in the streams that are sealed: a customer's, an anonymous
-- visitor's; where clear text of another tenant imitates a sealed value, the tenant that names
-- the slot most); Chronicle's own keys (the e-mail index's, the shared checkpoint's) are
-- _system's. Any other key seals nothing stored (a pooled key not handed out, one whose events
-- expired or whose append failed): it goes, and its owner gets a new one.
ALTER TABLE keys ADD COLUMN tenant TEXT;
UPDATE keys SET tenant = m.tenant FROM (
    SELECT DISTINCT ON (slot) slot, tenant
    FROM (SELECT tenant, (regexp_matches(data, 'enc:v2:([0-9]+):', 'g'))[1]::bigint AS slot FROM events
          WHERE stream LIKE 'customer-%' OR stream LIKE 'anonymous-%') named
    GROUP BY slot, tenant
    ORDER BY slot, count(*) DESC
) m WHERE keys.slot = m.slot;
UPDATE keys SET tenant = '_system' WHERE tenant IS NULL AND (
    owner = sha256(convert_to('_system', 'UTF8') || '\\x00'::bytea || convert_to('index:emails', 'UTF8'))
    OR owner IN (SELECT sha256(convert_to('_system', 'UTF8') || '\\x00'::bytea
                 || convert_to(split_part(encode(substring(body FROM 1 FOR 256), 'escape'), E'\\n', 2), 'UTF8'))
                 FROM checkpoints));
DELETE FROM keys WHERE tenant IS NULL;
ALTER TABLE keys ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE keys DROP CONSTRAINT keys_pkey;
ALTER TABLE keys ADD PRIMARY KEY (tenant, slot);
DROP INDEX keys_owner;
CREATE INDEX keys_owner ON keys (tenant, owner);
", "
-- Ids are unique per tenant, not across tenants (issue 17): an id stored in another tenant is
-- neither a duplicate nor a clash, and no answer tells whether another tenant has it. Each id
-- is registered under its own tenant (every id so far is unique across tenants, so it is
-- unique per tenant too); the key keeps its name `events_id`, which the writer recognises.
UPDATE event_ids SET tenant = event_tenant;
ALTER TABLE event_ids ALTER COLUMN tenant DROP DEFAULT;
"];

/// The events' columns, in the order [`raw_from_row`] reads them (a macro, so the queries are
/// `&'static str` built with `concat!` and can be prepared once per connection).
macro_rules! columns {
    () => {
        "position, id, tenant, stream, version, type, schema_version, event_time, ingest_time, \
         source, causation_id, correlation_id, actor, data, metadata"
    };
}
/// The events past `$1` up to `$2`, in order, at most `$3`.
/// Tenant by tenant (only those with events past `$1`), each on its `(tenant, position)` key.
/// Callers bound `$2` by `$1 + $3` ([`range_end`]): positions have no gaps, so the page's `$3`
/// events lie within it, each tenant is read that far only, and a page reads about `$3` rows
/// however many tenants there are.
const RANGE_SQL: &str = concat!(
    "SELECT x.* FROM heads h CROSS JOIN LATERAL (SELECT ",
    columns!(),
    " FROM events e WHERE e.tenant = h.tenant AND e.position > $1 AND e.position <= $2 ORDER BY e.position) x \
     WHERE h.position > $1 ORDER BY x.position LIMIT $3"
);

/// The last position a page of `limit` events past `after` can reach, at most `upto`.
fn range_end(after: i64, upto: i64, limit: i64) -> i64 {
    upto.min(after.saturating_add(limit))
}
/// The stored events among the (tenant `$1`, id `$2`) pairs, from the id registry
/// (`event_ids`). Written so that each pair is one probe of the key whatever the plan (the
/// `LIMIT` keeps the subquery apart).
const IDS_SQL: &str = "SELECT x.* FROM unnest($1::text[], $2::uuid[]) AS q(t, i) CROSS JOIN LATERAL \
     (SELECT id, event_tenant, stream, version, position FROM event_ids r WHERE r.tenant = q.t AND r.id = q.i LIMIT 1) x";
/// The group's rows as relation `u`, from column arrays ([`Columns::params`]; `u.p` is the
/// position, or the offset past the head).
macro_rules! group_rows {
    () => {
        "u AS (SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::int[], \
         $8::bigint[], $9::bigint[], $10::text[], $11::uuid[], $12::uuid[], $13::text[], $14::text[], $15::text[]) \
         AS u(p, i, t, s, v, ty, sv, et, it, so, ca, co, ac, d, m)), "
    };
}
/// Inserts `u` with positions `$pos`, moves the tenants' heads and registers the ids (an id
/// stored already in the same tenant fails the statement on the registry's key `events_id`).
macro_rules! insert_group_rows {
    ($pos:literal) => {
        concat!(
            "ins AS (INSERT INTO events (",
            columns!(),
            ") SELECT ",
            $pos,
            ", u.i, u.t, u.s, u.v, u.ty, u.sv, u.et, u.it, u.so, u.ca, u.co, u.ac, u.d, u.m FROM u \
             RETURNING tenant, position, id, stream, version), \
             moved AS (INSERT INTO heads (tenant, position) SELECT tenant, max(position) FROM ins GROUP BY tenant \
             ON CONFLICT (tenant) DO UPDATE SET position = GREATEST(heads.position, EXCLUDED.position)), \
             registered AS (INSERT INTO event_ids (tenant, id, event_tenant, stream, version, position) \
             SELECT tenant, id, tenant, stream, version, position FROM ins) "
        )
    };
}
/// The group's rows at the positions given.
const INSERT_SQL: &str = concat!("WITH ", group_rows!(), insert_group_rows!("u.p"), "SELECT count(*) FROM ins");
/// [`INSERT_SQL`] with positions relative to the head, read in the same statement (so after the
/// order lock, taken by an earlier statement of the transaction): `$1` holds each row's offset
/// past the head (1, 2, …); the head is returned.
const INSERT_AFTER_HEAD_SQL: &str =
    concat!("WITH hd AS (SELECT coalesce(max(position), 0) AS head FROM heads), ", group_rows!(), insert_group_rows!("(SELECT head FROM hd) + u.p"), "SELECT head FROM hd");
/// A stream's version (0 when it has no event).
const STREAM_VERSION_SQL: &str = "SELECT coalesce(max(version), 0) FROM events WHERE tenant = $1 AND stream = $2";
const STREAM_SQL: &str =
    concat!("SELECT ", columns!(), " FROM events WHERE tenant = $1 AND stream = $2 AND version >= $3 ORDER BY version LIMIT $4");

/// A connection with the statements prepared on it so far: a query sent as text is parsed and
/// planned again on every call (a round trip more, and planning was a tenth of the database's
/// CPU under load), a prepared one only once per connection.
struct Conn {
    client: Client,
    prepared: std::sync::Mutex<HashMap<&'static str, tokio_postgres::Statement>>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn { client, prepared: std::sync::Mutex::new(HashMap::new()) }
    }

    async fn statement(&self, sql: &'static str) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
        if let Some(s) = self.prepared.lock().unwrap_or_else(|p| p.into_inner()).get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.prepared.lock().unwrap_or_else(|p| p.into_inner()).insert(sql, s.clone());
        Ok(s)
    }

    async fn query(&self, sql: &'static str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query(&statement, params).await
    }

    async fn query_one(&self, sql: &'static str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Row, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_one(&statement, params).await
    }

    async fn query_opt(&self, sql: &'static str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Option<Row>, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.query_opt(&statement, params).await
    }

    async fn execute(&self, sql: &'static str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<u64, tokio_postgres::Error> {
        let statement = self.statement(sql).await?;
        self.client.execute(&statement, params).await
    }

    fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] chronicle_tls::postgres::PgConnectError),
    #[error("migrating the PostgreSQL schema {schema} failed: {source}")]
    Migrate { schema: String, source: tokio_postgres::Error },
    #[error("{0} is not a valid schema name (a-z, 0-9, _)")]
    Schema(String),
    #[error("the PostgreSQL schema {schema} is at migration {found}, newer than this build knows ({known}): upgrade this node")]
    Newer { schema: String, found: i32, known: usize },
}

pub struct PgStore {
    requests: mpsc::Sender<Request>,
    gather: Arc<Gather>,
    /// Reader connections, each replaced by a new one when it is found closed.
    readers: Vec<std::sync::RwLock<Arc<Conn>>>,
    next_reader: AtomicUsize,
    url: String,
    schema: String,
    feed: Arc<Feed>,
}

/// What a node has handed out: the head its readers and subscribers see, and the commit hook
/// every event goes through once, in position order, whichever node wrote it.
struct Feed {
    /// The position of the last event handed out; held while handing out, so hand-outs by the
    /// writer and the follower never interleave.
    fed: tokio::sync::Mutex<u64>,
    head: watch::Sender<u64>,
    hook: RwLock<Option<CommitHook>>,
    check: RwLock<Option<crate::event_store::HandOutCheck>>,
    /// Wakes the follower (a notification came, or `sync` waits).
    wake: tokio::sync::Notify,
}

impl Feed {
    /// Hands out every event committed past `*fed` (up to `upto`, if given), reading them
    /// from the database. Commits are serialised by the order lock, so what a query sees past
    /// `*fed` is a gap-free run of whole transactions.
    async fn catch_up(&self, fed: &mut u64, conn: &Conn, upto: Option<u64>) -> Result<(), ReadError> {
        let upto = upto.map_or(i64::MAX, |u| u as i64);
        loop {
            let end = range_end(*fed as i64, upto, FOLLOW_PAGE);
            let rows = conn.query(RANGE_SQL, &[&(*fed as i64), &end, &FOLLOW_PAGE]).await.map_err(read_error)?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                // A row that cannot be read stops the hand-out here (loudly, retried): skipping
                // it would leave every later event unapplied by the views.
                let raw = raw_from_row(row)?;
                let event = raw.clone().decode().unwrap_or_else(|e| {
                    tracing::error!(position = raw.position, error = %e, "a stored payload is not JSON; the views get the event without it");
                    let mut empty = raw;
                    empty.data = "null".into();
                    empty.metadata = "null".into();
                    empty.decode().expect("null is JSON")
                });
                events.push(event);
            }
            let Some(last) = events.last().map(|e| e.position) else { return Ok(()) };
            let check = self.check.read().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(ready) = check.and_then(|check| check(&events)) {
                ready.await.map_err(ReadError::Storage)?;
            }
            // The hook first, then the head: whoever sees the head move (`sync`, a subscriber
            // that then looks at the views) finds the views there already.
            crate::event_store::call_hook_stored(&self.hook, &events);
            self.head.send_replace(last);
            *fed = last;
            if (rows.len() as i64) < FOLLOW_PAGE {
                return Ok(());
            }
        }
    }
}

/// The follower: hands out other nodes' commits when notified, or at least every [`POLL`].
/// Ends when the store is dropped.
async fn follow(feed: std::sync::Weak<Feed>, client: Conn, url: String, schema: String, node: String) {
    let mut client = Some(client);
    loop {
        let Some(f) = feed.upgrade() else { return };
        let _ = tokio::time::timeout(POLL, f.wake.notified()).await;
        // A connection found closed is opened again (and listens again) at the next poll.
        let c = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match listen(&url, &schema, Arc::downgrade(&f), node.clone()).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "reconnecting the PostgreSQL follower failed; retrying");
                    continue;
                }
            },
        };
        let mut fed = f.fed.lock().await;
        if let Err(e) = f.catch_up(&mut fed, &c, None).await {
            tracing::warn!(error = %e, "following the PostgreSQL event log failed; retrying");
        }
        client = Some(c);
    }
}

/// The follower's connection, which also listens for the append notifications. A notification
/// carries the id of the node that committed (`node`): this node's own commits are handed out
/// by its writer, so they do not wake the follower for a read that would find nothing.
async fn listen(url: &str, schema: &str, feed: std::sync::Weak<Feed>, node: String) -> Result<Conn, PgOpenError> {
    let (client, mut connection) = chronicle_tls::postgres::connect(url).await.map_err(PgOpenError::Connect)?;
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) if n.payload() == node => {}
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => match feed.upgrade() {
                    Some(f) => f.wake.notify_one(),
                    None => return,
                },
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                    return;
                }
            }
        }
    });
    set_up(&client, schema, &format!("LISTEN {}; SELECT pg_advisory_lock_shared({OPEN_LOCK}, hashtext('{schema}'));", channel(schema))).await?;
    Ok(Conn::new(client))
}

/// Every connection's session: the schema, a name to find it by (`application_name`, the
/// notification channel's), [`SESSION`]; then `extra`.
async fn set_up(client: &Client, schema: &str, extra: &str) -> Result<(), PgOpenError> {
    let name = channel(schema);
    client
        .batch_execute(&format!("SET search_path TO {schema}; SET application_name = '{name}'; {SESSION} {extra}"))
        .await
        .map_err(|source| PgOpenError::Migrate { schema: schema.into(), source })
}

/// The notification channel appends in `schema` are announced on.
fn channel(schema: &str) -> String {
    format!("chronicle_{schema}")
}

struct Request {
    tenant: String,
    stream: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<AppendResult, AppendError>>,
}

async fn connect(url: &str, schema: &str) -> Result<Conn, PgOpenError> {
    let (client, connection) = chronicle_tls::postgres::connect(url).await.map_err(PgOpenError::Connect)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .await
        .map_err(|source| PgOpenError::Migrate { schema: schema.into(), source })?;
    set_up(&client, schema, "").await?;
    Ok(Conn::new(client))
}

impl PgStore {
    /// Connects to `url`, in schema `chronicle`, migrating it first.
    pub async fn connect(url: &str) -> Result<PgStore, PgOpenError> {
        PgStore::connect_in(url, "chronicle").await
    }

    /// Connects to `url` with every table in `schema` (made if missing), migrating it first.
    pub async fn connect_in(url: &str, schema: &str) -> Result<PgStore, PgOpenError> {
        let valid = !schema.is_empty()
            && schema.len() <= 63
            && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(PgOpenError::Schema(schema.into()));
        }
        let writer = connect(url, schema).await?;
        migrate(&writer.client, schema).await?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(std::sync::RwLock::new(Arc::new(connect(url, schema).await?)));
        }
        let head_position = query_head(&writer.client).await.map_err(|source| PgOpenError::Migrate { schema: schema.into(), source })?;
        let feed = Arc::new(Feed {
            fed: tokio::sync::Mutex::new(head_position),
            head: watch::Sender::new(head_position),
            hook: RwLock::new(None),
            check: RwLock::new(None),
            wake: tokio::sync::Notify::new(),
        });
        // Names this node in its notifications, so it can tell its own commits from others'.
        let node = Uuid::new_v4().to_string();
        let follower = listen(url, schema, Arc::downgrade(&feed), node.clone()).await?;
        tokio::spawn(follow(Arc::downgrade(&feed), follower, url.to_owned(), schema.to_owned(), node.clone()));
        let (requests, inbox) = mpsc::channel(QUEUE_CAPACITY);
        let gather = Arc::new(Gather::default());
        tokio::spawn(write_loop(writer, (url.to_owned(), schema.to_owned(), node), inbox, (feed.clone(), gather.clone())));
        Ok(PgStore { requests, gather, readers, next_reader: AtomicUsize::new(0), url: url.to_owned(), schema: schema.to_owned(), feed })
    }

    /// The number of compactions the schema has seen ([`PgStore::expire`]).
    pub async fn compactions(&self) -> Result<u64, ReadError> {
        let row = self.reader().await?.query_opt("SELECT value FROM settings WHERE tenant = '_system' AND name = 'compactions'", &[]).await.map_err(read_error)?;
        Ok(row.and_then(|r| r.get::<_, String>(0).parse().ok()).unwrap_or(0))
    }

    /// Replaces the events at `expiry.positions` with tombstones and appends its records, in
    /// one transaction (`crate::expire`), then rewrites the table (`VACUUM FULL`) so the old
    /// rows' bytes leave its files, and counts one more compaction in `settings`. Runs only
    /// while no store has the schema open (none may be open in this process either): other
    /// nodes' views would keep the expired events. What PostgreSQL keeps elsewhere is out of its
    /// reach: the WAL until it is recycled, and backups.
    pub async fn expire(url: &str, schema: &str, expiry: &crate::expire::Expiry<'_>) -> Result<crate::expire::Expired, crate::expire::ExpireError> {
        use crate::expire::{ExpireError, Expired, EXPIRED_TYPE};
        crate::expire::check_positions(expiry.positions)?;
        let failed = |reason: String| ExpireError::Failed { path: format!("PostgreSQL schema {schema}").into(), reason };
        let db = |e: tokio_postgres::Error| failed(e.to_string());
        let conn = connect(url, schema).await.map_err(|e| failed(e.to_string()))?;
        let client = &conn.client;
        // This process's own store, just closed, lets go of its connections within a poll.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            let alone: bool =
                client.query_one("SELECT pg_try_advisory_lock($1, hashtext($2))", &[&OPEN_LOCK, &schema]).await.map_err(db)?.get(0);
            if alone {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(failed("another chronicle process has the schema open; stop every node over it first".into()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let size = "SELECT pg_total_relation_size('events')";
        let bytes_before = client.query_one(size, &[]).await.map_err(db)?.get::<_, i64>(0) as u64;
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED").await.map_err(db)?;
        let done = async {
            client.execute("SELECT pg_advisory_xact_lock($1)", &[&ORDER_LOCK]).await.map_err(db)?;
            let head = query_head(client).await.map_err(db)?;
            if let Some(&last) = expiry.positions.last().filter(|&&p| p > head) {
                return Err(ExpireError::Invalid(format!("position {last} is beyond the head {head}")));
            }
            // Each planned position's tenant and type: the log from the first to the last read in
            // pages (as a follower reads it), the planned ones kept.
            let wanted: std::collections::HashSet<u64> = expiry.positions.iter().copied().collect();
            let (mut tenants, mut positions, mut data) = (Vec::new(), Vec::new(), Vec::new());
            let (mut after, last) = match (expiry.positions.first(), expiry.positions.last()) {
                (Some(&first), Some(&last)) => (first as i64 - 1, last as i64),
                _ => (0, 0),
            };
            while after < last {
                let rows = client
                    .query(
                        "SELECT x.tenant, x.position, x.type FROM heads h CROSS JOIN LATERAL \
                         (SELECT tenant, position, type FROM events e WHERE e.tenant = h.tenant AND e.position > $1 \
                          AND e.position <= $2) x WHERE h.position > $1",
                        &[&after, &range_end(after, last, 10_000)],
                    )
                    .await
                    .map_err(db)?;
                after = (after + 10_000).min(last);
                for r in rows {
                    let (position, event_type): (i64, String) = (r.get(1), r.get(2));
                    if wanted.contains(&(position as u64)) && event_type != EXPIRED_TYPE {
                        tenants.push(r.get::<_, String>(0));
                        positions.push(position);
                        data.push(crate::expire::tombstone_data(&event_type).to_string());
                    }
                }
            }
            client
                .execute(
                    "UPDATE events SET type = $3, schema_version = 1, data = x.d, metadata = '{}', actor = NULL, \
                     causation_id = NULL, correlation_id = NULL FROM unnest($4::text[], $1::bigint[], $2::text[]) AS x(t, p, d) \
                     WHERE events.tenant = x.t AND events.position = x.p",
                    &[&positions, &data, &EXPIRED_TYPE, &tenants],
                )
                .await
                .map_err(db)?;
            // The records, after the head, each new to the store.
            let (id_tenants, ids): (Vec<&str>, Vec<Uuid>) = expiry.records.iter().map(|(t, _, e)| (t.as_str(), e.id)).unzip();
            if let Some(row) = client.query(IDS_SQL, &[&id_tenants, &ids]).await.map_err(db)?.first() {
                return Err(ExpireError::Invalid(format!("the record's id {} is already stored", row.get::<_, Uuid>(0))));
            }
            let ingest_time = rules::truncate_to_micros(Utc::now());
            let mut cols = Columns::default();
            let mut versions: HashMap<(String, String), u64> = HashMap::new();
            let mut position = head;
            for (tenant, stream, e) in &expiry.records {
                let key = (tenant.clone(), stream.clone());
                let version = match versions.get(&key) {
                    Some(v) => *v,
                    None => client
                        .query_one(STREAM_VERSION_SQL, &[tenant, stream])
                        .await
                        .map_err(db)?
                        .get::<_, i64>(0) as u64,
                } + 1;
                versions.insert(key, version);
                position += 1;
                cols.push(tenant, stream, e, version, position, ingest_time);
            }
            if !cols.position.is_empty() {
                client.execute(INSERT_SQL, &cols.params()).await.map_err(db)?;
            }
            client
                .execute(
                    "INSERT INTO settings (name, value) VALUES ('compactions', '1') \
                     ON CONFLICT (tenant, name) DO UPDATE SET value = (settings.value::bigint + 1)::text",
                    &[],
                )
                .await
                .map_err(db)?;
            // The shared views hold the expired events: every node builds them again.
            client.execute("DELETE FROM checkpoints", &[]).await.map_err(db)?;
            Ok((positions.len() as u64, position))
        }
        .await;
        let (expired, head) = match done {
            Ok(done) => done,
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        client.batch_execute("COMMIT").await.map_err(db)?;
        // VACUUM runs outside a transaction, and alone in its statement.
        client.batch_execute("VACUUM FULL events").await.map_err(db)?;
        // The key table too: destroyed keys' rows leave their bytes in the pages' free space
        // (`chronicle_privacy::pgkeys`); a rewrite leaves none in the table's files.
        client.batch_execute("VACUUM FULL keys").await.map_err(db)?;
        // And the shared views' checkpoint deleted above, which held the expired events.
        client.batch_execute("VACUUM FULL checkpoints").await.map_err(db)?;
        let bytes_after = client.query_one(size, &[]).await.map_err(db)?.get::<_, i64>(0) as u64;
        Ok(Expired { expired, head, bytes_before, bytes_after })
    }

    /// Drops `schema` and everything in it (tests clean up with it).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<(), PgOpenError> {
        let (client, connection) = chronicle_tls::postgres::connect(url).await.map_err(PgOpenError::Connect)?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .map_err(|source| PgOpenError::Migrate { schema: schema.into(), source })
    }

    /// The value of a database-wide setting, if it has one.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, ReadError> {
        let row = self.reader().await?.query_opt("SELECT value FROM settings WHERE tenant = '_system' AND name = $1", &[&name]).await.map_err(read_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Makes `schema` as a build that knew only the first `migrations` would have (upgrade tests).
    #[doc(hidden)]
    pub async fn migrate_only(url: &str, schema: &str, migrations: usize) -> Result<(), PgOpenError> {
        let conn = connect(url, schema).await?;
        migrate_through(&conn.client, schema, &MIGRATIONS[..migrations.min(MIGRATIONS.len())]).await
    }

    /// The shared checkpoint `name`, if one was written.
    pub async fn read_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, ReadError> {
        let row = self.reader().await?.query_opt("SELECT body FROM checkpoints WHERE tenant = '_system' AND name = $1", &[&name]).await.map_err(read_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Replaces the shared checkpoint `name` with `body` (views at `position`) if `holder`
    /// holds lease `lease` by the database's clock — checked in the same statement, so a node
    /// that lost its lease unawares (paused, cut off) writes nothing — and the stored one is not
    /// further on. `Some(head of the body replaced, if any)` when written: its first 256 bytes,
    /// which name the key a sealed checkpoint was sealed with (read first, under the row's lock —
    /// the insert waits on it — so two writers overlapping at a lease's end each learn what they
    /// really replaced).
    pub async fn write_checkpoint(
        &self,
        name: &str,
        lease: &str,
        holder: &str,
        position: u64,
        body: &[u8],
    ) -> Result<Option<Option<Vec<u8>>>, ReadError> {
        let row = self
            .reader()
            .await?
            .query_one(
                "WITH old AS (SELECT substring(body FROM 1 FOR 256) AS head FROM checkpoints WHERE tenant = '_system' AND name = $1 FOR UPDATE), \
                 put AS (INSERT INTO checkpoints (name, position, body) \
                   SELECT $1, $2, $3 WHERE (SELECT count(*) FROM old) >= 0 AND EXISTS \
                     (SELECT 1 FROM leases WHERE tenant = '_system' AND name = $4 AND holder = $5 AND expires_at > now()) \
                   ON CONFLICT (tenant, name) DO UPDATE SET position = EXCLUDED.position, body = EXCLUDED.body, written_at = now() \
                   WHERE checkpoints.position <= EXCLUDED.position \
                   RETURNING 1) \
                 SELECT (SELECT count(*) FROM put), (SELECT head FROM old)",
                &[&name, &(position.min(i64::MAX as u64) as i64), &body, &lease, &holder],
            )
            .await
            .map_err(read_error)?;
        Ok((row.get::<_, i64>(0) > 0).then(|| row.get(1)))
    }

    /// Removes the shared checkpoint `name`; the head of the body removed, if there was one.
    pub async fn remove_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>, ReadError> {
        let row = self
            .reader()
            .await?
            .query_opt("DELETE FROM checkpoints WHERE tenant = '_system' AND name = $1 RETURNING substring(body FROM 1 FOR 256)", &[&name])
            .await
            .map_err(read_error)?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The url and schema this store was opened with (a layer over it, the key store, uses them).
    pub fn location(&self) -> (&str, &str) {
        (&self.url, &self.schema)
    }

    /// The value of a database-wide setting, `value` if it had none (set now, first wins):
    /// what every node must agree on, such as how the events are sealed.
    pub async fn claim_setting(&self, name: &str, value: &str) -> Result<String, ReadError> {
        let client = self.reader().await?;
        client
            .execute("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (tenant, name) DO NOTHING", &[&name, &value])
            .await
            .map_err(read_error)?;
        let row = client.query_one("SELECT value FROM settings WHERE tenant = '_system' AND name = $1", &[&name]).await.map_err(read_error)?;
        Ok(row.get(0))
    }

    /// The next reader connection; one found closed (the server restarted, the connection was
    /// cut) is replaced by a new one first.
    async fn reader(&self) -> Result<Arc<Conn>, ReadError> {
        let slot = &self.readers[self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len()];
        let client = slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        if !client.is_closed() {
            return Ok(client);
        }
        let fresh = Arc::new(connect(&self.url, &self.schema).await.map_err(|e| ReadError::Storage(e.to_string()))?);
        *slot.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }

    async fn query_events(&self, sql: &'static str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> Result<Vec<RawEnvelope>, ReadError> {
        let rows = self.reader().await?.query(sql, params).await.map_err(read_error)?;
        rows.iter().map(raw_from_row).collect()
    }
}

/// Runs the migrations not run yet. A schema migrated further than this build knows is
/// refused: an older node would write without what the newer schema expects of every append
/// (the tenants' heads, the id registry). (Nodes built before this check cannot refuse, so an
/// upgrade stops every node first; see the README.)
async fn migrate(client: &Client, schema: &str) -> Result<(), PgOpenError> {
    migrate_through(client, schema, MIGRATIONS).await
}

/// [`migrate`] with the first of the migrations only (an upgrade test starts from those).
async fn migrate_through(client: &Client, schema: &str, migrations: &[&str]) -> Result<(), PgOpenError> {
    let err = |source| PgOpenError::Migrate { schema: schema.into(), source };
    client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(err)?;
    let result = async {
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            .await
            .map_err(err)?;
        let done: i32 = client.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await.map_err(err)?.get(0);
        if done as usize > migrations.len() {
            return Err(PgOpenError::Newer { schema: schema.into(), found: done, known: migrations.len() });
        }
        for (i, sql) in migrations.iter().enumerate().skip(done as usize) {
            let version = i as i32 + 1;
            client
                .batch_execute(&format!("BEGIN; {sql}; INSERT INTO schema_migrations (version) VALUES ({version}); COMMIT;"))
                .await
                .map_err(err)?;
        }
        Ok(())
    }
    .await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    result?;
    unlocked.map_err(err)?;
    Ok(())
}

async fn query_head(client: &Client) -> Result<u64, tokio_postgres::Error> {
    let head: i64 = client.query_one(HEAD_SQL, &[]).await?.get(0);
    Ok(head as u64)
}

fn read_error(e: tokio_postgres::Error) -> ReadError {
    ReadError::Storage(format!("PostgreSQL: {e}"))
}

fn raw_from_row(row: &Row) -> Result<RawEnvelope, ReadError> {
    let time = |i: usize| {
        rules::from_micros(row.get::<_, i64>(i)).ok_or_else(|| ReadError::Storage("a stored time is out of range".into()))
    };
    Ok(RawEnvelope {
        position: row.get::<_, i64>(0) as u64,
        id: row.get(1),
        tenant: row.get(2),
        stream: row.get(3),
        version: row.get::<_, i64>(4) as u64,
        event_type: row.get(5),
        schema_version: row.get::<_, i32>(6) as u32,
        event_time: time(7)?,
        ingest_time: time(8)?,
        source: row.get(9),
        causation_id: row.get(10),
        correlation_id: row.get(11),
        actor: row.get(12),
        data: row.get(13),
        metadata: row.get(14),
    })
}

fn decode_all(raws: Vec<RawEnvelope>) -> Result<Vec<EventEnvelope>, ReadError> {
    raws.into_iter()
        .map(|r| r.decode().map_err(|e| ReadError::Storage(format!("a stored payload is not JSON: {e}"))))
        .collect()
}

/// The writer's statements, prepared once on its connection (each saves a round trip per use).
/// Prepared up front rather than on first use as [`Conn`] does: the writer pipelines several
/// statements at once, and a statement prepared on first use would put a round trip of its own
/// in the middle of the pipeline and could reorder what is sent.
struct Statements {
    lock: tokio_postgres::Statement,
    notify: tokio_postgres::Statement,
    head: tokio_postgres::Statement,
    ids: tokio_postgres::Statement,
    versions: tokio_postgres::Statement,
    insert: tokio_postgres::Statement,
    insert_after_head: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            lock: client.prepare("SELECT pg_advisory_xact_lock($1)").await?,
            notify: client.prepare("SELECT pg_notify($1, $2)").await?,
            head: client.prepare(HEAD_SQL).await?,
            ids: client.prepare(IDS_SQL).await?,
            versions: client
                .prepare(
                    "SELECT t, s, coalesce((SELECT max(version) FROM events e WHERE e.tenant = t AND e.stream = s), 0) \
                     FROM unnest($1::text[], $2::text[]) AS x(t, s)",
                )
                .await?,
            insert: client.prepare(INSERT_SQL).await?,
            insert_after_head: client.prepare(INSERT_AFTER_HEAD_SQL).await?,
        })
    }
}

/// The single writer of this node: forms groups of the appends waiting and commits each group
/// in one transaction. A connection found closed is opened again (appends wait in the queue
/// meanwhile; a group whose commit was cut off gets an error: it may or may not be stored, and a
/// retry with the same ids tells).
async fn write_loop(client: Conn, (url, schema, node): (String, String, String), mut inbox: mpsc::Receiver<Request>, (feed, gather): (Arc<Feed>, Arc<Gather>)) {
    let notice = Notice { channel: channel(&schema), node };
    let mut client = Some(client);
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP_REQUESTS);
    loop {
        if inbox.is_closed() {
            // The store is gone: what still waits is answered, not retried forever.
            for r in group.drain(..) {
                let _ = r.reply.send(Err(AppendError::Storage("the PostgreSQL store was closed".into())));
            }
            while let Ok(r) = inbox.try_recv() {
                let _ = r.reply.send(Err(AppendError::Storage("the PostgreSQL store was closed".into())));
            }
            return;
        }
        let c = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match connect(&url, &schema).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "reconnecting the PostgreSQL writer failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let statements = match Statements::prepare(&c.client).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot prepare the PostgreSQL writer's statements; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        match write_groups(&c, &statements, &mut inbox, &mut group, (&feed, &gather), &notice).await {
            Some(()) => continue, // the connection closed
            None => return,        // the store is gone
        }
    }
}

/// Commits groups over `client` until the inbox closes (`None`) or the connection does.
async fn write_groups(
    conn: &Conn,
    statements: &Statements,
    inbox: &mut mpsc::Receiver<Request>,
    group: &mut Vec<Request>,
    (feed, gather): (&Feed, &Gather),
    notice: &Notice,
) -> Option<()> {
    let mut known = Known::default();
    loop {
        // A group formed before the connection was found closed is committed on the next one.
        if group.is_empty() {
            let first = inbox.recv().await?;
            rules::fill_group(group, first, inbox, |r| r.events.len(), (MAX_GROUP_REQUESTS, MAX_GROUP_EVENTS));
        }
        if conn.is_closed() {
            return Some(());
        }
        let ingest_time = rules::truncate_to_micros(Utc::now());
        let results: Vec<Result<AppendResult, AppendError>> = match commit_group(&conn.client, statements, group, ingest_time, notice, &mut known).await {
            Ok((before, outcomes)) => {
                hand_out(feed, conn, before, group, &outcomes, ingest_time).await;
                outcomes.into_iter().map(|o| o.result).collect()
            }
            Err(e) => {
                let message = format!("PostgreSQL: {e}");
                (0..group.len()).map(|_| Err(AppendError::Storage(message.clone()))).collect()
            }
        };
        let answered = group.len();
        let waiting = inbox.len();
        for (request, result) in group.drain(..).zip(results) {
            let _ = request.reply.send(result);
        }
        gather.wait(inbox, answered, waiting).await;
    }
}

/// The writer's commit delay. Under load (the group just answered had [`GATHER_MIN`] requests or more), waits a moment
/// — at most [`GATHER_WAIT`] — for the writers just answered to send their next appends, so
/// they join the next group instead of the one after: the commit delay of group commit.
/// Without it, the writers split into two cohorts taking turns, each group half the size, and
/// a group's cost is mostly fixed (the lock, two round trips, the fsync). It waits until as
/// many appends queue as were waiting plus answered (an append that gets there wakes it), else
/// until the timer (whose resolution is a millisecond) ends the wait: writers that do not come
/// back soon cost the next group up to that much latency, and only under load.
#[derive(Default)]
struct Gather {
    /// The queue length the writer waits for (0: it is not waiting).
    target: AtomicUsize,
    reached: tokio::sync::Notify,
}

impl Gather {
    /// Called by the writer after answering a group of `answered` requests, with `waiting`
    /// more queued then.
    async fn wait(&self, inbox: &mpsc::Receiver<Request>, answered: usize, waiting: usize) {
        if answered < GATHER_MIN {
            return;
        }
        let target = (waiting + answered).min(MAX_GROUP_REQUESTS);
        let reached = self.reached.notified();
        self.target.store(target, Ordering::SeqCst);
        // Set before looking, so an append that lands in between still finds the target.
        if inbox.len() < target {
            let _ = tokio::time::timeout(GATHER_WAIT, reached).await;
        }
        self.target.store(0, Ordering::SeqCst);
    }

    /// Called by an append once queued, the queue `len` long: wakes the writer when that is
    /// what it waits for.
    fn queued(&self, len: usize) {
        let target = self.target.load(Ordering::SeqCst);
        if target > 0 && len >= target {
            self.reached.notify_one();
        }
    }
}

/// Hands out a committed group: first what other nodes committed up to `before` (the head the
/// group was numbered after), then the group itself — unless the follower already has.
async fn hand_out(feed: &Feed, conn: &Conn, before: u64, group: &[Request], outcomes: &[Outcome], ingest_time: chrono::DateTime<Utc>) {
    let last = outcomes.iter().filter(|o| o.appended).filter_map(|o| o.result.as_ref().ok()).map(|r| r.position).max();
    let Some(last) = last else { return };
    let mut fed = feed.fed.lock().await;
    // Other nodes' commits before the group, read back; or the rest of the group, should the
    // follower have handed out part of it (a page boundary, then a failed read).
    let read_upto = if *fed < before { Some(before) } else if *fed < last && *fed > before { Some(last) } else { None };
    if let Some(upto) = read_upto {
        if let Err(e) = feed.catch_up(&mut fed, conn, Some(upto)).await {
            // The follower hands all of it out later, in order; until then this node's views
            // lag its own write.
            tracing::warn!(error = %e, "reading other nodes' commits failed");
            feed.wake.notify_one();
            return;
        }
    }
    if *fed != before {
        return; // handed out already (by the follower, or just now)
    }
    let appended = group.iter().zip(outcomes).filter_map(|(r, o)| match o {
        Outcome { appended: true, result: Ok(res) } => Some((r.tenant.as_str(), r.stream.as_str(), *res, r.events.iter().collect())),
        _ => None,
    });
    crate::event_store::call_hook(&feed.hook, appended, ingest_time);
    feed.head.send_replace(last);
    *fed = last;
}

/// What an append transaction announces: on the schema's channel, the committing node's id.
struct Notice {
    channel: String,
    node: String,
}

struct Outcome {
    result: Result<AppendResult, AppendError>,
    appended: bool,
}

struct Owned {
    tenant: String,
    stream: String,
    version: u64,
    position: u64,
}

/// The head a group was numbered after, each request's outcome, and the stream versions read.
type GroupResult = Result<(u64, Vec<Outcome>, Versions), tokio_postgres::Error>;

type Versions = HashMap<(String, String), u64>;

/// How many groups look everything up first after a group met an id or a version already
/// stored: a replay (a client's retry, an import run again) or another node's writes to the
/// same streams tend to come in runs.
const LOOK_UP_AFTER_REPLAY: u32 = 64;
/// How many stream versions the writer remembers before it starts again from none.
const KNOWN_STREAMS: usize = 1_000_000;

/// What the writer knows without asking the database: the version of streams it wrote or read
/// — never above the stored version (only committed appends and versions read from the
/// database are learnt, and versions only grow), though it may be below it when another node
/// wrote since.
#[derive(Default)]
struct Known {
    /// Groups still to look up their ids and every stream's version first.
    careful: u32,
    versions: Versions,
}

impl Known {
    fn learn(&mut self, group: &[Request], outcomes: &[Outcome], read: Versions) {
        if self.versions.len() > KNOWN_STREAMS {
            self.versions.clear();
        }
        for (key, v) in read {
            let known = self.versions.entry(key).or_default();
            *known = (*known).max(v);
        }
        for (r, o) in group.iter().zip(outcomes) {
            if let (true, Ok(res)) = (o.appended, &o.result) {
                let known = self.versions.entry((r.tenant.clone(), r.stream.clone())).or_default();
                *known = (*known).max(res.last_version);
            }
        }
    }
}

/// Validates the group's requests in order against the database (and the group's earlier
/// requests), then inserts the accepted ones and commits — all under the order lock.
///
/// Most groups do not look their ids up, nor the versions of the streams the writer knows (see
/// [`Known`]): the unique indexes stand in for it. An id already stored, or a known version
/// that another node has since passed, makes the INSERT fail on an index (a stale version is
/// never above the stored one, so the version it would write exists); the transaction then
/// rolls back, nothing of the group stays, and the group is done again looking everything up
/// (and so are the next [`LOOK_UP_AFTER_REPLAY`] groups). A version conflict looks everything up
/// at once in the same transaction: ids are judged before versions (it may be a replay), and a
/// known version may be stale. New ids on streams the writer knows — nearly every append — save
/// two index searches per event in the one place every node's writes queue for.
async fn commit_group(
    client: &Client,
    st: &Statements,
    group: &[Request],
    ingest_time: chrono::DateTime<Utc>,
    notice: &Notice,
    known: &mut Known,
) -> Result<(u64, Vec<Outcome>), tokio_postgres::Error> {
    if known.careful == 0 {
        match validate_and_insert(client, st, group, ingest_time, notice, Some(&known.versions)).await {
            Err(e) if is_stored(&e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                known.careful = LOOK_UP_AFTER_REPLAY;
            }
            Err(e) => {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
            Ok((head, outcomes, read)) => {
                known.learn(group, &outcomes, read);
                return Ok((head, outcomes));
            }
        }
    }
    known.careful -= 1;
    match validate_and_insert(client, st, group, ingest_time, notice, None).await {
        Ok((head, outcomes, read)) => {
            known.learn(group, &outcomes, read);
            Ok((head, outcomes))
        }
        Err(e) => {
            // Whatever failed, nothing of the group stays (a no-op when the COMMIT already rolled back).
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Whether `e` is a unique index refusing a row: an id, or a stream's version, stored already.
fn is_stored(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        *d.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION && matches!(d.constraint(), Some("events_id" | "events_stream"))
    })
}

/// `known`: the stream versions to take as read (none are taken, and every id is looked up,
/// when `None`).
async fn validate_and_insert(
    client: &Client,
    st: &Statements,
    group: &[Request],
    ingest_time: chrono::DateTime<Utc>,
    notice: &Notice,
    known: Option<&Versions>,
) -> GroupResult {
    if let Some(done) = one_trip(client, st, group, ingest_time, notice, known).await {
        return done;
    }
    // BEGIN, the lock, then the head — read in a statement of its own, so its snapshot is taken
    // after the lock is held and sees every earlier writer's commit — and the group's stored ids
    // and stream versions: sent at once (pipelined on the connection), run in this order, one
    // round trip.
    let (id_tenants, ids): (Vec<&str>, Vec<Uuid>) =
        group.iter().flat_map(|r| r.events.iter().map(|e| (r.tenant.as_str(), e.id))).unzip();
    let mut versions = Versions::new();
    let (mut tenants, mut streams) = (Vec::new(), Vec::new());
    for r in group {
        match known.and_then(|k| k.get(&(r.tenant.clone(), r.stream.clone()))) {
            Some(v) => {
                versions.insert((r.tenant.clone(), r.stream.clone()), *v);
            }
            None => {
                tenants.push(r.tenant.as_str());
                streams.push(r.stream.as_str());
            }
        }
    }
    let ids_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&id_tenants, &ids];
    let version_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenants, &streams];
    let (_, _, head, id_rows, version_rows) = tokio::try_join!(
        // Read committed whatever the server's default: the head must see every earlier commit.
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        client.execute(&st.lock, &[&ORDER_LOCK]),
        client.query_one(&st.head, &[]),
        async {
            match known {
                None => client.query(&st.ids, &ids_params).await,
                Some(_) => Ok(Vec::new()),
            }
        },
        async {
            match tenants.is_empty() {
                false => client.query(&st.versions, &version_params).await,
                true => Ok(Vec::new()),
            }
        },
    )?;
    let head = head.get::<_, i64>(0) as u64;
    let read_versions = |rows: Vec<Row>| -> Versions { rows.iter().map(|row| ((row.get(0), row.get(1)), row.get::<_, i64>(2) as u64)).collect() };
    let mut read = read_versions(version_rows);
    versions.extend(read.iter().map(|(k, v)| (k.clone(), *v)));
    let mut outcomes = decide(group, stored_ids(id_rows), versions, head);
    if known.is_some() && outcomes.iter().any(|o| matches!(o.result, Err(AppendError::Conflict { .. }))) {
        // Ids are judged before versions (a conflict may be the replay of a stored append), and
        // a known version may be stale: a conflict is judged again on everything read.
        let (tenants, streams): (Vec<&str>, Vec<&str>) = group.iter().map(|r| (r.tenant.as_str(), r.stream.as_str())).unzip();
        let version_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&tenants, &streams];
        let (id_rows, version_rows) = tokio::try_join!(client.query(&st.ids, &ids_params), client.query(&st.versions, &version_params))?;
        read = read_versions(version_rows);
        outcomes = decide(group, stored_ids(id_rows), read.clone(), head);
    }
    insert_group(client, st, group, &outcomes, ingest_time, notice).await?;
    Ok((head, outcomes, read))
}

/// The group in one round trip — BEGIN, the lock, the rows numbered after the head read in the
/// INSERT itself, the notification, COMMIT, all pipelined — when every stream's version is
/// known (or the stream is expected new) and no request conflicts with it: nothing needs
/// reading before the rows are built.
/// `None` when that does not hold (the usual path reads first). A stale version or a stored id
/// fails the INSERT on its index as on the usual path.
async fn one_trip(
    client: &Client,
    st: &Statements,
    group: &[Request],
    ingest_time: chrono::DateTime<Utc>,
    notice: &Notice,
    known: Option<&Versions>,
) -> Option<GroupResult> {
    let known = known?;
    let mut versions = Versions::with_capacity(group.len());
    for r in group {
        let key = (r.tenant.clone(), r.stream.clone());
        // A stream expected new is taken as new: version 0 is never above the stored one, so
        // if it exists the INSERT fails on the stream index, as with a stale known version.
        let v = match (known.get(&key), r.expected) {
            (Some(v), _) => *v,
            (None, ExpectedVersion::NoStream) => 0,
            (None, _) => return None,
        };
        versions.insert(key, v);
    }
    // Numbered after a head of 0, then moved past the real one.
    let mut outcomes = decide(group, HashMap::new(), versions, 0);
    if outcomes.iter().any(|o| !o.appended) {
        return None;
    }
    let cols = Columns::of(group, &outcomes, ingest_time);
    let insert_params = cols.params();
    let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&notice.channel, &notice.node];
    // Every answer is awaited, so the INSERT's own error is the one reported.
    let (begun, locked, inserted, notified, committed) = tokio::join!(
        client.batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED"),
        client.execute(&st.lock, &[&ORDER_LOCK]),
        client.query_one(&st.insert_after_head, &insert_params),
        client.execute(&st.notify, &notify_params),
        client.batch_execute("COMMIT"),
    );
    let done = (|| {
        begun?;
        locked?;
        let head = inserted?.get::<_, i64>(0) as u64;
        notified?;
        committed?;
        Ok(head)
    })();
    Some(done.map(|head| {
        for o in &mut outcomes {
            if let Ok(res) = &mut o.result {
                res.position += head;
            }
        }
        (head, outcomes, Versions::new())
    }))
}

/// The stored events among a group's ids, by tenant and id.
fn stored_ids(rows: Vec<Row>) -> HashMap<(String, Uuid), Owned> {
    rows.iter()
        .map(|row| {
            let owned = Owned { tenant: row.get(1), stream: row.get(2), version: row.get::<_, i64>(3) as u64, position: row.get::<_, i64>(4) as u64 };
            ((owned.tenant.clone(), row.get(0)), owned)
        })
        .collect()
}

/// Each request's outcome, judged in order against what is stored (`stored` ids, stream
/// `versions`) and the group's earlier requests: a replay, a refusal, or its place after `head`.
fn decide(group: &[Request], mut stored: HashMap<(String, Uuid), Owned>, mut versions: HashMap<(String, String), u64>, head: u64) -> Vec<Outcome> {
    let mut next = head + 1;
    let mut outcomes = Vec::with_capacity(group.len());
    // Each request's batch was checked in `append`, before it was queued.
    for r in group {
        let batch_ids: Vec<Uuid> = r.events.iter().map(|e| e.id).collect();
        if batch_ids.iter().any(|id| stored.contains_key(&(r.tenant.clone(), *id))) {
            let found: Vec<Option<StoredAt<'_>>> = batch_ids
                .iter()
                .map(|id| stored.get(&(r.tenant.clone(), *id)).map(|o| StoredAt { tenant: &o.tenant, stream: &o.stream, version: o.version, position: o.position }))
                .collect();
            if let Some(result) = rules::classify_ids(&r.tenant, &r.stream, &batch_ids, &found) {
                outcomes.push(Outcome { result, appended: false });
                continue;
            }
        }
        let key = (r.tenant.clone(), r.stream.clone());
        let actual = versions.get(&key).copied().unwrap_or(0);
        if !r.expected.admits(actual) {
            outcomes.push(Outcome { result: Err(rules::conflict(&r.stream, r.expected, actual)), appended: false });
            continue;
        }
        let n = r.events.len() as u64;
        for (i, e) in r.events.iter().enumerate() {
            let owned = Owned { tenant: r.tenant.clone(), stream: r.stream.clone(), version: actual + 1 + i as u64, position: next + i as u64 };
            stored.insert((r.tenant.clone(), e.id), owned);
        }
        versions.insert(key, actual + n);
        outcomes.push(Outcome {
            result: Ok(AppendResult { first_version: actual + 1, last_version: actual + n, position: next + n - 1 }),
            appended: true,
        });
        next += n;
    }
    outcomes
}

async fn insert_group(
    client: &Client,
    st: &Statements,
    group: &[Request],
    outcomes: &[Outcome],
    ingest_time: chrono::DateTime<Utc>,
    notice: &Notice,
) -> Result<(), tokio_postgres::Error> {
    // One INSERT for the whole group, from arrays.
    let cols = Columns::of(group, outcomes, ingest_time);
    if cols.position.is_empty() {
        client.batch_execute("COMMIT").await?;
    } else {
        // The rows, the notification and the commit: one round trip. Should the INSERT fail,
        // the COMMIT that follows it rolls the transaction back.
        let insert_params = cols.params();
        let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&notice.channel, &notice.node];
        // All three answers are awaited, so the INSERT's own error (an id stored already) is
        // the one reported, not the aborted transaction's that follows it.
        let (inserted, notified, committed) =
            tokio::join!(client.execute(&st.insert, &insert_params), client.execute(&st.notify, &notify_params), client.batch_execute("COMMIT"));
        inserted?;
        notified?;
        committed?;
    }
    Ok(())
}

/// A group's rows as column arrays, for `INSERT … SELECT * FROM unnest(…)`.
#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    id: Vec<Uuid>,
    tenant: Vec<String>,
    stream: Vec<String>,
    version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    event_time: Vec<i64>,
    ingest_time: Vec<i64>,
    source: Vec<String>,
    causation_id: Vec<Option<Uuid>>,
    correlation_id: Vec<Option<Uuid>>,
    actor: Vec<Option<String>>,
    data: Vec<String>,
    metadata: Vec<String>,
}

impl Columns {
    /// The arrays as the INSERT's parameters, in column order.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 15] {
        [
            &self.position, &self.id, &self.tenant, &self.stream, &self.version, &self.event_type, &self.schema_version,
            &self.event_time, &self.ingest_time, &self.source, &self.causation_id, &self.correlation_id, &self.actor,
            &self.data, &self.metadata,
        ]
    }

    /// The rows of a group's appended requests, at the positions their outcomes give.
    fn of(group: &[Request], outcomes: &[Outcome], ingest_time: chrono::DateTime<Utc>) -> Columns {
        let mut cols = Columns::default();
        for (r, o) in group.iter().zip(outcomes) {
            let (true, Ok(res)) = (o.appended, &o.result) else { continue };
            let first_position = res.position + 1 - r.events.len() as u64;
            for (i, e) in r.events.iter().enumerate() {
                cols.push(&r.tenant, &r.stream, e, res.first_version + i as u64, first_position + i as u64, ingest_time);
            }
        }
        cols
    }

    fn push(&mut self, tenant: &str, stream: &str, e: &NewEvent, version: u64, position: u64, ingest_time: chrono::DateTime<Utc>) {
        self.position.push(position as i64);
        self.id.push(e.id);
        self.tenant.push(tenant.to_owned());
        self.stream.push(stream.to_owned());
        self.version.push(version as i64);
        self.event_type.push(e.event_type.clone());
        self.schema_version.push(e.schema_version as i32);
        self.event_time.push(rules::to_micros(e.event_time));
        self.ingest_time.push(rules::to_micros(ingest_time));
        self.source.push(e.source.clone());
        self.causation_id.push(e.causation_id);
        self.correlation_id.push(e.correlation_id);
        self.actor.push(e.actor.clone());
        self.data.push(e.data.json_text().into_owned());
        self.metadata.push(e.metadata.to_string());
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppendError> {
        rules::check_batch(&events)?;
        let (reply, answer) = oneshot::channel();
        let request = Request { tenant: tenant.to_owned(), stream: stream.to_owned(), expected, events, reply };
        let gone = || AppendError::Storage("the PostgreSQL writer stopped".into());
        self.requests.send(request).await.map_err(|_| gone())?;
        self.gather.queued(self.requests.max_capacity() - self.requests.capacity());
        answer.await.map_err(|_| gone())?
    }

    async fn read_stream(&self, tenant: &str, stream: &str, from_version: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError> {
        decode_all(self.read_stream_raw(tenant, stream, from_version, limit).await?)
    }

    async fn read_stream_raw(&self, tenant: &str, stream: &str, from_version: u64, limit: usize) -> Result<Vec<RawEnvelope>, ReadError> {
        let (from, limit) = (from_version.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64);
        self.query_events(STREAM_SQL, &[&tenant, &stream, &from, &limit]).await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, ReadError> {
        decode_all(self.read_all_raw(after, limit).await?)
    }

    async fn read_all_raw(&self, after: u64, limit: usize) -> Result<Vec<RawEnvelope>, ReadError> {
        // Bounded by the head this node has seen committed: nothing past it is read, so a page
        // never runs ahead of what subscribers were told.
        let head = *self.feed.head.borrow() as i64;
        let (after, limit) = (after.min(i64::MAX as u64) as i64, limit.min(i64::MAX as usize) as i64);
        self.query_events(RANGE_SQL, &[&after, &range_end(after, head, limit), &limit]).await
    }

    async fn stored(&self, tenant: &str, ids: &[Uuid]) -> Result<Vec<bool>, ReadError> {
        let tenants = vec![tenant; ids.len()];
        let rows = self.reader().await?.query(IDS_SQL, &[&tenants, &ids]).await.map_err(read_error)?;
        let found: std::collections::HashSet<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        Ok(ids.iter().map(|id| found.contains(id)).collect())
    }

    async fn head(&self) -> Result<u64, ReadError> {
        Ok(*self.feed.head.borrow())
    }

    async fn sync(&self) -> Result<u64, ReadError> {
        let committed = self.reader().await?.query_one(HEAD_SQL, &[]).await.map_err(read_error)?.get::<_, i64>(0) as u64;
        let mut head = self.feed.head.subscribe();
        if *head.borrow() < committed {
            self.feed.wake.notify_one();
            match tokio::time::timeout(SYNC_LIMIT, head.wait_for(|h| *h >= committed)).await {
                Ok(Ok(_)) => {}
                _ => return Err(ReadError::Storage(format!("this node did not catch up with position {committed} in time"))),
            }
        }
        Ok(committed)
    }

    async fn stream_version(&self, tenant: &str, stream: &str) -> Result<u64, ReadError> {
        let row = self
            .reader()
            .await?
            .query_one(STREAM_VERSION_SQL, &[&tenant, &stream])
            .await
            .map_err(read_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn head_watch(&self) -> watch::Receiver<u64> {
        self.feed.head.subscribe()
    }

    fn set_commit_hook(&self, hook: CommitHook) {
        *self.feed.hook.write().unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    fn set_hand_out_check(&self, check: crate::event_store::HandOutCheck) {
        *self.feed.check.write().unwrap_or_else(|p| p.into_inner()) = Some(check);
    }
}

#[async_trait]
impl crate::event_store::Leases for PgStore {
    async fn lease(&self, name: &str, holder: &str, ttl: std::time::Duration, progress: u64) -> Result<Option<u64>, ReadError> {
        // Taken when free or expired, renewed by its holder; the database's clock decides
        // expiry, so the nodes' clocks need not agree.
        let row = self
            .reader()
            .await?
            .query_opt(
                "INSERT INTO leases (name, holder, expires_at, progress) \
                 VALUES ($1, $2, now() + $3 * interval '1 millisecond', $4) \
                 ON CONFLICT (tenant, name) DO UPDATE SET holder = $2, expires_at = EXCLUDED.expires_at, \
                   progress = CASE WHEN leases.holder = $2 THEN GREATEST(leases.progress, $4) ELSE leases.progress END \
                 WHERE leases.holder = $2 OR leases.expires_at < now() \
                 RETURNING progress",
                &[&name, &holder, &(ttl.as_millis() as f64), &(progress.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(read_error)?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    async fn seed(&self, name: &str, progress: u64) -> Result<(), ReadError> {
        self.reader()
            .await?
            .execute(
                "INSERT INTO leases (name, holder, expires_at, progress) VALUES ($1, '', now() - interval '1 second', $2) \
                 ON CONFLICT (tenant, name) DO NOTHING",
                &[&name, &(progress.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(read_error)?;
        Ok(())
    }

    async fn live(&self, prefix: &str) -> Result<usize, ReadError> {
        // Heartbeats of nodes gone an hour are cleared on the way (one row per process start).
        let row = self
            .reader()
            .await?
            .query_one(
                "WITH gone AS (DELETE FROM leases WHERE tenant = '_system' AND starts_with(name, $1) AND expires_at < now() - interval '1 hour') \
                 SELECT count(*) FROM leases WHERE tenant = '_system' AND starts_with(name, $1) AND expires_at > now()",
                &[&prefix],
            )
            .await
            .map_err(read_error)?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    async fn release(&self, name: &str, holder: &str, progress: u64) -> Result<(), ReadError> {
        self.reader()
            .await?
            .execute(
                "UPDATE leases SET expires_at = now() - interval '1 second', progress = GREATEST(progress, $3) \
                 WHERE tenant = '_system' AND name = $1 AND holder = $2",
                &[&name, &holder, &(progress.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(read_error)?;
        Ok(())
    }
}
