//! Given/when/then tests for the Customer aggregate's rules.

use super::*;
use serde_json::json;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
}

/// Fold `events` into a fresh customer `c1`.
fn given(events: &[CustomerEvent]) -> Customer {
    let mut c = Customer::new("c1");
    for (i, e) in events.iter().enumerate() {
        c.apply(e, i as u64 + 1, t(i as i64));
    }
    c
}

fn registered() -> Vec<CustomerEvent> {
    vec![CustomerEvent::CustomerRegistered {
        email: Some("ada@example.com".into()),
        phone: None,
        traits: json!({"first_name": "Ada"}).as_object().unwrap().clone(),
    }]
}

fn grant(channel: Channel, purpose: Purpose) -> ConsentInput {
    ConsentInput {
        channel,
        purpose,
        granted: true,
        source: Some("signup-form".into()),
        legal_basis: None,
        proof: Some(json!({"ip": "192.0.2.1"})),
    }
}

struct Taken(&'static str, &'static str);
impl EmailIndex for Taken {
    fn owner_of(&self, email: &str) -> Option<String> {
        (email == self.0).then(|| self.1.to_owned())
    }
}

#[test]
fn registration_with_consents_is_one_decision() {
    let evs = Customer::new("c1")
        .decide(
            CustomerCommand::Register {
                email: Some(" Ada@Example.COM ".into()),
                phone: Some("+44 20 7946 0958".into()),
                traits: Map::new(),
                consents: vec![grant(Channel::Email, Purpose::Marketing)],
            },
            &NoEmails,
        )
        .unwrap();
    assert_eq!(evs.len(), 2);
    assert!(
        matches!(&evs[0], CustomerEvent::CustomerRegistered { email: Some(e), phone: Some(p), .. } if e == "ada@example.com" && p == "+442079460958")
    );
    assert!(
        matches!(&evs[1], CustomerEvent::ConsentGranted(r) if r.source == "signup-form" && r.legal_basis == "consent")
    );
}

#[test]
fn registration_fails_whole_when_one_consent_lacks_a_source() {
    let mut bad = grant(Channel::Sms, Purpose::Marketing);
    bad.source = Some("  ".into());
    let r = Customer::new("c1").decide(
        CustomerCommand::Register {
            email: None,
            phone: None,
            traits: Map::new(),
            consents: vec![grant(Channel::Email, Purpose::Marketing), bad],
        },
        &NoEmails,
    );
    assert_eq!(r, Err(CustomerError::ConsentSourceMissing));
}

#[test]
fn email_is_unique_within_the_tenant() {
    let cmd = CustomerCommand::Register {
        email: Some("ada@example.com".into()),
        phone: None,
        traits: Map::new(),
        consents: vec![],
    };
    assert_eq!(
        Customer::new("c1").decide(cmd.clone(), &Taken("ada@example.com", "c2")),
        Err(CustomerError::EmailTaken)
    );
    // The same customer holding its own address is fine (e.g. a retried registration's index).
    assert!(Customer::new("c1").decide(cmd, &Taken("ada@example.com", "c1")).is_ok());
    let c = given(&registered());
    let change =
        CustomerCommand::UpdateProfile { email: Some("bob@example.com".into()), phone: None, traits: Map::new() };
    assert_eq!(c.decide(change, &Taken("bob@example.com", "c9")), Err(CustomerError::EmailTaken));
}

#[test]
fn invalid_contact_data_is_rejected() {
    for bad in ["", "no-at-sign", "a@b", "a b@example.com", "@example.com"] {
        assert_eq!(normalize_email(bad), Err(CustomerError::InvalidEmail), "{bad}");
    }
    assert_eq!(normalize_phone("call me"), Err(CustomerError::InvalidPhone));
    assert_eq!(normalize_phone("123"), Err(CustomerError::InvalidPhone));
}

#[test]
fn registering_twice_is_refused() {
    let c = given(&registered());
    let r = c.decide(
        CustomerCommand::Register { email: None, phone: None, traits: Map::new(), consents: vec![] },
        &NoEmails,
    );
    assert_eq!(r, Err(CustomerError::AlreadyExists));
}

#[test]
fn commands_on_unknown_customer_are_not_found() {
    assert_eq!(
        Customer::new("x").decide(CustomerCommand::Tag { tag: "vip".into() }, &NoEmails),
        Err(CustomerError::NotFound)
    );
}

#[test]
fn profile_update_records_old_and_new_values() {
    let c = given(&registered());
    let evs = c
        .decide(
            CustomerCommand::UpdateProfile {
                email: None,
                phone: None,
                traits: json!({"first_name": "Augusta", "plan": "pro", "unchanged": null}).as_object().unwrap().clone(),
            },
            &NoEmails,
        )
        .unwrap();
    let CustomerEvent::CustomerProfileUpdated { changes } = &evs[0] else { panic!("{evs:?}") };
    assert_eq!(changes["traits.first_name"], Change { old: json!("Ada"), new: json!("Augusta") });
    assert_eq!(changes["traits.plan"], Change { old: json!(null), new: json!("pro") });
    assert!(!changes.contains_key("traits.unchanged"), "null over absent is no change");
    let mut after = c.clone();
    after.apply(&evs[0], 2, t(5));
    assert_eq!(after.traits.get("first_name"), Some(&json!("Augusta")));
    // Same values again: nothing to record.
    let again = after
        .decide(CustomerCommand::UpdateProfile { email: None, phone: None, traits: after.traits.clone() }, &NoEmails)
        .unwrap();
    assert!(again.is_empty());
}

#[test]
fn reserved_trait_names_are_refused() {
    let c = given(&registered());
    let r = c.decide(
        CustomerCommand::UpdateProfile {
            email: None,
            phone: None,
            traits: json!({"email": "x@y.z"}).as_object().unwrap().clone(),
        },
        &NoEmails,
    );
    assert_eq!(r, Err(CustomerError::InvalidTrait("email".into())));
}

#[test]
fn consent_grant_needs_a_source_revocation_does_not() {
    let c = given(&registered());
    let mut no_source = grant(Channel::Email, Purpose::Marketing);
    no_source.source = None;
    assert_eq!(
        c.decide(CustomerCommand::SetConsent(no_source.clone()), &NoEmails),
        Err(CustomerError::ConsentSourceMissing)
    );
    no_source.granted = false;
    let evs = c.decide(CustomerCommand::SetConsent(no_source), &NoEmails).unwrap();
    assert!(matches!(&evs[0], CustomerEvent::ConsentRevoked(r) if r.source == "unspecified"));
}

#[test]
fn consent_check_follows_the_latest_decision() {
    let mut c = given(&registered());
    assert_eq!(
        c.consent_check(Channel::Email, Purpose::Marketing),
        ConsentDecision { allowed: false, reason: "no_consent" }
    );
    assert!(c.consent_check(Channel::Email, Purpose::Transactional).allowed);
    for (i, granted) in [true, false, true, false].into_iter().enumerate() {
        let mut input = grant(Channel::Email, Purpose::Marketing);
        input.granted = granted;
        let evs = c.decide(CustomerCommand::SetConsent(input), &NoEmails).unwrap();
        c.apply(&evs[0], c.version + 1, t(10 + i as i64));
        assert_eq!(c.consent_check(Channel::Email, Purpose::Marketing).allowed, granted);
    }
    assert_eq!(c.consent_check(Channel::Email, Purpose::Marketing).reason, "revoked");
    // Another channel is independent.
    assert!(!c.consent_check(Channel::Sms, Purpose::Marketing).allowed);
}

#[test]
fn lifecycle_moves_forward_only() {
    let mut c = given(&registered());
    let evs = c.decide(CustomerCommand::ChangeStage { to: LifecycleStage::Mql }, &NoEmails).unwrap();
    assert_eq!(evs, vec![CustomerEvent::LifecycleStageChanged { from: None, to: LifecycleStage::Mql }]);
    c.apply(&evs[0], 2, t(2));
    assert_eq!(
        c.decide(CustomerCommand::ChangeStage { to: LifecycleStage::Lead }, &NoEmails),
        Err(CustomerError::InvalidStageTransition { from: LifecycleStage::Mql, to: LifecycleStage::Lead })
    );
    assert!(c.decide(CustomerCommand::ChangeStage { to: LifecycleStage::Mql }, &NoEmails).unwrap().is_empty());
    assert_eq!(c.decide(CustomerCommand::ChangeStage { to: LifecycleStage::Customer }, &NoEmails).unwrap().len(), 1);
}

#[test]
fn deactivated_customers_keep_history_and_can_come_back() {
    let mut evs = registered();
    evs.push(CustomerEvent::CustomerTagged { tag: "vip".into() });
    evs.push(CustomerEvent::CustomerDeactivated { reason: Some("left".into()) });
    let c = given(&evs);
    assert_eq!(c.status, CustomerStatus::Deactivated);
    assert!(c.tags.contains("vip"), "history kept");
    assert_eq!(c.decide(CustomerCommand::Tag { tag: "x".into() }, &NoEmails), Err(CustomerError::Deactivated));
    assert_eq!(
        c.decide(CustomerCommand::SetConsent(grant(Channel::Email, Purpose::Marketing)), &NoEmails),
        Err(CustomerError::Deactivated)
    );
    let mut revoke = grant(Channel::Email, Purpose::Marketing);
    revoke.granted = false;
    assert!(c.decide(CustomerCommand::SetConsent(revoke), &NoEmails).is_ok(), "withdrawing consent is always possible");
    assert!(!c.consent_check(Channel::Email, Purpose::Transactional).allowed);
    let back = c.decide(CustomerCommand::Reactivate, &NoEmails).unwrap();
    assert_eq!(back, vec![CustomerEvent::CustomerReactivated {}]);
    let mut c = c;
    c.apply(&back[0], 4, t(4));
    assert_eq!(c.status, CustomerStatus::Active);
    assert!(c.decide(CustomerCommand::Reactivate, &NoEmails).unwrap().is_empty());
}

#[test]
fn erased_customers_accept_no_command_and_hold_no_personal_data() {
    let mut evs = registered();
    evs.push(CustomerEvent::NoteAdded { text: "called, wants a demo".into(), author: None });
    evs.push(CustomerEvent::CustomerErased { reason: None, anonymous_ids: Default::default() });
    let c = given(&evs);
    assert_eq!(c.status, CustomerStatus::Erased);
    assert_eq!((c.email.as_deref(), c.traits.len(), c.notes.len()), (None, 0, 0));
    for cmd in [
        CustomerCommand::Tag { tag: "x".into() },
        CustomerCommand::Reactivate,
        CustomerCommand::Erase { reason: None },
        CustomerCommand::SetConsent(grant(Channel::Email, Purpose::Marketing)),
    ] {
        assert_eq!(c.decide(cmd, &NoEmails), Err(CustomerError::Erased));
    }
    assert_eq!(c.consent_check(Channel::Email, Purpose::Transactional).reason, "customer_erased");
}

#[test]
fn events_round_trip_through_their_wire_parts() {
    let evs = vec![
        registered().remove(0),
        CustomerEvent::ConsentGranted(ConsentRecord {
            channel: Channel::InApp,
            purpose: Purpose::Profiling,
            source: "s".into(),
            legal_basis: "consent".into(),
            proof: None,
        }),
        CustomerEvent::CustomerReactivated {},
        CustomerEvent::PreferencesUpdated(Preferences {
            time_zone: Some("Europe/Lisbon".into()),
            ..Default::default()
        }),
    ];
    for e in evs {
        let (ty, data) = e.to_parts();
        assert!(EVENT_TYPES.contains(&ty.as_str()));
        assert_eq!(CustomerEvent::from_parts(&ty, &data).unwrap(), e);
    }
    assert!(CustomerEvent::from_parts("Nope", &json!({})).is_err());
}

#[test]
fn identities_link_once() {
    let mut c = given(&registered());
    let evs = c.decide(CustomerCommand::LinkIdentity { anonymous_id: "anon-1".into() }, &NoEmails).unwrap();
    assert_eq!(evs, vec![CustomerEvent::IdentityLinked { anonymous_id: "anon-1".into() }]);
    c.apply(&evs[0], 2, t(2));
    assert!(c.decide(CustomerCommand::LinkIdentity { anonymous_id: "anon-1".into() }, &NoEmails).unwrap().is_empty());
    assert_eq!(
        c.decide(CustomerCommand::LinkIdentity { anonymous_id: " ".into() }, &NoEmails),
        Err(CustomerError::Empty("anonymous id"))
    );
}

#[test]
fn joining_a_group_records_its_traits_once() {
    let mut c = given(&registered());
    let traits = json!({"name": "Acme", "plan": "enterprise"}).as_object().unwrap().clone();
    let evs =
        c.decide(CustomerCommand::JoinGroup { group_id: "g1".into(), traits: traits.clone() }, &NoEmails).unwrap();
    assert_eq!(evs.len(), 1);
    c.apply(&evs[0], 2, t(2));
    assert_eq!(c.groups["g1"], traits);
    assert!(c.decide(CustomerCommand::JoinGroup { group_id: "g1".into(), traits }, &NoEmails).unwrap().is_empty());
}

/// A customer `id` folded from `events` (versions from 1).
fn customer(id: &str, events: &[(CustomerEvent, i64)]) -> Customer {
    let mut c = Customer::new(id);
    for (i, (e, at)) in events.iter().enumerate() {
        c.apply(e, i as u64 + 1, t(*at));
    }
    c
}

fn consent(granted: bool) -> CustomerEvent {
    let r = ConsentRecord {
        channel: Channel::Email,
        purpose: Purpose::Marketing,
        source: "form".into(),
        legal_basis: "consent".into(),
        proof: Some(json!({"ip": "192.0.2.7"})),
    };
    if granted {
        CustomerEvent::ConsentGranted(r)
    } else {
        CustomerEvent::ConsentRevoked(r)
    }
}

fn reg(email: Option<&str>, traits: Value) -> CustomerEvent {
    CustomerEvent::CustomerRegistered {
        email: email.map(str::to_owned),
        phone: None,
        traits: traits.as_object().unwrap().clone(),
    }
}

/// Merge `d` into `s` the way the application does: mark, then absorb.
fn merge(s: &Customer, d: &Customer) -> (Customer, Customer) {
    let mut d = d.clone();
    for e in d.decide(CustomerCommand::MergeInto { survivor: s.id.clone() }, &NoEmails).unwrap() {
        d.apply(&e, d.version + 1, t(100));
    }
    let mut s = s.clone();
    for e in s.decide(CustomerCommand::Absorb { other: Box::new(d.clone()) }, &NoEmails).unwrap() {
        s.apply(&e, s.version + 1, t(100));
    }
    (s, d)
}

#[test]
fn merge_keeps_the_survivors_values_and_takes_what_it_lacks() {
    let s = customer("s", &[(reg(Some("s@example.com"), json!({"plan": "pro"})), 0), (consent(true), 1)]);
    let d = customer(
        "d",
        &[
            (reg(Some("d@example.com"), json!({"plan": "free", "city": "Oslo"})), 0),
            (CustomerEvent::CustomerTagged { tag: "vip".into() }, 1),
            (CustomerEvent::IdentityLinked { anonymous_id: "anon-1".into() }, 2),
            (CustomerEvent::LifecycleStageChanged { from: None, to: LifecycleStage::Customer }, 3),
            // The duplicate's revocation is the person's later word: it wins.
            (consent(false), 5),
        ],
    );
    let (s, d) = merge(&s, &d);
    assert_eq!(s.email.as_deref(), Some("s@example.com"));
    assert_eq!(s.traits["plan"], "pro");
    assert_eq!(s.traits["city"], "Oslo");
    assert!(s.tags.contains("vip") && s.anonymous_ids.contains("anon-1"));
    assert_eq!(s.lifecycle_stage, Some(LifecycleStage::Customer));
    assert!(!s.consent_check(Channel::Email, Purpose::Marketing).allowed);
    assert!(s.merged_ids.contains("d"));
    assert_eq!((d.status, d.merged_into.as_deref()), (CustomerStatus::Merged, Some("s")));
    assert_eq!(d.consent_check(Channel::Email, Purpose::Marketing).reason, "customer_merged");
}

#[test]
fn an_older_decision_of_the_duplicate_does_not_override_the_survivors() {
    let s = customer("s", &[(reg(None, json!({})), 0), (consent(false), 9)]);
    let d = customer("d", &[(reg(Some("d@example.com"), json!({})), 0), (consent(true), 3)]);
    let (s, _) = merge(&s, &d);
    assert!(!s.consent_check(Channel::Email, Purpose::Marketing).allowed);
    // The survivor had no address: it takes the duplicate's.
    assert_eq!(s.email.as_deref(), Some("d@example.com"));
}

#[test]
fn a_merged_duplicate_is_frozen_and_merges_are_idempotent() {
    let s = customer("s", &[(reg(None, json!({})), 0)]);
    let d = customer("d", &[(reg(None, json!({})), 0)]);
    let (s2, d2) = merge(&s, &d);
    let e = d2.decide(CustomerCommand::Tag { tag: "x".into() }, &NoEmails).unwrap_err();
    assert_eq!(e, CustomerError::Merged { into: "s".into() });
    // A resumed merge: marking again and absorbing again decide nothing.
    assert!(d2.decide(CustomerCommand::MergeInto { survivor: "s".into() }, &NoEmails).unwrap().is_empty());
    assert!(s2.decide(CustomerCommand::Absorb { other: Box::new(d2.clone()) }, &NoEmails).unwrap().is_empty());
    // Into someone else: refused. Erasure is still allowed.
    assert!(matches!(
        d2.decide(CustomerCommand::MergeInto { survivor: "x".into() }, &NoEmails),
        Err(CustomerError::Merged { .. })
    ));
    assert_eq!(d2.decide(CustomerCommand::Erase { reason: None }, &NoEmails).unwrap().len(), 1);
}

#[test]
fn merges_are_refused_when_they_make_no_sense() {
    let s = customer("s", &[(reg(None, json!({})), 0)]);
    let d = customer("d", &[(reg(None, json!({})), 0)]);
    let self_merge = s.decide(CustomerCommand::MergeInto { survivor: "s".into() }, &NoEmails);
    assert!(matches!(self_merge, Err(CustomerError::InvalidMerge(_))));
    // Absorbing a duplicate that was not marked first.
    let unmarked = s.decide(CustomerCommand::Absorb { other: Box::new(d.clone()) }, &NoEmails);
    assert!(matches!(unmarked, Err(CustomerError::InvalidMerge(_))));
    let erased = customer("e", &[(reg(None, json!({})), 0), (CustomerEvent::CustomerErased { reason: None, anonymous_ids: Default::default() }, 1)]);
    assert_eq!(
        erased.decide(CustomerCommand::MergeInto { survivor: "s".into() }, &NoEmails),
        Err(CustomerError::Erased)
    );
    let deactivated =
        customer("s", &[(reg(None, json!({})), 0), (CustomerEvent::CustomerDeactivated { reason: None }, 1)]);
    let (_, marked) = merge(&customer("s", &[(reg(None, json!({})), 0)]), &d);
    let r = deactivated.decide(CustomerCommand::Absorb { other: Box::new(marked) }, &NoEmails);
    assert_eq!(r, Err(CustomerError::Deactivated));
}

#[test]
fn merge_events_round_trip_through_the_wire_shape() {
    let s = customer("s", &[(reg(None, json!({})), 0)]);
    let d = customer("d", &[(reg(Some("d@example.com"), json!({"a": 1})), 0), (consent(true), 1)]);
    let mut marked = d.clone();
    for e in d.decide(CustomerCommand::MergeInto { survivor: "s".into() }, &NoEmails).unwrap() {
        marked.apply(&e, 2, t(2));
    }
    for e in s.decide(CustomerCommand::Absorb { other: Box::new(marked) }, &NoEmails).unwrap() {
        let (ty, data) = e.to_parts();
        assert_eq!(ty, "CustomersMerged");
        assert_eq!(CustomerEvent::from_parts(&ty, &data).unwrap(), e);
    }
}
