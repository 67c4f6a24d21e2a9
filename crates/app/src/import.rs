//! Bulk import (`chronicle import FILE`): NDJSON files of Segment messages or CloudEvents (one
//! per line, told apart by `specversion`), and CSV files of contacts.
//!
//! - **Safe to run again.** Every event's id derives from its line: a Segment line's
//!   `messageId` (or, when it has none, the SHA-256 of the line), a CloudEvent's `source` and
//!   `id`, a CSV row's content. A rerun is a replay and stores nothing new.
//! - **Never half a line.** A line is validated whole before anything of it is written; a line
//!   that a rule refuses at write time (an e-mail held by another customer) is rejected whole.
//!   A CSV row is one append. A Segment line that becomes several appends (an identify that
//!   also links an anonymous id, an "Order Completed" that also places the order) is finished
//!   by a rerun if a crash cuts it short.
//! - **Rejected lines** are reported with their line number, a code and the reason; the rest of
//!   the file is imported.
//! - **Fast.** Lines are read in chunks; the next chunk is parsed on both cores while the
//!   current one is written. Activity lines (track, page, screen) are read straight from their
//!   text into an event whose payload stays JSON text (`ingest::activity_from_text`); all other
//!   lines go through a `Value`. A chunk is written in rounds (see `write_parsed`): every
//!   group's next activity run goes out together, one append per stream, so the store's group
//!   commit carries many appends per fsync.
//!
//! CSV contacts: a header row; `id` (or `user_id`, `userId`, `customer_id`) is required;
//! `email` and `phone` are the profile's; a column `consent:<channel>:<purpose>` holds
//! `granted` / `revoked` (also true/false, yes/no, 1/0; empty: no decision), recorded with the
//! row's `consent_source` (else "import") as source and the file and line as proof; every other
//! non-empty column is a trait (as text). A known customer is updated with what differs.

pub mod mapping;

use crate::app::App;
use crate::pseudonym::Pseudonyms;
use crate::error::AppError;
use crate::ingest::{self, Call};
use chronicle_core::customer::{Channel, ConsentInput, CustomerCommand, Purpose};
use chronicle_core::envelope::NewEvent;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

/// Lines read, parsed and written as one unit of work.
const CHUNK_LINES: usize = 50_000;
/// Customers written at once within a chunk.
const CONCURRENCY: usize = 512;
/// The longest NDJSON line accepted (a Segment message is further limited to 32 KB).
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Who the imported events name as their actor.
const ACTOR: &str = "import";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// The format a file's extension names: `.csv`; `.ndjson`, `.jsonl`, `.json`.
    pub fn of_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

/// A line that was not imported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejected {
    pub line: u64,
    pub code: &'static str,
    pub message: String,
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Lines (or CSV rows) read, blank lines not counted.
    pub lines: u64,
    pub imported: u64,
    pub rejected: u64,
    /// Events the log holds now that it did not before (0 on a rerun).
    pub new_events: u64,
    /// Mapped CSV only: guest rows skipped (not rejected), and the events the rows became.
    pub skipped: u64,
    pub events: u64,
}

impl Report {
    /// Count a chunk of `lines`, of which `rejected` were refused, and report those in line order.
    fn tally(&mut self, lines: u64, mut rejected: Vec<Rejected>, observer: &mut dyn Observer) {
        rejected.sort_by_key(|r| r.line);
        self.lines += lines;
        self.rejected += rejected.len() as u64;
        self.imported += lines - rejected.len() as u64;
        rejected.into_iter().for_each(|r| observer.rejected(r));
    }
}

/// Where the import reports as it goes: lines done, and each rejected line.
pub trait Observer {
    fn progress(&mut self, lines: u64);
    fn rejected(&mut self, r: Rejected);
}

/// Import `input` into `tenant`. `name` (the file's name) goes into CSV consent proofs.
pub async fn import(
    app: &Arc<App>,
    tenant: &str,
    format: Format,
    input: impl BufRead + Send + 'static,
    name: &str,
    observer: &mut dyn Observer,
) -> Result<Report, AppError> {
    if !app.views().tenant_exists(tenant) {
        return Err(AppError::BadRequest(format!("no tenant {tenant:?}; create it with `chronicle tenant create`")));
    }
    let head = app.store().head().await?;
    let mut report = match format {
        Format::Ndjson => ndjson(app, tenant, input, observer).await?,
        Format::Csv => csv_contacts(app, tenant, input, name, observer).await?,
    };
    report.new_events = app.store().head().await? - head;
    Ok(report)
}

/// One parsed NDJSON line, ready to write.
enum Item {
    Segment(Call),
    Cloud(String, NewEvent),
}

type Parsed = Vec<(u64, Result<Item, Rejected>)>;

/// Read up to `CHUNK_LINES` non-blank lines; `next_line` is the number of the next line.
fn read_chunk(input: &mut impl BufRead, next_line: &mut u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut chunk = Vec::new();
    while chunk.len() < CHUNK_LINES {
        let mut buf = Vec::new();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let n = *next_line;
        *next_line += 1;
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if !buf.iter().all(u8::is_ascii_whitespace) {
            chunk.push((n, buf));
        }
    }
    Ok(chunk)
}

/// Parse a chunk on every core (its halves side by side), keeping line order.
fn parse_chunk(tenant: &str, ids: &Pseudonyms, mut chunk: Vec<(u64, Vec<u8>)>, now: DateTime<Utc>) -> Parsed {
    let parse = |part: Vec<(u64, Vec<u8>)>| -> Parsed {
        part.into_iter().map(|(n, line)| (n, parse_line(tenant, ids, n, &line, now))).collect()
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || chunk.len() < 1000 {
        return parse(chunk);
    }
    let second = chunk.split_off(chunk.len() / 2);
    std::thread::scope(|s| {
        let other = s.spawn(|| parse(second));
        let mut first = parse(chunk);
        first.extend(other.join().expect("parser thread"));
        first
    })
}

fn parse_line(tenant: &str, ids: &Pseudonyms, n: u64, line: &[u8], now: DateTime<Utc>) -> Result<Item, Rejected> {
    let reject = |code, message: String| Rejected { line: n, code, message };
    if line.len() > MAX_LINE_BYTES {
        return Err(reject("line_too_large", format!("the line is {} bytes; the limit is 1 MiB", line.len())));
    }
    // Most lines of an export are page views and tracks: they are read straight from the text.
    if let Ok(text) = std::str::from_utf8(line) {
        if let Some(a) = ingest::activity_from_text(tenant, text, now, ACTOR, || derived_message_id(line)) {
            // An id that is personal data is replaced on the general path.
            if a.user_id.as_deref().is_none_or(|u| ids.id(u) == u) {
                return Ok(Item::Segment(Call::Activity(a)));
            }
        }
    }
    parse_general(tenant, ids, n, line, now)
}

/// For the fuzz target: a line through both paths (`parse_line` tries the fast one first).
pub(crate) fn fuzz_line(line: &[u8], now: DateTime<Utc>) {
    let ids = Pseudonyms::new(Some([1; 32]));
    let _ = parse_line("t", &ids, 1, line, now);
    let _ = parse_general("t", &ids, 1, line, now);
}

/// Any line, through the JSON tree (every error is named here).
fn parse_general(tenant: &str, ids: &Pseudonyms, n: u64, line: &[u8], now: DateTime<Utc>) -> Result<Item, Rejected> {
    let reject = |code, message: String| Rejected { line: n, code, message };
    let value: Value = serde_json::from_slice(line).map_err(|e| reject("invalid_json", e.to_string()))?;
    let Value::Object(mut m) = value else { return Err(reject("bad_request", "a line must be a JSON object".into())) };
    if m.contains_key("specversion") {
        ids.apply(&mut m, &["subject"]);
        let (stream, ev) = crate::cloudevents::prepare(tenant, m, now).map_err(|e| reject("bad_request", e.to_string()))?;
        return Ok(Item::Cloud(stream, ev));
    }
    let mut text_len = line.len();
    if m.get("messageId").and_then(Value::as_str).is_none_or(str::is_empty) {
        text_len += 64;
        m.insert("messageId".into(), Value::String(derived_message_id(line)));
    }
    ids.apply(&mut m, &["userId", "previousId"]);
    let received_at = ingest::time_field(&m, "receivedAt", 0).map_err(|e| reject(e.code, e.message))?.unwrap_or(now);
    ingest::parse_message(tenant, 0, Value::Object(m), None, received_at, None, Some(text_len))
        .map(|m| Item::Segment(Call::of(ACTOR, m)))
        .map_err(|e| reject(e.code, e.message))
}

/// A line without a messageId is its own identity: the same line again is a replay.
fn derived_message_id(line: &[u8]) -> String {
    format!("import-{}", hex(&Sha256::digest(line)[..16]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) async fn ndjson(
    app: &Arc<App>,
    tenant: &str,
    mut input: impl BufRead + Send + 'static,
    observer: &mut dyn Observer,
) -> Result<Report, AppError> {
    let io = |e: std::io::Error| AppError::BadRequest(format!("reading the file: {e}"));
    let mut next_line = 1;
    let mut report = Report::default();
    let first = read_chunk(&mut input, &mut next_line).map_err(io)?;
    let spawn_parse = |chunk: Vec<(u64, Vec<u8>)>| {
        let (tenant, ids) = (tenant.to_owned(), app.pseudonyms.clone());
        let now = app.now();
        tokio::task::spawn_blocking(move || parse_chunk(&tenant, &ids, chunk, now))
    };
    let mut pending = (!first.is_empty()).then(|| spawn_parse(first));
    // The reader moves into a blocking task per chunk and comes back with the chunk read.
    let mut reader = Some(input);
    let mut progressed = 1;
    while let Some(parsing) = pending.take() {
        let mut r = reader.take().expect("the reader is back");
        let reading = tokio::task::spawn_blocking(move || {
            let chunk = read_chunk(&mut r, &mut next_line);
            (r, next_line, chunk)
        });
        let parsed = parsing.await.map_err(|e| AppError::internal("parsing import lines", e))?;
        let (r, n, chunk) = reading.await.map_err(|e| AppError::internal("reading the import", e))?;
        let chunk = chunk.map_err(io)?;
        // Progress counts the file's lines, blank ones included, up to the parsed chunk's end.
        let done_to = chunk.first().map_or(n, |(first, _)| *first);
        (reader, next_line) = (Some(r), n);
        pending = (!chunk.is_empty()).then(|| spawn_parse(chunk));
        write_parsed(app, tenant, parsed, &mut report, observer).await?;
        observer.progress(done_to - std::mem::replace(&mut progressed, done_to));
    }
    Ok(report)
}

/// Write one chunk. Lines that touch a common resource (a customer, an anonymous id, an
/// e-mail address claimed, an order) fall into one group and are written in file order, so the
/// file's order decides every conflict (the first line claiming an address gets it); groups,
/// independent of each other, are written side by side, in rounds: each round takes the next
/// step of every group — a run of activity lines, or one other line (an identify, alias or
/// group call; a run of CloudEvents of one stream) — and writes all the activity runs of the
/// round together (see `ingest::write_activity_runs`) while the other steps run concurrently.
async fn write_parsed(
    app: &Arc<App>,
    tenant: &str,
    parsed: Parsed,
    report: &mut Report,
    observer: &mut dyn Observer,
) -> Result<(), AppError> {
    let lines = parsed.len() as u64;
    let mut rejected = Vec::new();
    let mut items = Vec::with_capacity(parsed.len());
    for (n, item) in parsed {
        match item {
            Err(r) => rejected.push(r),
            Ok(item) => items.push((n, item)),
        }
    }
    let mut groups: Vec<_> =
        group_by_resources(items, resources).into_iter().map(|g| g.into_iter().peekable()).collect();
    while !groups.is_empty() {
        let mut runs = Vec::new();
        let mut run_lines: Vec<Vec<u64>> = Vec::new();
        let mut steps = Vec::new();
        for g in &mut groups {
            if let Some((_, Item::Segment(Call::Activity(_)))) = g.peek() {
                let (mut run, mut lines) = (Vec::new(), Vec::new());
                while let Some((n, Item::Segment(Call::Activity(_)))) = g.peek() {
                    lines.push(*n);
                    let Some((_, Item::Segment(Call::Activity(a)))) = g.next() else { unreachable!("peeked") };
                    run.push((run.len(), a));
                }
                runs.push(run);
                run_lines.push(lines);
            } else if let Some(step) = next_step(g) {
                steps.push(step);
            }
        }
        groups.retain_mut(|g| g.peek().is_some());
        let spawn = |step| {
            let (app, tenant) = (app.clone(), tenant.to_owned());
            tokio::spawn(async move { write_step(&app, &tenant, step).await })
        };
        let (done, refused) =
            tokio::join!(ingest::write_activity_runs(app, tenant, ACTOR, runs), run_all(steps.into_iter().map(spawn)));
        rejected.extend(refused?);
        for (results, lines) in done?.into_iter().zip(run_lines) {
            for (i, result) in results {
                if let Err(e) = result {
                    rejected.push(Rejected { line: lines[i], code: e.code(), message: e.to_string() });
                }
            }
        }
    }
    report.tally(lines, rejected, observer);
    Ok(())
}

/// A group's next line that is not activity, with the CloudEvents of the same stream after it.
fn next_step(g: &mut std::iter::Peekable<std::vec::IntoIter<(u64, Item)>>) -> Option<Vec<(u64, Item)>> {
    let first = g.next()?;
    let mut step = vec![first];
    if let (_, Item::Cloud(stream, _)) = &step[0] {
        let stream = stream.clone();
        while let Some((_, Item::Cloud(s, _))) = g.peek() {
            if *s != stream {
                break;
            }
            step.push(g.next().expect("peeked"));
        }
    }
    Some(step)
}

/// Run the group writes (spawned lazily, at most `CONCURRENCY` at a time, on every core) and
/// gather the lines they refused.
async fn run_all(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<Vec<Rejected>, AppError>>>,
) -> Result<Vec<Rejected>, AppError> {
    let mut results = futures_util::stream::iter(tasks).buffer_unordered(CONCURRENCY);
    let mut rejected = Vec::new();
    while let Some(r) = results.next().await {
        rejected.extend(r.map_err(|e| AppError::internal("importing a chunk", e))??);
    }
    Ok(rejected)
}

/// A resource as a grouping key: `kind` (`u` customer, `a` anonymous id, `e` e-mail, `o` order,
/// `s` other stream) and its name, hashed. Two resources sharing a hash only put their lines
/// in one group, which is never wrong, just less concurrent.
fn key(kind: u8, name: &str) -> u64 {
    use std::hash::BuildHasher;
    // Fixed seed: the grouping only has to be the same within one run.
    foldhash::fast::FixedState::with_seed(0x0063_6872_6f6e).hash_one((kind, name))
}

/// The resources a line touches.
fn resources(item: &Item) -> Vec<u64> {
    let mut keys = Vec::with_capacity(2);
    match item {
        Item::Segment(Call::Activity(a)) => {
            keys.extend(a.user_id.iter().map(|u| key(b'u', u)));
            keys.extend(a.anonymous_id.iter().map(|an| key(b'a', an)));
            keys.extend(a.order_id().map(|o| key(b'o', o)));
        }
        Item::Segment(Call::Change(m)) => {
            keys.extend(m.user_id.iter().map(|u| key(b'u', u)));
            keys.extend(m.anonymous_id.iter().map(|a| key(b'a', a)));
            let text = |k: &str| {
                m.raw
                    .get(k)
                    .and_then(|v| v.as_str().map(str::to_owned).or_else(|| v.as_number().map(|n| n.to_string())))
            };
            if let Some(prev) = text("previousId") {
                // An alias's previousId may be a visitor or a customer.
                keys.push(key(b'a', &prev));
                keys.push(key(b'u', &prev));
            }
            let traits = m.raw.get("traits").and_then(Value::as_object);
            if let Some(e) = traits.and_then(|t| t.get("email")).and_then(Value::as_str) {
                keys.push(key(b'e', &e.trim().to_lowercase()));
            }
        }
        Item::Cloud(stream, _) => match chronicle_core::customer::id_of_stream(stream) {
            Some(id) => keys.push(key(b'u', id)),
            None => keys.push(key(b's', stream)),
        },
    }
    keys
}

/// Group items that share a resource (transitively), keeping file order within each group.
fn group_by_resources<T>(items: Vec<(u64, T)>, keys_of: impl Fn(&T) -> Vec<u64>) -> Vec<Vec<(u64, T)>> {
    // Union-find over the items: each resource remembers the first item that touched it.
    let mut parent: Vec<usize> = (0..items.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first: HashMap<u64, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(items.len(), Default::default());
    for (i, (_, item)) in items.iter().enumerate() {
        for key in keys_of(item) {
            match first.get(&key) {
                Some(&j) => {
                    let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                    parent[a.max(b)] = a.min(b);
                }
                None => {
                    first.insert(key, i);
                }
            }
        }
    }
    let mut group_of: HashMap<usize, usize, foldhash::fast::RandomState> = HashMap::default();
    let mut groups: Vec<Vec<(u64, T)>> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let r = root(&mut parent, i);
        let g = *group_of.entry(r).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(item);
    }
    groups
}

/// Write one step of a group: a call that changes a customer, or a run of CloudEvents of one
/// stream (one append); returns the lines a rule refused.
async fn write_step(app: &App, tenant: &str, step: Vec<(u64, Item)>) -> Result<Vec<Rejected>, AppError> {
    let lines: Vec<u64> = step.iter().map(|(n, _)| *n).collect();
    let mut rejected = Vec::new();
    let mut calls = Vec::new();
    let mut cloud = Vec::new();
    let mut cloud_stream = String::new();
    for (i, (_, item)) in step.into_iter().enumerate() {
        match item {
            Item::Segment(call) => calls.push(call),
            Item::Cloud(stream, ev) => {
                cloud_stream = stream;
                cloud.push((i, ev));
            }
        }
    }
    if !calls.is_empty() {
        let out = ingest::write_calls(app, tenant, ACTOR, ingest::Sender::Trusted, calls).await?;
        rejected.extend(out.rejected.into_iter().map(|(i, code, message)| Rejected { line: lines[i], code, message }));
    }
    if !cloud.is_empty() {
        for (i, result) in ingest::append_run(app, tenant, cloud_stream, cloud).await {
            match result {
                Ok(()) => {}
                Err(e @ AppError::Internal { .. }) => return Err(e),
                Err(e) => rejected.push(Rejected { line: lines[i], code: e.code(), message: e.to_string() }),
            }
        }
    }
    Ok(rejected)
}

/// The CSV columns that mean something; every other column is a trait.
struct Columns {
    id: usize,
    email: Option<usize>,
    phone: Option<usize>,
    consent_source: Option<usize>,
    consents: Vec<(usize, Channel, Purpose)>,
    traits: Vec<(usize, String)>,
    names: Vec<String>,
}

impl Columns {
    fn of(headers: &csv::StringRecord) -> Result<Columns, AppError> {
        let names: Vec<String> = headers.iter().map(|h| h.trim().to_owned()).collect();
        let find = |alts: &[&str]| names.iter().position(|n| alts.iter().any(|a| n.eq_ignore_ascii_case(a)));
        let id = find(&["id", "user_id", "userId", "customer_id"]).ok_or_else(|| {
            AppError::BadRequest("the CSV header needs an id column (id, user_id or customer_id)".into())
        })?;
        let (email, phone, consent_source) = (find(&["email"]), find(&["phone"]), find(&["consent_source"]));
        let mut consents = Vec::new();
        let mut traits = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if [Some(id), email, phone, consent_source].contains(&Some(i)) {
                continue;
            }
            if let Some(rest) = n.strip_prefix("consent:") {
                let bad = || {
                    AppError::BadRequest(format!(
                        "column {n:?}: write consent:<channel>:<purpose>, e.g. consent:email:marketing"
                    ))
                };
                let (c, p) = rest.split_once(':').ok_or_else(bad)?;
                let channel = serde_json::from_value(json!(c)).map_err(|_| bad())?;
                let purpose = serde_json::from_value(json!(p)).map_err(|_| bad())?;
                consents.push((i, channel, purpose));
            } else if n.is_empty() {
                return Err(AppError::BadRequest(format!("column {} has no name", i + 1)));
            } else {
                traits.push((i, n.clone()));
            }
        }
        Ok(Columns { id, email, phone, consent_source, consents, traits, names })
    }
}

/// One CSV row as a customer's commands (validated) and the key its events' ids derive from.
struct Contact {
    line: u64,
    id: String,
    email: Option<String>,
    phone: Option<String>,
    traits: Map<String, Value>,
    consents: Vec<ConsentInput>,
    key: String,
}

fn contact(cols: &Columns, row: &csv::StringRecord, line: u64, name: &str) -> Result<Contact, Rejected> {
    let reject = |code, message: String| Rejected { line, code, message };
    let field = |i: usize| row.get(i).map(str::trim).filter(|s| !s.is_empty());
    let id = field(cols.id).ok_or_else(|| reject("bad_request", "the id is empty".into()))?.to_owned();
    let email = field_opt(cols.email, &field);
    if let Some(e) = &email {
        chronicle_core::customer::normalize_email(e).map_err(|e| reject("bad_request", e.to_string()))?;
    }
    let phone = field_opt(cols.phone, &field);
    if let Some(p) = &phone {
        chronicle_core::customer::normalize_phone(p).map_err(|e| reject("bad_request", e.to_string()))?;
    }
    let source = field_opt(cols.consent_source, &field).unwrap_or_else(|| "import".into());
    let mut consents = Vec::new();
    for (i, channel, purpose) in &cols.consents {
        let granted = match field(*i).map(str::to_ascii_lowercase).as_deref() {
            None => continue,
            Some("granted" | "true" | "yes" | "1") => true,
            Some("revoked" | "false" | "no" | "0") => false,
            Some(other) => {
                return Err(reject("bad_request", format!("{}: {other:?} is not granted or revoked", cols.names[*i])))
            }
        };
        consents.push(ConsentInput {
            channel: *channel,
            purpose: *purpose,
            granted,
            source: Some(source.clone()),
            legal_basis: None,
            proof: Some(json!({"import": name, "line": line})),
        });
    }
    let traits =
        cols.traits.iter().filter_map(|(i, n)| field(*i).map(|v| (n.clone(), Value::String(v.to_owned())))).collect();
    let mut h = Sha256::new();
    for f in row.iter() {
        h.update(f.as_bytes());
        h.update([0x1f]);
    }
    Ok(Contact { line, id, email, phone, traits, consents, key: format!("import-csv-{}", hex(&h.finalize()[..16])) })
}

fn field_opt<'a>(i: Option<usize>, field: &impl Fn(usize) -> Option<&'a str>) -> Option<String> {
    i.and_then(field).map(str::to_owned)
}

async fn csv_contacts(
    app: &Arc<App>,
    tenant: &str,
    input: impl BufRead,
    name: &str,
    observer: &mut dyn Observer,
) -> Result<Report, AppError> {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let headers = reader.headers().map_err(|e| AppError::BadRequest(format!("reading the CSV header: {e}")))?.clone();
    let cols = Columns::of(&headers)?;
    let mut report = Report::default();
    let mut records = reader.records();
    loop {
        let mut rejected = Vec::new();
        let mut contacts = Vec::new();
        let mut lines = 0u64;
        for row in records.by_ref().take(CHUNK_LINES) {
            lines += 1;
            match row {
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    rejected.push(Rejected { line, code: "bad_request", message: e.to_string() });
                }
                Ok(row) if row.len() != headers.len() => {
                    let line = row.position().map_or(0, |p| p.line());
                    let message = format!("the row has {} fields; the header has {}", row.len(), headers.len());
                    rejected.push(Rejected { line, code: "bad_request", message });
                }
                Ok(row) => {
                    let line = row.position().map_or(0, |p| p.line());
                    match contact(&cols, &row, line, name) {
                        Ok(mut c) => {
                            c.id = app.pseudonyms.id(&c.id).into_owned();
                            contacts.push((line, c))
                        }
                        Err(r) => rejected.push(r),
                    }
                }
            }
        }
        if lines == 0 {
            break;
        }
        let spawn = |group| {
            let (app, tenant, name) = (app.clone(), tenant.to_owned(), name.to_owned());
            tokio::spawn(async move { write_contacts(&app, &tenant, &name, group).await })
        };
        rejected.extend(run_all(group_by_resources(contacts, contact_keys).into_iter().map(spawn)).await?);
        report.tally(lines, rejected, observer);
        observer.progress(lines);
    }
    Ok(report)
}

/// Write one customer's rows in order, each as one append.
/// Rows of one customer, or claiming one address, are written in file order.
fn contact_keys(c: &Contact) -> Vec<u64> {
    let mut k = vec![key(b'u', &c.id)];
    k.extend(c.email.iter().map(|e| key(b'e', &e.trim().to_lowercase())));
    k
}

async fn write_contacts(
    app: &App,
    tenant: &str,
    name: &str,
    contacts: Vec<(u64, Contact)>,
) -> Result<Vec<Rejected>, AppError> {
    let mut rejected = Vec::new();
    for (_, c) in contacts {
        let cmds = match app.customer(tenant, &c.id) {
            Err(_) => vec![CustomerCommand::Register {
                email: c.email,
                phone: c.phone,
                traits: c.traits,
                consents: c.consents,
            }],
            Ok(known) => {
                let mut cmds =
                    vec![CustomerCommand::UpdateProfile { email: c.email, phone: c.phone, traits: c.traits }];
                // Only decisions that differ from the current one are news.
                cmds.extend(
                    c.consents
                        .into_iter()
                        .filter(|i| {
                            known
                                .consents
                                .values()
                                .all(|s| (s.channel, s.purpose) != (i.channel, i.purpose) || s.granted != i.granted)
                        })
                        .map(CustomerCommand::SetConsent),
                );
                cmds
            }
        };
        // The row itself is recorded with its effect, so running the file again never applies
        // an old row on top of a newer one (see `App::customer_commands_from`).
        let record = ("ContactImported".to_owned(), json!({"file": name, "line": c.line}));
        match app.customer_commands_from(tenant, &c.id, cmds, ACTOR, Some((&c.key, app.now())), Some(record)).await {
            Ok(_) => {}
            Err(e @ AppError::Internal { .. }) => return Err(e),
            Err(e) => rejected.push(Rejected { line: c.line, code: e.code(), message: e.to_string() }),
        }
    }
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn general(line: &str) -> ingest::Activity {
        match parse_general("t", &Pseudonyms::default(), 1, line.as_bytes(), now()) {
            Ok(Item::Segment(Call::Activity(a))) => a,
            _ => panic!("not an activity: {line}"),
        }
    }

    fn fast(line: &str) -> Option<ingest::Activity> {
        ingest::activity_from_text("t", line, now(), ACTOR, || derived_message_id(line.as_bytes()))
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().with_timezone(&Utc)
    }

    #[test]
    fn activity_read_from_the_text_is_the_event_the_general_way_gives() {
        let lines = [
            r#"{"type":"track","userId":"u1","event":"Product Viewed","properties":{"sku":"s-1","price":9.5},"context":{"ip":"192.0.2.1"},"messageId":"m1","timestamp":"2026-10-01T10:00:00Z","receivedAt":"2026-10-01T10:00:05Z","sentAt":"2026-10-01T10:00:01Z"}"#,
            r#"{"type":"page","anonymousId":"a1","name":"Pricing","properties":{"path":"/pricing"}}"#,
            r#"{ "type" : "screen", "userId": "u1", "anonymousId": "a1", "name": null, "integrations": {"All": false}, "extra": [1, 2] }"#,
            r#"{"type":"track","userId":"u2","event":"Signed Up","traits":{"plan":"pro"},"messageId":""}"#,
            r#"{"type":"track","userId":"u2","event":"Signed Up","properties":null,"messageId":7}"#,
            r#"{"type":"identify","anonymousId":"a2","traits":{"first_name":"Zoë"},"messageId":"m\u00e9"}"#,
            r#"{"type":"page","userId":"","anonymousId":"a3","timestamp":null,"context":{"library":{"name":"x"}}}"#,
        ];
        for line in lines {
            let (want, got) = (general(line), fast(line).unwrap_or_else(|| panic!("fast path refused {line}")));
            assert_eq!(
                (&got.stream, &got.user_id, &got.anonymous_id),
                (&want.stream, &want.user_id, &want.anonymous_id)
            );
            assert_eq!(got.event, want.event, "{line}");
            assert!(matches!(got.event.data, chronicle_core::envelope::Payload::Text(_)));
        }
    }

    #[test]
    fn what_the_text_path_does_not_handle_goes_the_general_way() {
        let lines = [
            // Changes to a customer, orders, CloudEvents.
            r#"{"type":"identify","userId":"u1","traits":{"email":"a@example.com"}}"#,
            r#"{"type":"alias","userId":"u1","previousId":"a1"}"#,
            r#"{"type":"track","userId":"u1","event":"Order Completed","properties":{"order_id":"o1","total":5}}"#,
            r#"{"specversion":"1.0","type":"x","source":"s","id":"1"}"#,
            // Shapes the general way names or normalises.
            r#"{"type":"track","userId":42,"event":"X"}"#,
            r#"{"type":"track","userId":"u\"1","event":"X"}"#,
            r#"{"type":"track","userId":"u1","event":"X","event":"Y"}"#,
            r#"{"type":"track","userId":"u1","event":""}"#,
            r#"{"type":"track","userId":"u1"}"#,
            r#"{"type":"page"}"#,
            r#"{"type":"page","userId":"u1","timestamp":"yesterday"}"#,
            r#"{"type":"teleport","userId":"u1"}"#,
            r#"{"type":"page","userId":"u1""#,
            r#"[1]"#,
        ];
        for line in lines {
            assert!(fast(line).is_none(), "{line}");
        }
        let long = format!(r#"{{"type":"page","userId":"{}"}}"#, "x".repeat(129));
        assert!(fast(&long).is_none());
    }
}
