//! Comparing two projection states, for `chronicle verify`: a list of human-readable
//! differences, empty when they agree.

use crate::map::Map;
use crate::views::Projections;
use serde::Serialize;
use std::collections::BTreeSet;

fn differ_map<V: Serialize + PartialEq>(
    what: &str,
    tenant: &str,
    live: &Map<String, V>,
    fresh: &Map<String, V>,
    out: &mut Vec<String>,
) {
    let keys: BTreeSet<&String> = live.keys().chain(fresh.keys()).collect();
    for k in keys {
        match (live.get(k), fresh.get(k)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(a), Some(b)) => out.push(format!(
                "{tenant}: {what} {k} differs: live {} vs replay {}",
                serde_json::to_string(a).unwrap_or_default(),
                serde_json::to_string(b).unwrap_or_default()
            )),
            (Some(_), None) => out.push(format!("{tenant}: {what} {k} is in the live view but not in the replay")),
            (None, Some(_)) => out.push(format!("{tenant}: {what} {k} is missing from the live view")),
            (None, None) => unreachable!(),
        }
    }
}

/// Every difference between the live views and a fresh replay.
pub fn diff(live: &Projections, fresh: &Projections) -> Vec<String> {
    let mut out = Vec::new();
    if live.position != fresh.position {
        out.push(format!("position: live {} vs replay {}", live.position, fresh.position));
    }
    differ_map("key", "-", &live.keys, &fresh.keys, &mut out);
    differ_map("API key", "-", &live.api_keys, &fresh.api_keys, &mut out);
    differ_map("user", "-", &live.users, &fresh.users, &mut out);
    differ_map("session", "-", &live.sessions, &fresh.sessions, &mut out);
    let tenants: BTreeSet<&String> = live.tenants.keys().chain(fresh.tenants.keys()).collect();
    let empty = Default::default();
    for t in tenants {
        let a = live.tenants.get(t).unwrap_or(&empty);
        let b = fresh.tenants.get(t).unwrap_or(&empty);
        differ_map("customer", t, &a.customers, &b.customers, &mut out);
        differ_map("consent view of", t, &a.consent_bits, &b.consent_bits, &mut out);
        differ_map("consent history of", t, &a.consent_history, &b.consent_history, &mut out);
        differ_map("identity", t, &a.identities, &b.identities, &mut out);
        differ_map("email index entry", t, &a.emails, &b.emails, &mut out);
        differ_map("deal", t, &a.deals, &b.deals, &mut out);
        differ_map("order", t, &a.orders, &b.orders, &mut out);
        differ_map("snapshots of", t, &a.snapshots, &b.snapshots, &mut out);
        differ_map("time blocks of", t, &a.time_blocks, &b.time_blocks, &mut out);
        differ_map("audit trail of", t, &a.audit, &b.audit, &mut out);
        let (x, y) = (&a.automation, &b.automation);
        differ_map("campaign", t, &x.campaigns, &y.campaigns, &mut out);
        differ_map("template", t, &x.templates, &y.templates, &mut out);
        differ_map("enrolment", t, &x.enrolments, &y.enrolments, &mut out);
        differ_map("outbox message", t, &x.outbox, &y.outbox, &mut out);
        differ_map("dead letter", t, &x.dead_letters, &y.dead_letters, &mut out);
        differ_map("messages of", t, &x.messages, &y.messages, &mut out);
        differ_map("campaign stats of", t, &x.stats, &y.stats, &mut out);
        if x.timers != y.timers || x.outbox_due != y.outbox_due || x.queued != y.queued || x.decided != y.decided || x.bounced != y.bounced
            || x.last_active != y.last_active
            || x.deal_stage_since != y.deal_stage_since
        {
            out.push(format!("{t}: automation timers, outbox schedule or send counts differ from the replay"));
        }
        if a.retention != b.retention {
            out.push(format!("{t}: retention policies or compaction records differ from the replay"));
        }
        if a.sendgrid_key != b.sendgrid_key {
            out.push(format!("{t}: the SendGrid verification key differs from the replay"));
        }
        if a.events != b.events {
            out.push(format!("{t}: event count live {} vs replay {}", a.events, b.events));
        }
    }
    out
}
