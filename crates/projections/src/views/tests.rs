//! Property tests: replay determinism, checkpoint + tail = full replay, snapshots + tail =
//! full fold for as-of queries; and the consent ledger's behaviour.

use super::*;
use crate::{diff, load_checkpoint, save_checkpoint, CheckpointError};
use chronicle_core::customer::{ConsentInput, CustomerCommand, LifecycleStage, NoEmails};
use chronicle_core::envelope::EventEnvelope;
use proptest::prelude::*;
use serde_json::json;
use std::collections::HashMap;

fn envelope(tenant: &str, stream: &str, version: u64, position: u64, t: i64, e: &CustomerEvent) -> EventEnvelope {
    let (ty, data) = e.to_parts();
    EventEnvelope {
        id: uuid::Uuid::from_u128(position as u128),
        tenant: tenant.into(),
        stream: stream.into(),
        version,
        position,
        event_type: ty,
        schema_version: 2,
        event_time: DateTime::from_timestamp(1_700_000_000 + t, 0).unwrap(),
        ingest_time: DateTime::from_timestamp(1_700_000_000 + t, 0).unwrap(),
        source: "test".into(),
        causation_id: None,
        correlation_id: None,
        actor: None,
        data,
        metadata: json!({}),
    }
}

fn command() -> impl Strategy<Value = CustomerCommand> {
    let channel = prop_oneof![Just(Channel::Email), Just(Channel::Sms), Just(Channel::Push)];
    let purpose = prop_oneof![Just(Purpose::Marketing), Just(Purpose::Analytics)];
    prop_oneof![
        (0u8..5).prop_map(|i| CustomerCommand::UpdateProfile {
            email: None,
            phone: None,
            traits: json!({"plan": format!("p{i}")}).as_object().unwrap().clone()
        }),
        (0u8..3).prop_map(|i| CustomerCommand::UpdateProfile {
            email: Some(format!("x{i}@example.com")),
            phone: None,
            traits: Default::default()
        }),
        (0u8..3).prop_map(|i| CustomerCommand::Tag { tag: format!("t{i}") }),
        (0u8..3).prop_map(|i| CustomerCommand::Untag { tag: format!("t{i}") }),
        (channel, purpose, any::<bool>()).prop_map(|(channel, purpose, granted)| CustomerCommand::SetConsent(
            ConsentInput {
                channel,
                purpose,
                granted,
                source: Some("form".into()),
                legal_basis: None,
                proof: Some(json!({"ip": "192.0.2.7"}))
            }
        )),
        (0usize..7).prop_map(|i| CustomerCommand::ChangeStage { to: LifecycleStage::PATH[i] }),
        Just(CustomerCommand::Deactivate { reason: None }),
        Just(CustomerCommand::Reactivate),
        Just(CustomerCommand::AddNote { text: "hello".into(), author: None }),
        Just(CustomerCommand::Erase { reason: None }),
    ]
}

/// A random but valid log: commands decided against the aggregate, across a few customers and
/// two tenants, with event times that sometimes run backwards (late producers).
fn history() -> impl Strategy<Value = Vec<EventEnvelope>> {
    let step = (0usize..4, command(), -3i64..10, prop::bool::weighted(0.3), prop::bool::weighted(0.06));
    prop::collection::vec(step, 1..120).prop_map(|steps| {
        let mut log = Vec::new();
        let mut states: HashMap<usize, Customer> = HashMap::new();
        let mut clock = 0i64;
        for (who, cmd, dt, activity, merge) in steps {
            let tenant = if who % 2 == 0 { "a" } else { "b" };
            let id = format!("c{who}");
            if merge {
                // Merge `who` into the other customer of its tenant: mark, then absorb.
                let survivor = (who + 2) % 4;
                if !states.contains_key(&survivor) {
                    continue;
                }
                let Some(d) = states.get_mut(&who) else { continue };
                let mark = CustomerCommand::MergeInto { survivor: format!("c{survivor}") };
                let Ok(events) = d.decide(mark, &NoEmails) else { continue };
                record(&mut log, tenant, d, &mut clock, dt, events);
                let marked = Box::new(d.clone());
                let s = states.get_mut(&survivor).expect("checked above");
                let Ok(events) = s.decide(CustomerCommand::Absorb { other: marked }, &NoEmails) else { continue };
                record(&mut log, tenant, s, &mut clock, dt, events);
                continue;
            }
            let c = states.entry(who).or_insert_with(|| Customer::new(id.clone()));
            if activity {
                // A page view on the customer's stream: on the timeline, not in the profile.
                clock += dt;
                let mut ev = envelope(
                    tenant,
                    &customer::stream_of(&id),
                    c.version + 1,
                    log.len() as u64 + 1,
                    clock,
                    &CustomerEvent::CustomerReactivated {},
                );
                ev.event_type = "ActivityTracked".into();
                ev.data = json!({"kind": "page", "event": "Page Viewed", "properties": {"path": "/"}});
                c.version += 1;
                log.push(ev);
                continue;
            }
            let cmd = if c.exists {
                cmd
            } else {
                CustomerCommand::Register { email: None, phone: None, traits: Default::default(), consents: vec![] }
            };
            let Ok(events) = c.decide(cmd, &NoEmails) else { continue };
            record(&mut log, tenant, c, &mut clock, dt, events);
        }
        log
    })
}

/// Append a customer's decided events to the log, folding them into its state.
fn record(
    log: &mut Vec<EventEnvelope>,
    tenant: &str,
    c: &mut Customer,
    clock: &mut i64,
    dt: i64,
    events: Vec<CustomerEvent>,
) {
    for e in events {
        *clock += dt;
        let ev = envelope(tenant, &customer::stream_of(&c.id), c.version + 1, log.len() as u64 + 1, *clock, &e);
        c.apply(&e, ev.version, ev.event_time);
        log.push(ev);
    }
}

fn replay(log: &[EventEnvelope]) -> Projections {
    let mut p = Projections::new();
    log.iter().for_each(|e| p.apply(e));
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn replaying_twice_gives_the_same_state(log in history()) {
        let a = replay(&log);
        prop_assert_eq!(&a, &replay(&log));
        prop_assert!(diff(&a, &replay(&log)).is_empty());
    }

    #[test]
    fn the_consent_view_answers_as_the_profile_does(log in history()) {
        let p = replay(&log);
        for (tenant, tv) in &p.tenants {
            for (id, c) in &tv.customers {
                for ch in [Channel::Email, Channel::Sms, Channel::Push, Channel::InApp, Channel::Phone] {
                    for pu in [Purpose::Marketing, Purpose::Transactional, Purpose::Analytics, Purpose::Profiling] {
                        prop_assert_eq!(p.consent_check(tenant, id, ch, pu), c.consent_check(ch, pu));
                    }
                }
            }
        }
    }

    #[test]
    fn raw_replay_equals_decoded_replay(log in history()) {
        let mut raw = Projections::new();
        log.iter().cloned().for_each(|e| raw.apply_raw(&chronicle_core::envelope::RawEnvelope::from_envelope(e)));
        prop_assert_eq!(&raw, &replay(&log));
    }

    #[test]
    fn checkpoint_plus_tail_equals_full_replay(log in history(), cut in 0usize..200) {
        let cut = cut.min(log.len());
        let head = replay(&log[..cut]);
        let json = serde_json::to_vec(&head).unwrap();
        let mut resumed: Projections = serde_json::from_slice(&json).unwrap();
        // As a checkpoint is loaded: what the views derive is rebuilt, and must equal what the
        // fold kept current (the contact list's indexes).
        resumed.reindex();
        // Re-applying events already in the checkpoint is harmless (at-least-once delivery).
        log.iter().for_each(|e| resumed.apply(e));
        prop_assert_eq!(&resumed, &replay(&log));
    }

    #[test]
    fn as_of_from_snapshot_equals_full_fold(log in history(), at in 0i64..600) {
        let t = DateTime::from_timestamp(1_700_000_000 + at, 0).unwrap();
        // Small snapshot spacing so that snapshots are exercised.
        let mut views = Projections { snapshot_every: 3, ..Projections::new() };
        log.iter().for_each(|e| views.apply(e));
        for tenant in ["a", "b"] {
            let Some(tv) = views.tenant(tenant) else { continue };
            for id in tv.customers.keys() {
                let stream: Vec<_> = log.iter().filter(|e| e.tenant == tenant && e.stream == customer::stream_of(id)).collect();
                let full = fold_customer(id, None, stream.iter().copied().filter(|e| e.event_time <= t));
                let snap = tv.snapshot_for(id, t);
                let ranges = tv.as_of_ranges(id, snap, t, 3);
                let in_ranges = |e: &&EventEnvelope| ranges.iter().any(|(a, b)| (*a..=*b).contains(&e.version)) && e.event_time <= t;
                let fast = fold_customer(id, snap, stream.iter().copied().filter(in_ranges));
                // What the server runs: the same over events as stored.
                let raws = stream.iter().copied().filter(in_ranges).map(|e| RawEnvelope::from_envelope(e.clone())).collect();
                let raw = fold_customer_raw(id, snap, raws, |_| ());
                prop_assert_eq!(&fast, &full);
                prop_assert_eq!(raw, full);
            }
        }
    }
}

#[test]
fn consent_ledger_keeps_full_history_and_current_state() {
    let s = customer::stream_of("c1");
    let reg = CustomerEvent::CustomerRegistered {
        email: Some("ada@example.com".into()),
        phone: None,
        traits: Default::default(),
    };
    let rec = |granted| chronicle_core::customer::ConsentRecord {
        channel: Channel::Email,
        purpose: Purpose::Marketing,
        source: if granted { "signup".into() } else { "unsubscribe-link".into() },
        legal_basis: "consent".into(),
        proof: Some(json!({"form": "newsletter", "ip": "192.0.2.1"})),
    };
    let log = [
        envelope("t", &s, 1, 1, 0, &reg),
        envelope("t", &s, 2, 2, 1, &CustomerEvent::ConsentGranted(rec(true))),
        envelope("t", &s, 3, 3, 2, &CustomerEvent::ConsentRevoked(rec(false))),
    ];
    let p = replay(&log);
    let tv = p.tenant("t").unwrap();
    let hist = &tv.consent_history["c1"];
    assert_eq!(
        hist.iter().map(|h| (h.granted, h.source.as_str())).collect::<Vec<_>>(),
        vec![(true, "signup"), (false, "unsubscribe-link")]
    );
    assert_eq!(hist[0].proof, Some(json!({"form": "newsletter", "ip": "192.0.2.1"})));
    assert_eq!(
        p.consent_check("t", "c1", Channel::Email, Purpose::Marketing),
        ConsentDecision { allowed: false, reason: "revoked" }
    );
    assert_eq!(p.consent_check("other", "c1", Channel::Email, Purpose::Marketing).reason, "unknown_customer");
    assert_eq!(tv.emails.get("ada@example.com").map(String::as_str), Some("c1"));
}

#[test]
fn snapshots_are_taken_every_n_events() {
    let s = customer::stream_of("c1");
    let mut log = vec![envelope(
        "t",
        &s,
        1,
        1,
        0,
        &CustomerEvent::CustomerRegistered { email: None, phone: None, traits: Default::default() },
    )];
    for v in 2..=(SNAPSHOT_EVERY * 2 + 3) {
        log.push(envelope("t", &s, v, v, v as i64, &CustomerEvent::CustomerTagged { tag: format!("t{v}") }));
    }
    let p = replay(&log);
    let snaps = &p.tenant("t").unwrap().snapshots["c1"];
    assert_eq!(snaps.iter().map(|s| s.version).collect::<Vec<_>>(), vec![SNAPSHOT_EVERY, SNAPSHOT_EVERY * 2]);
}

#[test]
fn diff_reports_a_tampered_view() {
    let s = customer::stream_of("c1");
    let log = [envelope(
        "t",
        &s,
        1,
        1,
        0,
        &CustomerEvent::CustomerRegistered { email: None, phone: None, traits: Default::default() },
    )];
    let fresh = replay(&log);
    let mut live = fresh.clone();
    live.tenants.get_mut("t").unwrap().customers.get_mut("c1").unwrap().tags.insert("forged".into());
    let d = diff(&live, &fresh);
    assert_eq!(d.len(), 1);
    assert!(d[0].contains("customer c1 differs"), "{d:?}");
}

#[test]
fn checkpoint_file_round_trips_and_missing_is_empty() {
    let dir = std::env::temp_dir().join(format!("chronicle-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("projections.json");
    assert_eq!(load_checkpoint(&path).unwrap(), Projections::new());
    let s = customer::stream_of("c1");
    let p = replay(&[envelope(
        "t",
        &s,
        1,
        1,
        0,
        &CustomerEvent::CustomerRegistered { email: None, phone: None, traits: Default::default() },
    )]);
    save_checkpoint(&path, &p).unwrap();
    assert_eq!(load_checkpoint(&path).unwrap(), p);
    assert_eq!(crate::resume_from(&crate::CheckpointFile(path.clone()), None).unwrap(), (p.clone(), None));
    // A checkpoint of an older build (no `models`: version 1) is not resumed from: read models
    // added since would miss everything before it.
    let mut old: serde_json::Value = serde_json::to_value(&p).unwrap();
    old.as_object_mut().unwrap().remove("models");
    std::fs::write(&path, old.to_string()).unwrap();
    assert_eq!(load_checkpoint(&path).unwrap().models, 1);
    let (fresh, why) = crate::resume_from(&crate::CheckpointFile(path.clone()), None).unwrap();
    assert_eq!(fresh, Projections::new());
    assert!(why.unwrap().contains("version 1"));
    std::fs::write(&path, b"{not json").unwrap();
    assert!(matches!(load_checkpoint(&path), Err(CheckpointError::Corrupt { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_merge_moves_identities_addresses_and_consent_evidence_to_the_survivor() {
    let reg = |email: &str| CustomerEvent::CustomerRegistered {
        email: Some(email.into()),
        phone: None,
        traits: Default::default(),
    };
    let grant = CustomerEvent::ConsentGranted(customer::ConsentRecord {
        channel: Channel::Sms,
        purpose: Purpose::Marketing,
        source: "kiosk".into(),
        legal_basis: "consent".into(),
        proof: Some(json!({"signature": "s-1"})),
    });
    let mut log = Vec::new();
    let (mut s, mut d) = (Customer::new("s"), Customer::new("d"));
    record(&mut log, "a", &mut s, &mut 0, 1, vec![reg("s@example.com")]);
    let linked = CustomerEvent::IdentityLinked { anonymous_id: "anon-9".into() };
    record(&mut log, "a", &mut d, &mut 0, 1, vec![reg("d@example.com"), grant, linked]);
    let mark = d.decide(CustomerCommand::MergeInto { survivor: "s".into() }, &NoEmails).unwrap();
    record(&mut log, "a", &mut d, &mut 10, 1, mark);
    let absorb = s.decide(CustomerCommand::Absorb { other: Box::new(d.clone()) }, &NoEmails).unwrap();
    record(&mut log, "a", &mut s, &mut 20, 1, absorb);

    let p = replay(&log);
    let t = p.tenant("a").unwrap();
    assert_eq!(t.identities["anon-9"], "s");
    // Both addresses find the survivor and stay taken.
    assert_eq!((t.emails["s@example.com"].as_str(), t.emails["d@example.com"].as_str()), ("s", "s"));
    let carried = t.consent_history["s"].last().unwrap();
    assert_eq!((carried.granted, carried.proof.clone()), (true, Some(json!({"signature": "s-1"}))));
    assert!(p.consent_check("a", "s", Channel::Sms, Purpose::Marketing).allowed);
    assert_eq!(p.consent_check("a", "d", Channel::Sms, Purpose::Marketing).reason, "customer_merged");
    assert_eq!(replay(&log), p, "a replay gives the same views");
}

/// Instants at and past every edge: chrono's own limits, the accepted range's, the epoch.
fn odd_time() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
        Just(chronicle_core::time::earliest()),
        Just(chronicle_core::time::latest()),
        Just(DateTime::<Utc>::UNIX_EPOCH),
        (-3_000_000i64..3_000_000).prop_map(|s| DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()),
    ]
}

/// A JSON value of any shape, with the odd numbers and times a hostile producer would send.
fn odd_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(|b| json!(b)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e308)),
        prop_oneof![
            Just("-262143-01-01T00:00:00Z"),
            Just("+262142-12-31T23:59:59Z"),
            Just("2026-01-01T00:00:00Z"),
            Just("email"),
            Just("webhook"),
            Just("marketing"),
            Just("c1"),
            Just("a@example.com"),
            Just(""),
        ]
        .prop_map(|s| json!(s)),
        "[a-z0-9@.:-]{0,12}".prop_map(|s| json!(s)),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        const FIELDS: &[&str] = &[
            "id", "customer", "customer_id", "campaign", "step", "channel", "purpose", "email", "address", "at", "due",
            "due_at", "queued_at", "next_attempt", "attempts", "amount", "total", "currency", "stage", "to", "from",
            "survivor", "other", "granted", "message", "message_id", "kind", "url", "reason", "event", "properties",
            "traits", "tag", "keep_days", "event_type", "through_position", "expired", "status", "route", "actor",
            "position", "version", "frequency_cap", "max", "per", "definition", "template", "round", "name", "owner",
            "won", "lost", "refunded", "items", "quiet_hours", "time_zone", "data", "role", "key_id", "tenant",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8)
                .prop_map(|kv| serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

/// Any envelope: every registered type (and some unregistered ones) on every kind of stream,
/// in either tenant kind, with extreme times, versions and positions and any payload.
fn odd_envelope() -> impl Strategy<Value = EventEnvelope> {
    let types: Vec<&'static str> = chronicle_core::registry::OWNED
        .iter()
        .flat_map(|(_, t)| t.iter().copied())
        .chain(["Noted", "", "X"])
        .collect();
    let streams = vec![
        "customer-c1", "customer-c2", "customer-", "deal-d1", "order-o1", "campaign-k", "template-t", "_audit",
        "retention", "anonymous-a1", "notes-x", "tenant-t", "",
    ];
    (
        prop::sample::select(types),
        prop::sample::select(streams),
        prop::sample::select(vec!["a", "b", chronicle_core::registry::SYSTEM_TENANT]),
        prop_oneof![Just(0u64), Just(u64::MAX), 1u64..20],
        odd_time(),
        odd_time(),
        odd_json(),
        prop_oneof![Just(0u32), Just(1u32), Just(2u32), Just(u32::MAX)],
    )
        .prop_map(|(ty, stream, tenant, version, event_time, ingest_time, data, schema_version)| EventEnvelope {
            id: uuid::Uuid::now_v7(),
            tenant: tenant.into(),
            stream: stream.into(),
            version,
            position: 0,
            event_type: ty.into(),
            schema_version,
            event_time,
            ingest_time,
            source: "fuzz".into(),
            causation_id: None,
            correlation_id: None,
            actor: None,
            data,
            metadata: json!({}),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The fold is total: no envelope, however odd, panics a view, and a replay (decoded or
    /// raw, whole or from a checkpoint) agrees with the live fold, as `verify` checks.
    #[test]
    fn no_envelope_panics_a_view_and_replay_agrees(
        valid in history(),
        odd in prop::collection::vec(odd_envelope(), 1..40),
        cut in 0usize..200,
    ) {
        let mut log = valid;
        for (i, mut e) in odd.into_iter().enumerate() {
            let at = (i * 7) % (log.len() + 1);
            e.position = 0;
            log.insert(at, e);
        }
        for (i, e) in log.iter_mut().enumerate() {
            e.position = i as u64 + 1;
        }
        let live = {
            let mut p = Projections { snapshot_every: 3, ..Projections::new() };
            log.iter().for_each(|e| p.apply(e));
            p
        };
        let mut raw = Projections { snapshot_every: 3, ..Projections::new() };
        log.iter().cloned().for_each(|e| raw.apply_raw(&RawEnvelope::from_envelope(e)));
        prop_assert!(diff(&live, &raw).is_empty(), "{:?}", diff(&live, &raw));
        let cut = cut.min(log.len());
        let mut resumed = Projections { snapshot_every: 3, ..Projections::new() };
        log[..cut].iter().for_each(|e| resumed.apply(e));
        let mut resumed: Projections = serde_json::from_slice(&serde_json::to_vec(&resumed).unwrap()).unwrap();
        resumed.reindex();
        log[cut..].iter().for_each(|e| resumed.apply(e));
        prop_assert!(diff(&live, &resumed).is_empty(), "{:?}", diff(&live, &resumed));
        // The views' derived answers stay total too.
        for tv in live.tenants.values() {
            for id in tv.customers.keys() {
                let t = chronicle_core::time::latest();
                let snap = tv.snapshot_for(id, t);
                let _ = tv.as_of_ranges(id, snap, t, 3);
            }
        }
        for tv in live.tenants.values() {
            let _ = tv.pipeline();
        }
    }
}
