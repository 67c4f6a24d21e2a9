//! The mapping import (`chronicle import FILE.csv --mapping MAPPING.toml`): any CSV of events,
//! read through a mapping that names the columns of the customer, the time, and how rows become
//! Segment `track` messages (plus, optionally, one `identify` per customer with traits), which
//! then go through the NDJSON import (so they are validated, written and made idempotent as any
//! Segment line is).
//!
//! - **Grouping**: with `group_by`, rows with the same key anywhere in the file become one event
//!   (an invoice's lines become one `Order Completed`): properties from the group's first row,
//!   `sums` over its rows, `lists` with one object per row. The event's time is the group's
//!   earliest; its rows must name one customer.
//! - **Rules**: `[[events]]` in order; the first whose `when` holds on the group's first row
//!   names the event.
//! - **Guests**: rows whose customer column is empty or one of `guest` are skipped and counted
//!   (`skipped`), not rejected.
//! - **Times** are read with `time_format` (strftime; default RFC 3339); a time without a zone
//!   is read in `time_zone` (`UTC`, the default, or an offset such as `+01:00`).
//! - **Whole or nothing per event**: a group with a bad time, a bad number or two customers is
//!   rejected whole, reported at its first row's line with the line at fault in the message;
//!   the rest of the file is imported. A mapping that names a column the file lacks refuses
//!   the whole file before anything is written.
//! - **Safe to run again**: a message's id derives from its event name and group key (else the
//!   row's content), so a rerun stores nothing new.

use super::{Observer, Rejected, Report};
use crate::app::App;
use crate::error::AppError;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A mapping file (TOML), see the module docs and `docs/import.md`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The column naming the customer (the message's `userId`).
    pub customer: String,
    /// Customer values that mean "no customer" (the empty value always does).
    #[serde(default)]
    pub guest: Vec<String>,
    /// The column of the event's time.
    pub time: String,
    #[serde(default)]
    pub time_format: Option<String>,
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub group_by: Option<String>,
    /// The field separator (default `,`).
    #[serde(default)]
    pub delimiter: Option<char>,
    /// Trait → column: one `identify` per customer, with the values of their first row, at
    /// their earliest time.
    #[serde(default)]
    pub traits: BTreeMap<String, String>,
    pub events: Vec<Rule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub when: Option<When>,
    /// The tracked event's name.
    pub event: String,
    /// Property → value: `Column` (text), `Column:int`, `Column:number`, or `=constant`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Property → a product of columns and numbers summed over the group's rows
    /// (`Quantity * UnitPrice`; a term may be negated: `-Quantity * UnitPrice`).
    #[serde(default)]
    pub sums: BTreeMap<String, String>,
    /// Property → an object per row (its fields as in `properties`).
    #[serde(default)]
    pub lists: BTreeMap<String, BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    pub column: String,
    #[serde(default)]
    pub starts_with: Option<String>,
    #[serde(default)]
    pub equals: Option<String>,
}

/// A value from a row.
#[derive(Debug, Clone)]
enum Field {
    Text(usize),
    Int(usize),
    Number(usize),
    Constant(String),
}

/// A product of terms: (column or number, negated).
#[derive(Debug, Clone)]
struct Product(Vec<(Term, bool)>);

#[derive(Debug, Clone)]
enum Term {
    Column(usize),
    Number(f64),
}

struct CompiledRule {
    when: Option<(usize, Option<String>, Option<String>)>,
    event: String,
    properties: Vec<(String, Field)>,
    sums: Vec<(String, Product)>,
    lists: Vec<(String, Vec<(String, Field)>)>,
}

struct Compiled {
    customer: usize,
    guest: Vec<String>,
    time: usize,
    time_format: Option<String>,
    zone: FixedOffset,
    group_by: Option<usize>,
    traits: Vec<(String, Field)>,
    rules: Vec<CompiledRule>,
}

/// The mapping checked against the file's header: every column it names exists.
fn compile(m: &Mapping, header: &csv::StringRecord) -> Result<Compiled, String> {
    let col = |name: &str| header.iter().position(|h| h == name).ok_or_else(|| format!("the file has no column {name:?}"));
    let field = |spec: &str| -> Result<Field, String> {
        if let Some(c) = spec.strip_prefix('=') {
            return Ok(Field::Constant(c.to_owned()));
        }
        match spec.rsplit_once(':') {
            Some((c, "int")) => Ok(Field::Int(col(c)?)),
            Some((c, "number")) => Ok(Field::Number(col(c)?)),
            Some((c, "text")) => Ok(Field::Text(col(c)?)),
            _ => Ok(Field::Text(col(spec)?)),
        }
    };
    let fields = |m: &BTreeMap<String, String>| m.iter().map(|(k, v)| Ok((k.clone(), field(v)?))).collect::<Result<Vec<_>, String>>();
    let product = |expr: &str| -> Result<Product, String> {
        let mut terms = Vec::new();
        for t in expr.split('*') {
            let t = t.trim();
            let (neg, t) = t.strip_prefix('-').map_or((false, t), |r| (true, r.trim()));
            if t.is_empty() {
                return Err(format!("{expr:?}: an empty term"));
            }
            terms.push((t.parse::<f64>().map_or_else(|_| col(t).map(Term::Column), |x| Ok(Term::Number(x)))?, neg));
        }
        Ok(Product(terms))
    };
    let zone = match m.time_zone.as_deref() {
        None | Some("UTC" | "utc" | "Z") => FixedOffset::east_opt(0).expect("zero"),
        Some(z) => z.parse::<FixedOffset>().map_err(|_| format!("time_zone {z:?}: use UTC or an offset such as +01:00"))?,
    };
    if m.events.is_empty() {
        return Err("a mapping names at least one event ([[events]])".into());
    }
    let rules = m
        .events
        .iter()
        .map(|r| {
            if r.event.trim().is_empty() {
                return Err("an event rule names its event".to_owned());
            }
            Ok(CompiledRule {
                when: r.when.as_ref().map(|w| Ok::<_, String>((col(&w.column)?, w.starts_with.clone(), w.equals.clone()))).transpose()?,
                event: r.event.clone(),
                properties: fields(&r.properties)?,
                sums: r.sums.iter().map(|(k, e)| Ok((k.clone(), product(e)?))).collect::<Result<_, String>>()?,
                lists: r.lists.iter().map(|(k, f)| Ok((k.clone(), fields(f)?))).collect::<Result<_, String>>()?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Compiled {
        customer: col(&m.customer)?,
        guest: m.guest.clone(),
        time: col(&m.time)?,
        time_format: m.time_format.clone(),
        zone,
        group_by: m.group_by.as_deref().map(col).transpose()?,
        traits: fields(&m.traits)?,
        rules,
    })
}

impl Compiled {
    fn time(&self, text: &str) -> Result<DateTime<Utc>, String> {
        let t = match &self.time_format {
            None => DateTime::parse_from_rfc3339(text).map(|t| t.with_timezone(&Utc)).map_err(|e| e.to_string()),
            Some(f) => DateTime::parse_from_str(text, f).map(|t| t.with_timezone(&Utc)).or_else(|_| {
                NaiveDateTime::parse_from_str(text, f)
                    .map_err(|e| e.to_string())
                    .and_then(|n| n.and_local_timezone(self.zone).single().ok_or_else(|| "no such local time".into()))
                    .map(|t| t.with_timezone(&Utc))
            }),
        }
        .map_err(|e| format!("time {text:?}: {e}"))?;
        chronicle_core::time::check("time", t).map_err(|e| e.to_string())
    }
}

fn value(f: &Field, row: &csv::StringRecord) -> Result<Value, String> {
    let cell = |c: &usize| row.get(*c).unwrap_or_default().trim();
    match f {
        Field::Constant(c) => Ok(json!(c)),
        Field::Text(c) => Ok(json!(cell(c))),
        Field::Int(c) => cell(c).parse::<i64>().map(Value::from).map_err(|_| format!("{:?} is not an integer", cell(c))),
        Field::Number(c) => number(cell(c)).map(Value::from),
    }
}

fn number(text: &str) -> Result<f64, String> {
    text.parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| format!("{text:?} is not a number"))
}

fn object(fields: &[(String, Field)], row: &csv::StringRecord) -> Result<Map<String, Value>, String> {
    fields.iter().map(|(k, f)| Ok((k.clone(), value(f, row)?))).collect()
}

/// Sums are rounded to 6 decimal places, so binary noise (2.95 × 6 = 17.700000000000003) does
/// not reach the events.
fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

struct Group {
    key: String,
    customer: String,
    /// (line, row), in file order.
    rows: Vec<(u64, csv::StringRecord)>,
    time: DateTime<Utc>,
    error: Option<String>,
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    format!("csv-{:x}", u128::from_be_bytes(h.finalize()[..16].try_into().expect("16 bytes")))
}

/// The Segment messages a file makes through a mapping, each with the CSV line it reports at
/// and how many rows it carries; the rows rejected on the way; the guest rows skipped.
pub struct Converted {
    pub messages: Vec<(u64, u64, Value)>,
    pub rejected: Vec<(Rejected, u64)>,
    pub rows: u64,
    pub skipped: u64,
}

/// Read a CSV through a mapping (the whole file: groups may be spread across it).
pub fn convert(mapping: &Mapping, input: impl std::io::Read) -> Result<Converted, AppError> {
    let bad = |e: String| AppError::BadRequest(e);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(mapping.delimiter.map_or(b',', |c| c as u8))
        .flexible(true)
        .from_reader(input);
    let header = reader.headers().map_err(|e| bad(format!("reading the header: {e}")))?.clone();
    let c = compile(mapping, &header).map_err(|e| bad(format!("the mapping: {e}")))?;
    let mut out = Converted { messages: Vec::new(), rejected: Vec::new(), rows: 0, skipped: 0 };
    let mut groups: Vec<Group> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(bad(format!("line {line}: {e}"))),
        }
        out.rows += 1;
        let customer = record.get(c.customer).unwrap_or_default().trim();
        if customer.is_empty() || c.guest.iter().any(|g| g == customer) {
            out.skipped += 1;
            continue;
        }
        let time = c.time(record.get(c.time).unwrap_or_default().trim());
        let key = match c.group_by {
            Some(g) => record.get(g).unwrap_or_default().trim().to_owned(),
            None => record.iter().collect::<Vec<_>>().join("\u{1f}"),
        };
        let i = *by_key.entry(key.clone()).or_insert_with(|| {
            groups.push(Group { key, customer: customer.to_owned(), rows: Vec::new(), time: DateTime::<Utc>::MAX_UTC, error: None });
            groups.len() - 1
        });
        let g = &mut groups[i];
        match time {
            Ok(t) => g.time = g.time.min(t),
            Err(e) => g.error = g.error.take().or(Some(format!("line {line}: {e}"))),
        }
        if g.customer != customer {
            g.error = g.error.take().or(Some(format!("line {line}: the group's rows name two customers ({:?}, {customer:?})", g.customer)));
        }
        g.rows.push((line, record.clone()));
    }
    // One identify per customer with traits: at their earliest time, with their first row's values.
    let mut firsts: BTreeMap<&str, (u64, DateTime<Utc>, &csv::StringRecord)> = BTreeMap::new();
    for g in groups.iter().filter(|g| g.error.is_none()) {
        let (line, row) = (&g.rows[0].0, &g.rows[0].1);
        let e = firsts.entry(&g.customer).or_insert((*line, g.time, row));
        if *line < e.0 {
            (e.0, e.2) = (*line, row);
        }
        e.1 = e.1.min(g.time);
    }
    if !c.traits.is_empty() {
        for (customer, (line, time, row)) in &firsts {
            match object(&c.traits, row) {
                Ok(traits) => out.messages.push((*line, 0, json!({"type": "identify", "userId": customer, "traits": traits,
                    "timestamp": time.to_rfc3339(), "messageId": digest(&["identify", customer])}))),
                Err(e) => out.rejected.push((Rejected { line: *line, code: "bad_value", message: format!("traits: {e}") }, 0)),
            }
        }
    }
    for g in groups {
        let line = g.rows[0].0;
        let n = g.rows.len() as u64;
        let event = match &g.error {
            Some(e) => Err(e.clone()),
            None => event_of(&c, &g),
        };
        match event {
            Ok((name, properties)) => out.messages.push((line, n, json!({"type": "track", "userId": g.customer, "event": name,
                "properties": properties, "timestamp": g.time.to_rfc3339(), "messageId": digest(&[&name, &g.key])}))),
            Err(message) => out.rejected.push((Rejected { line, code: "bad_row", message }, n)),
        }
    }
    Ok(out)
}

/// A group's event: the first rule that holds, its properties, sums and lists.
fn event_of(c: &Compiled, g: &Group) -> Result<(String, Map<String, Value>), String> {
    let first = &g.rows[0].1;
    let holds = |r: &&CompiledRule| match &r.when {
        None => true,
        Some((col, starts, equals)) => {
            let v = first.get(*col).unwrap_or_default().trim();
            starts.as_deref().is_none_or(|s| v.starts_with(s)) && equals.as_deref().is_none_or(|e| v == e)
        }
    };
    let rule = c.rules.iter().find(holds).ok_or_else(|| "no event rule holds for this row".to_owned())?;
    let mut props = object(&rule.properties, first)?;
    for (k, Product(terms)) in &rule.sums {
        let mut sum = 0.0;
        for (line, row) in &g.rows {
            let mut x = 1.0;
            for (t, neg) in terms {
                let v = match t {
                    Term::Number(n) => *n,
                    Term::Column(col) => number(row.get(*col).unwrap_or_default().trim()).map_err(|e| format!("line {line}: {k}: {e}"))?,
                };
                x *= if *neg { -v } else { v };
            }
            sum += x;
        }
        props.insert(k.clone(), json!(round6(sum)));
    }
    for (k, fields) in &rule.lists {
        let items = g.rows.iter().map(|(line, row)| object(fields, row).map(Value::Object).map_err(|e| format!("line {line}: {k}: {e}")));
        props.insert(k.clone(), Value::Array(items.collect::<Result<_, String>>()?));
    }
    Ok((rule.event.clone(), props))
}

/// Import a CSV of events through a mapping. The report counts CSV rows: `lines` read,
/// `skipped` (guests), `rejected` (rows of rejected events), `imported` (the rest).
pub async fn import(
    app: &Arc<App>,
    tenant: &str,
    mapping: &Mapping,
    input: impl std::io::Read + Send + 'static,
    observer: &mut dyn Observer,
) -> Result<Report, AppError> {
    if !app.views().tenant_exists(tenant) {
        return Err(AppError::BadRequest(format!("no tenant {tenant:?}; create it with `chronicle tenant create`")));
    }
    let mapping = mapping.clone();
    let conv = tokio::task::spawn_blocking(move || convert(&mapping, input))
        .await
        .map_err(|e| AppError::internal("reading a mapped CSV", e))??;
    let mut text = Vec::new();
    for (_, _, m) in &conv.messages {
        serde_json::to_writer(&mut text, m).expect("JSON");
        text.push(b'\n');
    }
    let head = app.store().head().await?;
    let mut mapped = Mapped { inner: observer, messages: &conv.messages, rejected: Vec::new(), done: 0, reported: 0 };
    super::ndjson(app, tenant, std::io::Cursor::new(text), &mut mapped).await?;
    let refused = mapped.rejected.len() as u64;
    let mut rejected: Vec<(Rejected, u64)> = conv.rejected;
    rejected.extend(mapped.rejected);
    rejected.sort_by_key(|(r, _)| r.line);
    let rows_rejected: u64 = rejected.iter().map(|(_, n)| n).sum();
    for (r, _) in rejected {
        observer.rejected(r);
    }
    Ok(Report {
        lines: conv.rows,
        imported: conv.rows - conv.skipped - rows_rejected,
        rejected: rows_rejected,
        skipped: conv.skipped,
        events: conv.messages.len() as u64 - refused,
        new_events: app.store().head().await? - head,
    })
}

/// The NDJSON import's observer, reporting rejected messages at the CSV lines they came from.
struct Mapped<'a> {
    inner: &'a mut dyn Observer,
    messages: &'a [(u64, u64, Value)],
    rejected: Vec<(Rejected, u64)>,
    done: u64,
    reported: u64,
}

impl Observer for Mapped<'_> {
    fn progress(&mut self, lines: u64) {
        // Messages done, told as CSV lines: up to the line the last of them came from.
        self.done += lines;
        if let Some(&(line, _, _)) = self.done.checked_sub(1).and_then(|i| self.messages.get(i as usize)) {
            if line > self.reported {
                self.inner.progress(line - self.reported);
                self.reported = line;
            }
        }
    }

    fn rejected(&mut self, mut r: Rejected) {
        let (line, rows, _) = self.messages[(r.line - 1) as usize];
        r.line = line;
        self.rejected.push((r, rows));
    }
}
