//! The audit trail: every read or change of a customer's data through the API, attributed to
//! the key that made it. The HTTP layer notes each request to a customer's resources (the
//! customer's routes, the consent check, the export, the erasure) here; a background task
//! writes what was noted as `AuditRecorded` events on the tenant's `_audit` stream every
//! [`FLUSH_EVERY`] (and at shutdown), so reads do not each cost a durable append. A crash can
//! lose what was noted since the last flush; changes are also on record in the events they
//! caused, whose `actor` names the key.

use chronicle_core::envelope::NewEvent;
use chronicle_projections::AuditEntry;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
pub const STREAM: &str = chronicle_core::registry::AUDIT_STREAM;

#[derive(Default)]
pub struct Audit {
    pending: Mutex<Vec<(String, AuditEntry)>>,
}

impl Audit {
    pub fn note(&self, tenant: &str, entry: AuditEntry) {
        self.pending.lock().expect("audit lock").push((tenant.to_owned(), entry));
    }

    /// What was noted, taken: one `AuditRecorded` event per tenant, for [`STREAM`] (the app
    /// appends them: `App::flush_audit`).
    pub fn take(&self, at: chrono::DateTime<chrono::Utc>) -> Vec<(String, NewEvent)> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("audit lock"));
        let mut by_tenant: BTreeMap<String, Vec<AuditEntry>> = BTreeMap::new();
        for (t, e) in pending {
            by_tenant.entry(t).or_default().push(e);
        }
        by_tenant
            .into_iter()
            .map(|(tenant, entries)| {
                let ev = NewEvent::new(uuid::Uuid::now_v7(), "AuditRecorded", json!({"entries": entries}), at).with_actor("audit");
                (tenant, ev)
            })
            .collect()
    }
}

/// Chronicle's own streams of a tenant (`_audit`): not part of the tenant's event feed
/// (`/v1/events`, the live stream); read through their own endpoints.
pub fn is_internal(stream: &str) -> bool {
    stream.starts_with('_')
}

/// The customer a request concerns, from the route's template and the request's path (or its
/// `customer` query parameter), if it concerns one.
pub fn customer_of(route: &str, path: &str, query: Option<&str>) -> Option<String> {
    if route.starts_with("/v1/customers/{id}") {
        let mut t = route.split('/');
        let mut p = path.split('/');
        loop {
            match (t.next(), p.next()) {
                (Some("{id}"), Some(v)) => return Some(percent_decode(v)),
                (Some(_), Some(_)) => continue,
                _ => return None,
            }
        }
    }
    if route == "/v1/consent-check" {
        return query?.split('&').find_map(|kv| kv.strip_prefix("customer=")).map(percent_decode);
    }
    None
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customer_comes_from_the_path_or_the_query() {
        assert_eq!(customer_of("/v1/customers/{id}/timeline", "/v1/customers/c-42/timeline", None).as_deref(), Some("c-42"));
        assert_eq!(customer_of("/v1/customers/{id}", "/v1/customers/a%40b.c", None).as_deref(), Some("a@b.c"));
        assert_eq!(customer_of("/v1/consent-check", "/v1/consent-check", Some("channel=email&customer=c-7")).as_deref(), Some("c-7"));
        assert_eq!(customer_of("/v1/customers", "/v1/customers", None), None);
        assert_eq!(customer_of("/v1/pipeline", "/v1/pipeline", None), None);
    }
}
