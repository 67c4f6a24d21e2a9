//! The analytics index: a tenant's events kept compact in memory, so an answer scans rows of
//! numbers instead of decoding the log. Built by [`Index::add`] in log order (the application
//! catches it up from the log before each answer); pure, no I/O.
//!
//! What a row keeps: its stream, event type and tracked name (interned), event time, ingest
//! time and position (both clocks, for [`Horizon`]), and its properties (keys and values
//! interned; a value whose JSON text is longer than [`MAX_VALUE_LEN`] is kept as "long" and
//! cannot be filtered on), with a page's or track's `context.campaign` as `utm_source`,
//! `utm_medium` and `utm_campaign` unless its properties name those. Beside the rows: who is who (`IdentityLinked`, `CustomerMergedInto`)
//! and, per customer stream, the events that set traits, so a trait can be read as it was at any
//! instant. An erasure (`CustomerErased`) drops the erased person's properties and traits from
//! the index at once; what is left of their events is what the log keeps in the clear (type and
//! times).

use crate::Horizon;
use chronicle_core::customer::{self, Customer, CustomerEvent};
use chronicle_core::envelope::{EventEnvelope, EXPIRED_TYPE};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// No such name, value or row.
pub const NONE: u32 = u32::MAX;
/// The longest value (as JSON text) kept for filters and breakdowns.
pub const MAX_VALUE_LEN: usize = 200;
/// The value id of a value too long to keep.
pub const LONG: u32 = u32::MAX - 1;

/// Strings to dense ids.
#[derive(Debug, Default)]
pub struct Interner {
    ids: HashMap<Box<str>, u32>,
    texts: Vec<Box<str>>,
    bytes: usize,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.texts.len() as u32;
        self.texts.push(s.into());
        self.ids.insert(s.into(), id);
        self.bytes += 2 * s.len();
        id
    }

    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub fn text(&self, id: u32) -> &str {
        &self.texts[id as usize]
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Roughly the heap this interner takes.
    fn heap_bytes(&self) -> usize {
        self.bytes + self.texts.capacity() * 16 + self.ids.capacity() * 28
    }
}

/// One event.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub stream: u32,
    /// The event type, in [`Index::names`].
    pub ty: u32,
    /// A tracked event's name (`ActivityTracked`), in [`Index::names`]; else [`NONE`].
    pub name: u32,
    /// Event time and ingest time, in microseconds since the Unix epoch.
    pub time: i64,
    pub ingest: i64,
    pub position: u64,
    props: u32,
    nprops: u32,
}

/// A [`Horizon`] in the rows' units: which rows an answer sees.
#[derive(Debug, Clone, Copy)]
pub struct Visible {
    known_at: u64,
    as_of: i64,
    known_by: Option<i64>,
}

impl Visible {
    #[inline]
    pub fn sees(&self, r: &Row) -> bool {
        r.position <= self.known_at && r.time <= self.as_of && self.known_by.is_none_or(|k| r.ingest <= k)
    }
}

impl Horizon {
    pub fn visible(&self) -> Visible {
        Visible { known_at: self.known_at, as_of: self.as_of.timestamp_micros(), known_by: self.known_by.map(|t| t.timestamp_micros()) }
    }
}

/// A customer stream's link to an anonymous history, or its merge into a survivor, with the row
/// that recorded it (so the horizon decides whether it is part of an answer).
#[derive(Debug, Clone, Copy)]
pub struct Edge {
    pub row: u32,
    pub from: u32,
    pub to: u32,
}

#[derive(Debug, Default)]
pub struct Index {
    /// The highest log position added.
    pub position: u64,
    /// Event types and tracked names.
    pub names: Interner,
    pub keys: Interner,
    /// Values as JSON text.
    pub values: Interner,
    pub streams: Interner,
    pub rows: Vec<Row>,
    props: Vec<(u32, u32)>,
    /// Anonymous stream → customer stream (`IdentityLinked`), in log order.
    pub links: Vec<Edge>,
    /// Merged customer stream → survivor's stream (`CustomerMergedInto`), in log order.
    pub merges: Vec<Edge>,
    /// Per customer stream, the events that set its traits, with their rows, in log order.
    traits: HashMap<u32, Vec<(u32, CustomerEvent)>>,
    /// Customer streams erased (`CustomerErased`).
    pub erased: HashSet<u32>,
}

/// Whether a customer event changes traits (see `Customer::apply`).
fn sets_traits(event_type: &str) -> bool {
    matches!(event_type, "CustomerRegistered" | "CustomerProfileUpdated" | "CustomersMerged" | "CustomerErased")
}

/// A value's JSON text when short enough to keep.
pub fn value_key(v: &Value) -> Option<String> {
    let text = v.to_string();
    (text.len() <= MAX_VALUE_LEN).then_some(text)
}

impl Index {
    /// An index of these events (any order; they are added in log order).
    pub fn of(events: &[EventEnvelope]) -> Index {
        let mut refs: Vec<&EventEnvelope> = events.iter().collect();
        refs.sort_by_key(|e| e.position);
        let mut ix = Index::default();
        for e in refs {
            ix.add(e);
        }
        ix
    }

    /// Add one event (in log order). Internal streams (`_…`) and expired events' tombstones are
    /// left out; the position still moves.
    pub fn add(&mut self, ev: &EventEnvelope) {
        self.position = self.position.max(ev.position);
        if ev.event_type == EXPIRED_TYPE || ev.stream.starts_with('_') {
            return;
        }
        let row = self.rows.len() as u32;
        let stream = self.streams.intern(&ev.stream);
        let ty = self.names.intern(&ev.event_type);
        let tracked = ev.event_type == "ActivityTracked";
        let name = match ev.data.get("event").and_then(Value::as_str) {
            Some(n) if tracked => self.names.intern(n),
            _ => NONE,
        };
        let fields = if tracked { ev.data.get("properties") } else { Some(&ev.data) };
        let start = self.props.len() as u32;
        if let Some(Value::Object(m)) = fields {
            for (k, v) in m {
                let key = self.keys.intern(k);
                let value = value_key(v).map_or(LONG, |t| self.values.intern(&t));
                self.props.push((key, value));
            }
        }
        // A page's or track's campaign context (Segment's `context.campaign`) as `utm_*`
        // properties, unless the properties carry their own.
        if let Some(Value::Object(c)) = ev.data.get("context").and_then(|c| c.get("campaign")).filter(|_| tracked) {
            for (field, as_key) in [("source", "utm_source"), ("medium", "utm_medium"), ("name", "utm_campaign")] {
                let Some(v) = c.get(field) else { continue };
                let key = self.keys.intern(as_key);
                if self.props[start as usize..].iter().all(|(k, _)| *k != key) {
                    let value = value_key(v).map_or(LONG, |t| self.values.intern(&t));
                    self.props.push((key, value));
                }
            }
        }
        let nprops = self.props.len() as u32 - start;
        self.rows.push(Row {
            stream,
            ty,
            name,
            time: ev.event_time.timestamp_micros(),
            ingest: ev.ingest_time.timestamp_micros(),
            position: ev.position,
            props: start,
            nprops,
        });
        if customer::id_of_stream(&ev.stream).is_none() {
            return;
        }
        match ev.event_type.as_str() {
            "IdentityLinked" => {
                if let Some(a) = ev.data.get("anonymous_id").and_then(Value::as_str) {
                    let from = self.streams.intern(&format!("anonymous-{a}"));
                    self.links.push(Edge { row, from, to: stream });
                }
            }
            "CustomerMergedInto" => {
                if let Some(s) = ev.data.get("survivor").and_then(Value::as_str) {
                    let to = self.streams.intern(&customer::stream_of(s));
                    self.merges.push(Edge { row, from: stream, to });
                }
            }
            _ => {}
        }
        if sets_traits(&ev.event_type) {
            if let Ok(e) = CustomerEvent::from_parts(&ev.event_type, &ev.data) {
                if let CustomerEvent::CustomerErased { anonymous_ids, .. } = &e {
                    let mut gone = vec![stream];
                    gone.extend(anonymous_ids.iter().filter_map(|a| self.streams.get(&format!("anonymous-{a}"))));
                    self.redact(&gone);
                    self.erased.insert(stream);
                }
                self.traits.entry(stream).or_default().push((row, e));
            }
        }
    }

    /// An erasure: the streams' properties and traits leave the index.
    fn redact(&mut self, streams: &[u32]) {
        for r in self.rows.iter_mut().filter(|r| streams.contains(&r.stream)) {
            r.nprops = 0;
        }
        for s in streams {
            self.traits.remove(s);
        }
    }

    /// A row's properties: (key id, value id).
    pub fn props(&self, r: &Row) -> &[(u32, u32)] {
        &self.props[r.props as usize..(r.props + r.nprops) as usize]
    }

    /// A row's property value id, if it has the key.
    pub fn prop(&self, r: &Row, key: u32) -> Option<u32> {
        self.props(r).iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A property key's id ([`NONE`] when no event has it).
    pub fn key(&self, k: &str) -> u32 {
        self.keys.get(k).unwrap_or(NONE)
    }

    /// An event type's or tracked name's id ([`NONE`] when no event has it).
    pub fn name(&self, n: &str) -> u32 {
        self.names.get(n).unwrap_or(NONE)
    }

    /// A row's property value, unless missing or too long to keep.
    pub fn value(&self, r: &Row, key: u32) -> Option<Value> {
        self.prop(r, key).filter(|v| *v != LONG).and_then(|v| serde_json::from_str(self.values.text(v)).ok())
    }

    /// A row's property as a number.
    pub fn number(&self, r: &Row, key: u32) -> Option<f64> {
        self.value(r, key).and_then(|v| v.as_f64())
    }

    /// An order's value: its `total`, else its `revenue` (the rule ingest gives the order
    /// aggregate), 0 without either.
    pub fn order_value(&self, r: &Row) -> f64 {
        let v = |k: &str| self.number(r, self.key(k));
        v("total").or_else(|| v("revenue")).unwrap_or(0.0)
    }

    /// The customer id of a person (see [`people`](Self::people)), unless the person is an
    /// anonymous history or erased.
    pub fn customer(&self, person: u32) -> Option<&str> {
        if person == NONE || self.erased.contains(&person) {
            return None;
        }
        customer::id_of_stream(self.streams.text(person))
    }

    /// A customer's trait as it was at `at_us` (event time): their stream's trait-setting events
    /// part of the answer and not after that instant, folded in order.
    pub fn trait_at(&self, stream: u32, name: &str, at_us: i64, seen: impl Fn(&Row) -> bool) -> Option<Value> {
        let evs = self.traits.get(&stream)?;
        let mut c = Customer::new(customer::id_of_stream(self.streams.text(stream)).unwrap_or_default());
        for (row, e) in evs {
            let r = &self.rows[*row as usize];
            if seen(r) && r.time <= at_us {
                c.apply(e, 0, chrono::DateTime::from_timestamp_micros(r.time).unwrap_or_default());
            }
        }
        c.traits.get(name).filter(|v| !v.is_null()).cloned()
    }

    /// Roughly the memory the index takes, in bytes.
    pub fn heap_bytes(&self) -> usize {
        let traits: usize = self.traits.values().map(|v| 64 + v.len() * 160).sum();
        self.rows.capacity() * std::mem::size_of::<Row>()
            + self.props.capacity() * 8
            + (self.links.capacity() + self.merges.capacity()) * std::mem::size_of::<Edge>()
            + self.names.heap_bytes()
            + self.keys.heap_bytes()
            + self.values.heap_bytes()
            + self.streams.heap_bytes()
            + traits
    }

    /// Each stream's person as part of an answer: a customer stream counts for the end of its
    /// merge chain, an anonymous history for the customer it was linked to (else for itself);
    /// other streams for no one ([`NONE`]). Links and merges count when the horizon sees them.
    pub fn people(&self, seen: impl Fn(&Row) -> bool) -> Vec<u32> {
        let mut merged: HashMap<u32, u32> = HashMap::new();
        for m in self.merges.iter().filter(|m| seen(&self.rows[m.row as usize])) {
            merged.insert(m.from, m.to);
        }
        let mut linked: HashMap<u32, u32> = HashMap::new();
        for l in self.links.iter().filter(|l| seen(&self.rows[l.row as usize])) {
            linked.insert(l.from, l.to);
        }
        let survivor = |mut s: u32| {
            for _ in 0..16 {
                match merged.get(&s) {
                    Some(&t) => s = t,
                    None => break,
                }
            }
            s
        };
        (0..self.streams.len() as u32)
            .map(|s| {
                let text = self.streams.text(s);
                if customer::id_of_stream(text).is_some() {
                    survivor(s)
                } else if text.starts_with("anonymous-") {
                    linked.get(&s).map_or(s, |&c| survivor(c))
                } else {
                    NONE
                }
            })
            .collect()
    }
}
