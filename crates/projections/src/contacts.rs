//! The contact list's indexes, kept by the fold beside the customers they index, so a list, a
//! search or a filter reads an ordered set instead of scanning every customer:
//!
//! - orders: by creation time, by name (`first last`, lower-cased; a customer without a name
//!   sorts by id after the named ones) and by last activity (to the hour: an activity event moves
//!   a customer in it at most once an hour, which keeps the per-event cost of the fold flat);
//! - search: the lower-cased e-mail address, first name and last name, each a prefix key;
//! - filters: tag, lifecycle stage, owner and status.
//!
//! Not part of the checkpoint: it is derived from the customers and rebuilt when views are
//! loaded ([`ContactIndex::rebuild`]). Erased and merged customers are not listed unless their
//! status is asked for.

use crate::map::Map;
use chrono::{DateTime, Utc};
use chronicle_core::customer::{Customer, CustomerStatus};
use std::collections::BTreeSet;

/// How a list is ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    /// Oldest first.
    #[default]
    Created,
    Name,
    /// Most recently active first.
    Activity,
}

/// A list request: what to match, in which order, from where.
#[derive(Debug, Clone, Default)]
pub struct ContactQuery {
    /// A prefix of the e-mail address, first name or last name (any case).
    pub q: Option<String>,
    pub email: Option<String>,
    pub tag: Option<String>,
    pub stage: Option<String>,
    pub owner: Option<String>,
    /// `active` | `deactivated` | `erased` | `merged`; without it, active and deactivated.
    pub status: Option<String>,
    pub sort: SortBy,
    /// The cursor of the previous page (its `next`).
    pub after: Option<String>,
    pub limit: usize,
}

/// One page of a list: the customers' ids in order, and the cursor of the next page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactPage {
    pub ids: Vec<String>,
    pub next: Option<String>,
}

/// What is indexed of one customer (kept, to take it out again when the customer changes).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    created: (i64, String),
    name: (String, String),
    tokens: Vec<String>,
    tags: Vec<String>,
    stage: Option<String>,
    owner: Option<String>,
    status: &'static str,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactIndex {
    by_created: BTreeSet<(i64, String)>,
    by_name: BTreeSet<(String, String)>,
    /// (−hour of last activity, id): most recent first in ascending order.
    by_activity: BTreeSet<(i64, String)>,
    activity_hour: Map<String, i64>,
    tokens: BTreeSet<(String, String)>,
    tags: Map<String, BTreeSet<String>>,
    stages: Map<String, BTreeSet<String>>,
    owners: Map<String, BTreeSet<String>>,
    statuses: Map<String, BTreeSet<String>>,
    entries: Map<String, Entry>,
}

/// Names sort before ids: `\u{1}` before any letter, `\u{2}` for the unnamed.
fn name_key(c: &Customer) -> String {
    let part = |k: &str| c.traits.get(k).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty()).map(str::to_lowercase);
    match (part("first_name"), part("last_name")) {
        (None, None) => format!("\u{2}{}", c.id.to_lowercase()),
        (f, l) => format!("\u{1}{} {}", f.unwrap_or_default(), l.unwrap_or_default()),
    }
}

fn entry_of(c: &Customer) -> Entry {
    let mut tokens: Vec<String> = Vec::new();
    if let Some(e) = &c.email {
        tokens.push(e.to_lowercase());
    }
    for k in ["first_name", "last_name"] {
        if let Some(v) = c.traits.get(k).and_then(|v| v.as_str()) {
            for word in v.split_whitespace() {
                tokens.push(word.to_lowercase());
            }
        }
    }
    tokens.sort();
    tokens.dedup();
    Entry {
        created: (c.created_at.map_or(i64::MIN, |t| t.timestamp_micros()), c.id.clone()),
        name: (name_key(c), c.id.clone()),
        tokens,
        tags: c.tags.iter().cloned().collect(),
        stage: c.lifecycle_stage.and_then(|s| serde_json::to_value(s).ok()?.as_str().map(str::to_owned)),
        owner: c.owner.clone(),
        status: status_name(c.status),
    }
}

fn status_name(s: CustomerStatus) -> &'static str {
    match s {
        CustomerStatus::Active => "active",
        CustomerStatus::Deactivated => "deactivated",
        CustomerStatus::Erased => "erased",
        CustomerStatus::Merged => "merged",
    }
}

fn add(map: &mut Map<String, BTreeSet<String>>, key: &str, id: &str) {
    match map.get_mut(key) {
        Some(set) => {
            set.insert(id.to_owned());
        }
        None => {
            map.insert(key.to_owned(), BTreeSet::from([id.to_owned()]));
        }
    }
}

fn take(map: &mut Map<String, BTreeSet<String>>, key: &str, id: &str) {
    if let Some(set) = map.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

impl ContactIndex {
    /// Index `c` as it is now (after an event changed it); a customer not yet registered
    /// (`exists` false: only activity seen) is not listed.
    pub fn update(&mut self, c: &Customer) {
        let new = c.exists.then(|| entry_of(c));
        if self.entries.get(&c.id) == new.as_ref() {
            return;
        }
        if let Some(old) = self.entries.remove(&c.id) {
            self.by_created.remove(&old.created);
            self.by_name.remove(&old.name);
            for t in &old.tokens {
                self.tokens.remove(&(t.clone(), c.id.clone()));
            }
            for t in &old.tags {
                take(&mut self.tags, t, &c.id);
            }
            if let Some(s) = &old.stage {
                take(&mut self.stages, s, &c.id);
            }
            if let Some(o) = &old.owner {
                take(&mut self.owners, o, &c.id);
            }
            take(&mut self.statuses, old.status, &c.id);
        }
        let Some(new) = new else { return };
        self.by_created.insert(new.created.clone());
        self.by_name.insert(new.name.clone());
        for t in &new.tokens {
            self.tokens.insert((t.clone(), c.id.clone()));
        }
        for t in &new.tags {
            add(&mut self.tags, t, &c.id);
        }
        if let Some(s) = &new.stage {
            add(&mut self.stages, s, &c.id);
        }
        if let Some(o) = &new.owner {
            add(&mut self.owners, o, &c.id);
        }
        add(&mut self.statuses, new.status, &c.id);
        if !self.activity_hour.contains_key(&c.id) {
            // Registered without activity yet: last in the activity order.
            self.activity_hour.insert(c.id.clone(), i64::MIN + 1);
            self.by_activity.insert((i64::MAX, c.id.clone()));
        }
        self.entries.insert(c.id.clone(), new);
    }

    /// The customer was active at `at`: moved in the activity order when the hour changed.
    pub fn note_activity(&mut self, id: &str, at: DateTime<Utc>) {
        let hour = at.timestamp().div_euclid(3600);
        match self.activity_hour.get_mut(id) {
            Some(h) if *h >= hour => {}
            Some(h) => {
                self.by_activity.remove(&(h.saturating_neg(), id.to_owned()));
                self.by_activity.remove(&(i64::MAX, id.to_owned()));
                *h = hour;
                self.by_activity.insert((-hour, id.to_owned()));
            }
            None => {
                self.activity_hour.insert(id.to_owned(), hour);
                self.by_activity.insert((-hour, id.to_owned()));
            }
        }
    }

    /// Rebuilt from the customers and their last activity (after views are loaded).
    pub fn rebuild<'a>(customers: impl Iterator<Item = &'a Customer>, last_active: impl Iterator<Item = (&'a String, &'a DateTime<Utc>)>) -> ContactIndex {
        let mut index = ContactIndex::default();
        for (id, at) in last_active {
            index.note_activity(id, *at);
        }
        for c in customers {
            index.update(c);
        }
        index
    }

    fn order(&self, sort: SortBy) -> Box<dyn DoubleEndedIterator<Item = (Cursor, &String)> + '_> {
        match sort {
            SortBy::Created => Box::new(self.by_created.iter().map(|(k, id)| (Cursor::Num(*k), id))),
            SortBy::Name => Box::new(self.by_name.iter().map(|(k, id)| (Cursor::Text(k.clone()), id))),
            SortBy::Activity => Box::new(self.by_activity.iter().map(|(k, id)| (Cursor::Num(*k), id))),
        }
    }

    fn sort_key(&self, sort: SortBy, id: &str) -> Option<Cursor> {
        let e = self.entries.get(id)?;
        Some(match sort {
            SortBy::Created => Cursor::Num(e.created.0),
            SortBy::Name => Cursor::Text(e.name.0.clone()),
            SortBy::Activity => Cursor::Num(self.activity_hour.get(id).map_or(i64::MAX, |h| if *h == i64::MIN + 1 { i64::MAX } else { -h })),
        })
    }

    /// One page of the customers `q` matches, in its order, after its cursor.
    pub fn query(&self, q: &ContactQuery) -> Result<ContactPage, String> {
        let after = match &q.after {
            Some(a) => Some(decode_cursor(a).ok_or_else(|| format!("{a:?} is not a cursor of this list"))?),
            None => None,
        };
        let listed = |id: &str| -> bool {
            let Some(e) = self.entries.get(id) else { return false };
            match &q.status {
                Some(s) => e.status == s.as_str(),
                None => matches!(e.status, "active" | "deactivated"),
            }
        };
        // The candidates a filter gives (the smallest of them), if any filter is given.
        let mut sets: Vec<BTreeSet<&String>> = Vec::new();
        if let Some(text) = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            let prefix = text.to_lowercase();
            let found: BTreeSet<&String> = self
                .tokens
                .range((prefix.clone(), String::new())..)
                .take_while(|(t, _)| t.starts_with(&prefix))
                .map(|(_, id)| id)
                .collect();
            sets.push(found);
        }
        for (map, key) in [(&self.tags, &q.tag), (&self.stages, &q.stage), (&self.owners, &q.owner)] {
            if let Some(k) = key {
                sets.push(map.get(k.as_str()).map(|s| s.iter().collect()).unwrap_or_default());
            }
        }
        if let Some(email) = &q.email {
            let email = email.trim().to_lowercase();
            sets.push(self.tokens.range((email.clone(), String::new())..).take_while(|(t, _)| *t == email).map(|(_, id)| id).collect());
        }
        let limit = q.limit.max(1);
        let mut ids: Vec<(Cursor, String)> = Vec::with_capacity(limit + 1);
        if sets.is_empty() {
            for (key, id) in self.order(q.sort) {
                if after.as_ref().is_some_and(|(k, i)| (&key, id) <= (k, i)) {
                    continue;
                }
                if listed(id) {
                    ids.push((key, id.clone()));
                    if ids.len() > limit {
                        break;
                    }
                }
            }
        } else {
            sets.sort_by_key(BTreeSet::len);
            let (first, rest) = sets.split_first().expect("not empty");
            let mut found: Vec<(Cursor, String)> = first
                .iter()
                .filter(|id| rest.iter().all(|s| s.contains(*id)) && listed(id))
                .filter_map(|id| Some((self.sort_key(q.sort, id)?, (*id).clone())))
                .filter(|(k, id)| after.as_ref().is_none_or(|(ak, ai)| (k, id) > (ak, ai)))
                .collect();
            found.sort();
            found.truncate(limit + 1);
            ids = found;
        }
        let more = ids.len() > limit;
        ids.truncate(limit);
        let next = if more { ids.last().map(|(k, id)| encode_cursor(k, id)) } else { None };
        Ok(ContactPage { ids: ids.into_iter().map(|(_, id)| id).collect(), next })
    }

    /// Customers listed (active or deactivated).
    pub fn len(&self) -> usize {
        self.entries.values().filter(|e| matches!(e.status, "active" | "deactivated")).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A position in an order: the sort key and the id (ties broken by id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cursor {
    Num(i64),
    Text(String),
}

/// A cursor is opaque to clients: the sort key and id, hex-encoded (safe in a URL).
fn encode_cursor(k: &Cursor, id: &str) -> String {
    let raw = match k {
        Cursor::Num(n) => format!("n{n}\u{0}{id}"),
        Cursor::Text(t) => format!("t{t}\u{0}{id}"),
    };
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_cursor(s: &str) -> Option<(Cursor, String)> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    let raw = String::from_utf8(bytes?).ok()?;
    let (key, id) = raw.split_once('\u{0}')?;
    let k = match key.split_at_checked(1)? {
        ("n", n) => Cursor::Num(n.parse().ok()?),
        ("t", t) => Cursor::Text(t.to_owned()),
        _ => return None,
    };
    Some((k, id.to_owned()))
}
