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
use chronicle_core::customer::{Customer, CustomerStatus, LifecycleStage};
use std::collections::BTreeSet;
use std::ops::Bound::{Excluded, Unbounded};

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

impl std::str::FromStr for SortBy {
    type Err = String;
    fn from_str(s: &str) -> Result<SortBy, String> {
        match s {
            "created" => Ok(SortBy::Created),
            "name" => Ok(SortBy::Name),
            "activity" => Ok(SortBy::Activity),
            other => Err(format!("sort is created, name or activity, not {other:?}")),
        }
    }
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
    /// Members of this segment only (the caller gives its members to [`ContactIndex::query_in`]).
    pub segment: Option<String>,
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
    created: i64,
    email: Option<String>,
    first: Option<String>,
    last: Option<String>,
    tags: Vec<String>,
    stage: Option<LifecycleStage>,
    owner: Option<String>,
    status: &'static str,
    /// Derived from the above: the name order's key and the search words.
    name: String,
    tokens: Vec<String>,
}

fn trait_str<'a>(c: &'a Customer, key: &str) -> Option<&'a str> {
    c.traits.get(key).and_then(|v| v.as_str())
}

/// A stage's name as the API spells it (the key of the stage filter).
fn stage_name(s: LifecycleStage) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

/// Whether `c` is indexed as `e` says (checked without allocating: most events change nothing
/// the list shows).
fn unchanged(e: &Entry, c: &Customer) -> bool {
    e.created == c.created_at.map_or(i64::MIN, |t| t.timestamp_micros())
        && e.status == status_name(c.status)
        && e.email == c.email
        && e.first.as_deref() == trait_str(c, "first_name")
        && e.last.as_deref() == trait_str(c, "last_name")
        && e.owner == c.owner
        && e.tags.iter().eq(c.tags.iter())
        && e.stage == c.lifecycle_stage
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
        created: c.created_at.map_or(i64::MIN, |t| t.timestamp_micros()),
        email: c.email.clone(),
        first: trait_str(c, "first_name").map(str::to_owned),
        last: trait_str(c, "last_name").map(str::to_owned),
        tags: c.tags.iter().cloned().collect(),
        stage: c.lifecycle_stage,
        owner: c.owner.clone(),
        status: status_name(c.status),
        name: name_key(c),
        tokens,
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
        match self.entries.get(&c.id) {
            Some(e) if c.exists && unchanged(e, c) => return,
            None if !c.exists => return,
            _ => {}
        }
        let new = c.exists.then(|| entry_of(c));
        if let Some(old) = self.entries.remove(&c.id) {
            self.by_created.remove(&(old.created, c.id.clone()));
            self.by_name.remove(&(old.name.clone(), c.id.clone()));
            for t in &old.tokens {
                self.tokens.remove(&(t.clone(), c.id.clone()));
            }
            for t in &old.tags {
                take(&mut self.tags, t, &c.id);
            }
            if let Some(s) = old.stage {
                take(&mut self.stages, &stage_name(s), &c.id);
            }
            if let Some(o) = &old.owner {
                take(&mut self.owners, o, &c.id);
            }
        }
        let Some(new) = new else { return };
        self.by_created.insert((new.created, c.id.clone()));
        self.by_name.insert((new.name.clone(), c.id.clone()));
        for t in &new.tokens {
            self.tokens.insert((t.clone(), c.id.clone()));
        }
        for t in &new.tags {
            add(&mut self.tags, t, &c.id);
        }
        if let Some(s) = new.stage {
            add(&mut self.stages, &stage_name(s), &c.id);
        }
        if let Some(o) = &new.owner {
            add(&mut self.owners, o, &c.id);
        }
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

    /// The key an entry has in `sort`'s order (borrowed: no allocation per candidate).
    fn key<'a>(&'a self, sort: SortBy, id: &str, e: &'a Entry) -> Key<'a> {
        match sort {
            SortBy::Created => Key::Num(e.created),
            SortBy::Name => Key::Text(&e.name),
            SortBy::Activity => Key::Num(match self.activity_hour.get(id) {
                Some(h) if *h != i64::MIN + 1 => -h,
                _ => i64::MAX,
            }),
        }
    }

    /// One page of the customers `q` matches, in its order, after its cursor.
    pub fn query(&self, q: &ContactQuery) -> Result<ContactPage, String> {
        self.query_in(q, None)
    }

    /// [`query`](Self::query) among `members` only (a segment's, say), when given.
    pub fn query_in(&self, q: &ContactQuery, members: Option<&BTreeSet<String>>) -> Result<ContactPage, String> {
        if let Some(s) = q.status.as_deref().filter(|s| !matches!(*s, "active" | "deactivated" | "erased" | "merged")) {
            return Err(format!("status is active, deactivated, erased or merged, not {s:?}"));
        }
        let bad_cursor = |a: &str| format!("{a:?} is not a cursor of this list");
        let after = match &q.after {
            Some(a) => Some(decode_cursor(a).ok_or_else(|| bad_cursor(a))?),
            None => None,
        };
        let after_key = after.as_ref().map(|(k, id)| (k.as_key(), id.as_str()));
        let listed = |e: &Entry| match &q.status {
            Some(s) => e.status == s.as_str(),
            None => matches!(e.status, "active" | "deactivated"),
        };
        let limit = q.limit.max(1);
        let prefix = q.q.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(str::to_lowercase);
        let email = q.email.as_deref().map(|e| e.trim().to_lowercase());
        let filters: Vec<Option<&BTreeSet<String>>> = [(&self.tags, &q.tag), (&self.stages, &q.stage), (&self.owners, &q.owner)]
            .into_iter()
            .filter_map(|(map, key)| key.as_ref().map(|k| map.get(k.as_str())))
            .chain(members.map(Some))
            .collect();
        let mut page: Vec<(Key<'_>, &str)> = Vec::with_capacity(limit + 1);
        if prefix.is_none() && email.is_none() && filters.is_empty() {
            // The whole list: read the order from the cursor on.
            let mut push = |id: &str| -> bool {
                if let Some(e) = self.entries.get(id).filter(|e| listed(e)) {
                    page.push((self.key(q.sort, id, e), self.entries.get_key_value(id).expect("present").0.as_str()));
                }
                page.len() > limit
            };
            match (q.sort, &after) {
                (SortBy::Created, Some((Cursor::Num(k), id))) | (SortBy::Activity, Some((Cursor::Num(k), id))) => {
                    let set = if q.sort == SortBy::Created { &self.by_created } else { &self.by_activity };
                    for (_, id) in set.range((Excluded((*k, id.clone())), Unbounded)) {
                        if push(id) {
                            break;
                        }
                    }
                }
                (SortBy::Name, Some((Cursor::Text(k), id))) => {
                    for (_, id) in self.by_name.range((Excluded((k.clone(), id.clone())), Unbounded)) {
                        if push(id) {
                            break;
                        }
                    }
                }
                (_, Some(_)) => return Err(bad_cursor(q.after.as_deref().unwrap_or_default())),
                (SortBy::Created, None) => {
                    for (_, id) in &self.by_created {
                        if push(id) {
                            break;
                        }
                    }
                }
                (SortBy::Activity, None) => {
                    for (_, id) in &self.by_activity {
                        if push(id) {
                            break;
                        }
                    }
                }
                (SortBy::Name, None) => {
                    for (_, id) in &self.by_name {
                        if push(id) {
                            break;
                        }
                    }
                }
            }
        } else {
            // The candidates of the most selective of the search and the filters, each checked
            // against the rest; the page's keys are chosen without sorting all of them.
            // The candidates come from `source`; it need not be checked again.
            let smallest = filters.iter().enumerate().min_by_key(|(_, f)| f.map_or(0, BTreeSet::len)).map(|(i, f)| (i, *f));
            let mut consider = |id: &'_ String, token: Option<&String>| {
                let Some((id, e)) = self.entries.get_key_value(id.as_str()) else { return };
                let matched = listed(e)
                    && match (&prefix, token) {
                        // From the search: counted once, at the customer's first matching word.
                        (Some(p), Some(t)) => e.tokens.iter().find(|w| w.starts_with(p.as_str())) == Some(t),
                        (Some(p), None) => e.tokens.iter().any(|w| w.starts_with(p.as_str())),
                        (None, _) => true,
                    }
                    && email.as_ref().is_none_or(|m| e.tokens.iter().any(|t| t == m))
                    && filters.iter().enumerate().all(|(i, f)| smallest.is_some_and(|(s, _)| s == i) || f.is_some_and(|set| set.contains(id)));
                if !matched {
                    return;
                }
                let key = self.key(q.sort, id, e);
                if after_key.is_none_or(|a| (key, id.as_str()) > a) {
                    page.push((key, id.as_str()));
                }
            };
            if let Some((_, set)) = smallest {
                // (A filter whose value nobody has gives no candidates.)
                for id in set.into_iter().flatten() {
                    consider(id, None);
                }
            } else if let Some(m) = &email {
                for (_, id) in self.tokens.range((m.clone(), String::new())..).take_while(|(t, _)| t == m) {
                    consider(id, None);
                }
            } else if let Some(p) = &prefix {
                for (t, id) in self.tokens.range((p.clone(), String::new())..).take_while(|(t, _)| t.starts_with(p.as_str())) {
                    consider(id, Some(t));
                }
            }
            if page.len() > limit + 1 {
                page.select_nth_unstable(limit);
                page.truncate(limit + 1);
            }
            page.sort_unstable();
        }
        let more = page.len() > limit;
        page.truncate(limit);
        let next = if more { page.last().map(|(k, id)| encode_cursor(&k.to_cursor(), id)) } else { None };
        Ok(ContactPage { ids: page.into_iter().map(|(_, id)| id.to_owned()).collect(), next })
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

/// A sort key, borrowed from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Num(i64),
    Text(&'a str),
}

impl Cursor {
    fn as_key(&self) -> Key<'_> {
        match self {
            Cursor::Num(n) => Key::Num(*n),
            Cursor::Text(t) => Key::Text(t),
        }
    }
}

impl Key<'_> {
    fn to_cursor(self) -> Cursor {
        match self {
            Key::Num(n) => Cursor::Num(n),
            Key::Text(t) => Cursor::Text(t.to_owned()),
        }
    }
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
