//! Queries over the views (and the log, for a past instant): customers, deals, orders, the
//! pipeline, the timeline, consents, and pages of the tenant's events.

use super::*;

impl App {
    /// The tenant's events after log position `after`, then live as they are committed (its own
    /// streams such as `_audit` left out): what the API's live stream and the web UI's activity
    /// view follow. It ends on a read error (logged).
    pub fn feed(&self, tenant: &str, after: u64) -> impl futures_util::Stream<Item = EventEnvelope> + Send + 'static {
        let sub = chronicle_store::Subscription::new(self.store().clone(), after);
        futures_util::stream::unfold((sub, tenant.to_owned()), |(mut sub, tenant)| async move {
            loop {
                match sub.next().await {
                    Ok(Some(ev)) if ev.tenant == tenant && !crate::audit::is_internal(&ev.stream) => return Some((ev, (sub, tenant))),
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => {
                        tracing::warn!(error = &e as &dyn std::error::Error, "a live feed ended on a read error");
                        return None;
                    }
                }
            }
        })
    }

    pub fn customer(&self, tenant: &str, id: &str) -> Result<Customer, AppError> {
        match self.views().customer(tenant, id) {
            Some(c) if c.exists => Ok(c.clone()),
            _ => Err(AppError::NotFound("customer")),
        }
    }

    pub fn deal(&self, tenant: &str, id: &str) -> Result<Deal, AppError> {
        match self.views().tenant(tenant).and_then(|t| t.deals.get(id)) {
            Some(d) if d.exists => Ok(d.clone()),
            _ => Err(AppError::NotFound("deal")),
        }
    }

    pub fn order(&self, tenant: &str, id: &str) -> Result<Order, AppError> {
        match self.views().tenant(tenant).and_then(|t| t.orders.get(id)) {
            Some(o) if o.status != order::OrderStatus::None => Ok(o.clone()),
            _ => Err(AppError::NotFound("order")),
        }
    }

    pub fn pipeline(&self, tenant: &str) -> Pipeline {
        self.views()
            .tenant(tenant)
            .map(|t| t.pipeline())
            .unwrap_or_else(|| chronicle_projections::TenantViews::default().pipeline())
    }

    /// The customer as it was at instant `t` (by event time): the latest snapshot that lies
    /// wholly before `t`, plus the stream's later events that happened by `t` — read only from
    /// the blocks of versions known to hold such an event.
    pub async fn customer_as_of(&self, tenant: &str, id: &str, t: DateTime<Utc>) -> Result<Customer, AppError> {
        check_as_of(Some(t))?;
        let (base, ranges) = {
            let v = self.views();
            let tv = v
                .tenant(tenant)
                .filter(|tv| tv.customers.get(id).is_some_and(|c| c.exists))
                .ok_or(AppError::NotFound("customer"))?;
            let base = tv.snapshot_for(id, t).cloned();
            let ranges = tv.as_of_ranges(id, base.as_ref(), t, v.snapshot_every);
            (base, ranges)
        };
        let stream = customer::stream_of(id);
        let mut events = Vec::new();
        for (from, to) in ranges {
            // As stored: only the customer's own events are opened and parsed.
            let page = self.store.read_stream_raw(tenant, &stream, from, (to - from + 1) as usize).await?;
            events.extend(page.into_iter().filter(|e| e.event_time <= t));
        }
        let c = chronicle_projections::fold_customer_raw(id, base.as_ref(), events, |raw| self.store.open_raw(raw));
        if c.exists {
            Ok(c)
        } else {
            Err(AppError::NotFound("customer"))
        }
    }

    /// A customer's timeline: the events of the customer's stream, of every duplicate merged
    /// into it and of every anonymous identity linked to it, in commit order, paged by global position (`after` exclusive;
    /// `next` is the last position scanned).
    pub async fn timeline(
        &self,
        tenant: &str,
        id: &str,
        after: u64,
        limit: usize,
        as_of: Option<DateTime<Utc>>,
        types: &[String],
    ) -> Result<Page, AppError> {
        check_as_of(as_of)?;
        let c = self.customer(tenant, id)?;
        let streams = timeline_streams(&c);
        let limit = limit.max(1);
        let mut out = Vec::new();
        let mut next = after;
        loop {
            // The first `limit` events after the cursor of each stream hold the first `limit`
            // of the merge.
            let mut chunk = Vec::new();
            for s in &streams {
                if let Some(v) = self.first_version_after(tenant, s, next).await? {
                    chunk.extend(self.store.read_stream(tenant, s, v, limit).await?);
                }
            }
            if chunk.is_empty() {
                break;
            }
            chunk.sort_by_key(|e| e.position);
            chunk.truncate(limit);
            for ev in chunk {
                if out.len() == limit {
                    break;
                }
                next = ev.position;
                out.extend(timeline_entry(&c, ev, as_of, types));
            }
            if out.len() == limit {
                break;
            }
        }
        Ok(Page { events: out, next })
    }

    /// The customer's timeline newest first (what a person reads): the `limit` latest events
    /// before log position `before` (from the newest when `None`) that pass the same filters as
    /// [`App::timeline`], and the position to go on before when older ones may remain. Each page
    /// reads about `limit` events per stream, whatever the history's length.
    pub async fn timeline_newest(
        &self,
        tenant: &str,
        id: &str,
        before: Option<u64>,
        limit: usize,
        as_of: Option<DateTime<Utc>>,
        types: &[String],
    ) -> Result<(Vec<EventEnvelope>, Option<u64>), AppError> {
        check_as_of(as_of)?;
        let c = self.customer(tenant, id)?;
        let streams = timeline_streams(&c);
        let limit = limit.max(1);
        let mut out = Vec::new();
        let mut cursor = before;
        loop {
            // The `limit` events of each stream just before the cursor hold the newest `limit`
            // of the merge.
            let mut chunk = Vec::new();
            for s in &streams {
                let n = self.store.stream_version(tenant, s).await?;
                let end = match cursor {
                    None => n + 1,
                    Some(p) => self.first_version_after(tenant, s, p.saturating_sub(1)).await?.unwrap_or(n + 1),
                };
                if end > 1 {
                    let from = end.saturating_sub(limit as u64).max(1);
                    chunk.extend(self.store.read_stream(tenant, s, from, (end - from) as usize).await?);
                }
            }
            if chunk.is_empty() {
                return Ok((out, None));
            }
            chunk.sort_by_key(|e| std::cmp::Reverse(e.position));
            chunk.truncate(limit);
            for ev in chunk {
                cursor = Some(ev.position);
                out.extend(timeline_entry(&c, ev, as_of, types));
                if out.len() == limit {
                    return Ok((out, cursor.filter(|p| *p > 1)));
                }
            }
        }
    }

    /// The first version of a stream whose position is after `position` (binary search over
    /// the stream; positions grow with versions).
    async fn first_version_after(&self, tenant: &str, stream: &str, position: u64) -> Result<Option<u64>, AppError> {
        let n = self.store.stream_version(tenant, stream).await?;
        let (mut lo, mut hi) = (1, n + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.store.read_stream(tenant, stream, mid, 1).await?;
            match at.first() {
                Some(e) if e.position > position => hi = mid,
                Some(_) => lo = mid + 1,
                None => hi = mid,
            }
        }
        Ok((lo <= n).then_some(lo))
    }

    /// The customer an anonymous id is linked to, if any.
    pub fn identity_owner(&self, tenant: &str, anonymous_id: &str) -> Option<String> {
        self.views().tenant(tenant)?.identities.get(anonymous_id).cloned()
    }

    pub fn consents(&self, tenant: &str, id: &str) -> Result<ConsentLedger, AppError> {
        let c = self.customer(tenant, id)?;
        let history = self.views().tenant(tenant).and_then(|t| t.consent_history.get(id)).cloned().unwrap_or_default();
        Ok(ConsentLedger { current: c.consents.into_values().collect(), history })
    }

    /// The send decision's consent step: read from the inline view, so a revocation that
    /// committed before this call is always seen.
    pub fn consent_check(&self, tenant: &str, id: &str, channel: Channel, purpose: Purpose) -> ConsentDecision {
        self.metrics.consent_checks.fetch_add(1, Ordering::Relaxed);
        self.views().consent_check(tenant, id, channel, purpose)
    }

    /// The tenant's events after `after` (exclusive), at most `limit`; `next` is the last
    /// position scanned, to pass as `after` for the following page.
    pub async fn events(&self, tenant: &str, after: u64, limit: usize) -> Result<Page, AppError> {
        let mut out = Vec::new();
        let mut next = after;
        loop {
            let page = self.store.read_all(next, limit.max(1)).await?;
            let Some(last) = page.last() else { break };
            let scanned = last.position;
            for ev in page {
                if out.len() == limit {
                    break;
                }
                next = ev.position;
                if ev.tenant == tenant && !crate::audit::is_internal(&ev.stream) {
                    out.push(ev);
                }
            }
            if out.len() == limit || next < scanned {
                break;
            }
        }
        Ok(Page { events: out, next })
    }

    pub async fn read_stream(&self, tenant: &str, stream: &str, after: u64, limit: usize) -> Result<Page, AppError> {
        let events = self.store.read_stream(tenant, stream, after + 1, limit).await?;
        let next = events.last().map_or(after, |e| e.version);
        Ok(Page { events, next })
    }

    /// One page of the tenant's contacts, from the indexes the views keep (see
    /// `chronicle_projections::contacts`): a search, filters, an order and a cursor.
    pub fn contacts(
        &self,
        tenant: &str,
        q: &chronicle_projections::contacts::ContactQuery,
    ) -> Result<(Vec<Customer>, Option<String>), AppError> {
        let v = self.views();
        let Some(t) = v.tenant(tenant) else { return Ok((Vec::new(), None)) };
        let members: Option<std::collections::BTreeSet<String>> = match &q.segment {
            Some(s) if !t.automation.segments.contains_key(s) => return Err(AppError::NotFound("segment")),
            Some(s) => Some(t.automation.members.get(s).map(|m| m.keys().cloned().collect()).unwrap_or_default()),
            None => None,
        };
        let page = t.contacts.query_in(q, members.as_ref()).map_err(AppError::BadRequest)?;
        Ok((page.ids.iter().filter_map(|id| t.customers.get(id).cloned()).collect(), page.next))
    }

    /// Whether the tenant holds anything of customer `id` (a profile, activity, or a deal or
    /// order naming them): a list filtered by a customer the tenant does not know answers 404,
    /// as every route does for another tenant's ids.
    pub fn knows_customer(&self, tenant: &str, id: &str) -> bool {
        self.views().tenant(tenant).is_some_and(|t| {
            t.customers.contains_key(id)
                || t.deals.values().any(|d| d.customer_id.as_deref() == Some(id))
                || t.orders.values().any(|o| o.customer_id == id)
        })
    }

    /// One page of the tenant's deals, by id after the cursor `after` (an id), filtered by
    /// stage, owner, status (`open` | `won` | `lost`) and customer. Deals are far fewer than
    /// contacts: the page is read from the deals view as it is, with no index of its own.
    pub fn deals_list(&self, tenant: &str, f: &ListFilter, after: Option<&str>, limit: usize) -> (Vec<Deal>, Option<String>) {
        let v = self.views();
        let Some(t) = v.tenant(tenant) else { return (Vec::new(), None) };
        let status = |d: &Deal| serde_json::to_value(d.status).ok().and_then(|s| s.as_str().map(str::to_owned));
        page_by_id(
            t.deals.iter().filter(|(_, d)| {
                d.exists
                    && f.stage.as_deref().is_none_or(|s| d.stage == s)
                    && f.owner.as_deref().is_none_or(|o| d.owner.as_deref() == Some(o))
                    && f.status.as_deref().is_none_or(|s| status(d).as_deref() == Some(s))
                    && f.customer.as_deref().is_none_or(|c| d.customer_id.as_deref() == Some(c))
            }),
            after,
            limit,
        )
    }

    /// One page of the tenant's orders, by id after the cursor `after`, filtered by status and
    /// customer (as [`deals_list`](Self::deals_list)).
    pub fn orders_list(&self, tenant: &str, f: &ListFilter, after: Option<&str>, limit: usize) -> (Vec<Order>, Option<String>) {
        let v = self.views();
        let Some(t) = v.tenant(tenant) else { return (Vec::new(), None) };
        let status = |o: &Order| serde_json::to_value(o.status).ok().and_then(|s| s.as_str().map(str::to_owned));
        page_by_id(
            t.orders.iter().filter(|(_, o)| {
                o.version > 0
                    && f.status.as_deref().is_none_or(|s| status(o).as_deref() == Some(s))
                    && f.customer.as_deref().is_none_or(|c| o.customer_id == c)
            }),
            after,
            limit,
        )
    }
}

/// Filters of the deal and order lists.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub stage: Option<String>,
    pub owner: Option<String>,
    pub status: Option<String>,
    pub customer: Option<String>,
}

/// The first `limit` of `items` by id after `after`, and the id to continue after when more
/// remain.
fn page_by_id<'a, T: Clone + 'a>(items: impl Iterator<Item = (&'a String, &'a T)>, after: Option<&str>, limit: usize) -> (Vec<T>, Option<String>) {
    let mut page: Vec<(&String, &T)> = items.filter(|(id, _)| after.is_none_or(|a| id.as_str() > a)).collect();
    let limit = limit.max(1);
    if page.len() > limit + 1 {
        page.select_nth_unstable_by(limit, |a, b| a.0.cmp(b.0));
        page.truncate(limit + 1);
    }
    page.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let next = (page.len() > limit).then(|| page[limit - 1].0.clone());
    page.truncate(limit);
    (page.into_iter().map(|(_, t)| t.clone()).collect(), next)
}

/// The streams a customer's timeline merges: theirs, their merged duplicates', their anonymous
/// histories'.
fn timeline_streams(c: &Customer) -> Vec<String> {
    let mut streams = vec![customer::stream_of(&c.id)];
    streams.extend(c.merged_ids.iter().map(|m| customer::stream_of(m)));
    streams.extend(c.anonymous_ids.iter().map(|a| format!("anonymous-{a}")));
    streams
}

/// An event as a timeline shows it, if it shows it: not after `as_of`, of one of `types` when
/// any are given, not an expired event's tombstone (it keeps its place in the log, not in the
/// timeline); an erased person's events redacted (the timeline is a read model too; with
/// crypto-shredding on, the log itself no longer opens).
fn timeline_entry(c: &Customer, mut ev: EventEnvelope, as_of: Option<DateTime<Utc>>, types: &[String]) -> Option<EventEnvelope> {
    if as_of.is_some_and(|t| ev.event_time > t)
        || (!types.is_empty() && !types.contains(&ev.event_type))
        || ev.event_type == chronicle_core::envelope::EXPIRED_TYPE
    {
        return None;
    }
    if c.status == customer::CustomerStatus::Erased && ev.event_type != "CustomerErased" {
        ev.data = json!({"redacted": true});
    }
    Some(ev)
}

/// An `as_of` given to a query must lie in the accepted range of instants (a bad one is 400).
pub(crate) fn check_as_of(as_of: Option<DateTime<Utc>>) -> Result<(), AppError> {
    match as_of {
        Some(t) => chronicle_core::time::check("as_of", t).map(|_| ()).map_err(|e| AppError::BadRequest(e.to_string())),
        None => Ok(()),
    }
}
