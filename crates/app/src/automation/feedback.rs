//! Delivery feedback from SendGrid's Event Webhook: the batch's ECDSA signature is checked
//! against the configured public key before anything is read, the batch is checked whole, and
//! then each event becomes a `Message*` event on the customer's stream (its id derived from
//! SendGrid's `sg_event_id`, so a redelivered batch stores nothing new). An unsubscribe or a
//! spam report also revokes e-mail marketing consent, in the same append; a hard bounce makes
//! the address one that is not mailed again.

use crate::app::App;
use crate::error::AppError;
use base64::Engine;
use chronicle_automation::derive_id;
use chronicle_automation::events::Feedback;
use chronicle_core::customer::{self, Channel, ConsentInput, CustomerCommand, Purpose};
use chronicle_core::envelope::{ExpectedVersion, NewEvent};
use chrono::{DateTime, Utc};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde_json::{json, Value};

pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// SendGrid's verification key as its settings page shows it: base64 of the DER public key.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, KeyError> {
    let der = base64::engine::general_purpose::STANDARD.decode(b64.trim()).map_err(KeyError::Base64)?;
    VerifyingKey::from_public_key_der(&der).map_err(KeyError::NotP256)
}

/// Why a SendGrid verification key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the SendGrid public key is not base64: {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("the SendGrid public key is not a P-256 public key: {0}")]
    NotP256(#[source] p256::pkcs8::spki::Error),
}

/// How far a signed batch's timestamp may be from now.
pub const FRESHNESS: chrono::Duration = chrono::Duration::minutes(10);

/// Whether a signature's `timestamp` header (Unix seconds) is within [`FRESHNESS`] of `now`.
pub fn fresh(timestamp: &str, now: DateTime<Utc>) -> bool {
    timestamp
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0))
        .is_some_and(|t| (now - t).abs() <= FRESHNESS)
}

/// Check `signature` (base64 DER ECDSA) over `timestamp` followed by the raw body.
pub fn verify(key: &VerifyingKey, signature: &str, timestamp: &str, body: &[u8]) -> bool {
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else { return false };
    let Ok(sig) = Signature::from_der(&der) else { return false };
    let mut signed = Vec::with_capacity(timestamp.len() + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(body);
    key.verify(&signed, &sig).is_ok()
}

/// One SendGrid event, read and checked.
struct Report {
    event_type: &'static str,
    unsubscribe: bool,
    feedback: Feedback,
}

fn read(i: usize, e: &Value) -> Result<Option<Report>, AppError> {
    let bad = |m: &str| AppError::BadRequest(format!("event {i}: {m}"));
    let field = |k: &str| e.get(k).and_then(Value::as_str);
    let kind = field("event").ok_or_else(|| bad("event is missing"))?;
    let email = field("email").ok_or_else(|| bad("email is missing"))?;
    let id = field("sg_event_id").ok_or_else(|| bad("sg_event_id is missing"))?;
    let ts = e.get("timestamp").and_then(Value::as_i64).ok_or_else(|| bad("timestamp must be a Unix time"))?;
    let at = DateTime::<Utc>::from_timestamp(ts, 0)
        .filter(|t| chronicle_core::time::in_range(*t))
        .ok_or_else(|| bad("timestamp is outside 1900-01-01..9999-12-31"))?;
    let (event_type, unsubscribe) = match kind {
        "delivered" => ("MessageDelivered", false),
        "open" => ("MessageOpened", false),
        "click" => ("MessageClicked", false),
        "bounce" => ("MessageBounced", false),
        "dropped" => ("MessageDropped", false),
        "spamreport" => ("MessageSpamReported", true),
        "unsubscribe" | "group_unsubscribe" => ("MessageUnsubscribed", true),
        // processed, deferred, group_resubscribe: nothing a customer's record needs.
        _ => return Ok(None),
    };
    // Our Message-ID is `<message id@chronicle>`; SendGrid reports it as `smtp-id`.
    let message = field("smtp-id")
        .and_then(|s| s.trim_matches(|c| c == '<' || c == '>').strip_suffix("@chronicle"))
        .map(str::to_owned);
    let feedback = Feedback {
        message,
        email: email.to_owned(),
        provider: "sendgrid".into(),
        provider_event_id: id.to_owned(),
        at,
        reason: field("reason").or(field("response")).map(str::to_owned),
        url: field("url").map(str::to_owned),
        kind: (kind == "bounce").then(|| field("type").unwrap_or("bounce").to_owned()),
    };
    Ok(Some(Report { event_type, unsubscribe, feedback }))
}

/// Apply a verified batch; returns (applied, ignored).
pub async fn apply(app: &App, tenant: &str, body: &[u8]) -> Result<(usize, usize), AppError> {
    let batch: Value = serde_json::from_slice(body).map_err(|e| AppError::BadRequest(format!("invalid JSON: {e}")))?;
    let Value::Array(events) = batch else { return Err(AppError::BadRequest("a SendGrid batch is a JSON array".into())) };
    let mut reports = Vec::new();
    for (i, e) in events.iter().enumerate() {
        reports.push(read(i, e)?);
    }
    let (mut applied, mut ignored) = (0, 0);
    for r in reports {
        let Some(r) = r else {
            ignored += 1;
            continue;
        };
        let owner = customer::normalize_email(&r.feedback.email)
            .ok()
            .and_then(|e| {
                let v = app.views();
                v.tenant(tenant).and_then(|t| t.email_owner(v.index_key.as_ref(), &e).cloned())
            });
        let Some(id) = owner else {
            ignored += 1;
            continue;
        };
        let key = derive_id(&[tenant, "sendgrid", &r.feedback.provider_event_id]).to_string();
        let data = serde_json::to_value(&r.feedback).expect("feedback serializes");
        if r.unsubscribe {
            let revoke = ConsentInput {
                channel: Channel::Email,
                purpose: Purpose::Marketing,
                granted: false,
                source: Some(format!("sendgrid:{}", r.event_type)),
                legal_basis: None,
                proof: Some(json!({"sg_event_id": r.feedback.provider_event_id, "at": r.feedback.at})),
            };
            let cmd = CustomerCommand::SetConsent(revoke);
            app.customer_commands_from(tenant, &id, vec![cmd], "sendgrid", Some((&key, r.feedback.at)), Some((r.event_type.into(), data)))
                .await?;
        } else {
            let ev = NewEvent::new(derive_id(&[&key]), r.event_type, data, r.feedback.at).with_actor("sendgrid");
            match app.append(tenant, &customer::stream_of(&id), ExpectedVersion::Any, vec![ev]).await {
                Ok(_) | Err(AppError::IdReused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        applied += 1;
    }
    Ok((applied, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    #[test]
    fn a_signed_batch_is_fresh_for_ten_minutes_only() {
        let now = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(fresh("1800000000", now));
        assert!(fresh("1799999500", now) && fresh("1800000600", now));
        assert!(!fresh("1799999399", now), "a batch captured 10+ minutes ago is refused");
        assert!(!fresh("1800000601", now));
        assert!(!fresh("soon", now) && !fresh("", now) && !fresh("99999999999999999999", now));
    }

    #[test]
    fn a_signature_over_timestamp_and_body_verifies_and_anything_else_does_not() {
        let signing = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let der = signing.verifying_key().to_public_key_der().unwrap();
        let key = parse_public_key(&base64::engine::general_purpose::STANDARD.encode(der.as_bytes())).unwrap();
        let body = br#"[{"email":"a@x","event":"open"}]"#;
        let sig: Signature = signing.sign(&[b"1700000000".as_slice(), body].concat());
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        assert!(verify(&key, &sig, "1700000000", body));
        assert!(!verify(&key, &sig, "1700000001", body), "another timestamp");
        assert!(!verify(&key, &sig, "1700000000", br#"[{"email":"b@x","event":"open"}]"#), "another body");
        assert!(!verify(&key, "not base64!", "1700000000", body));
        assert!(parse_public_key("AAAA").is_err());
    }

    #[test]
    fn events_are_read_whole_and_unknown_kinds_ignored() {
        let ok = json!({"email": "a@x", "event": "bounce", "type": "bounce", "sg_event_id": "e1", "timestamp": 1700000000, "smtp-id": "<m1@chronicle>"});
        let r = read(0, &ok).unwrap().unwrap();
        assert_eq!((r.event_type, r.feedback.message.as_deref(), r.feedback.hard_bounce()), ("MessageBounced", Some("m1"), true));
        assert!(read(0, &json!({"email": "a@x", "event": "processed", "sg_event_id": "e", "timestamp": 1})).unwrap().is_none());
        let err = read(3, &json!({"event": "open", "sg_event_id": "e", "timestamp": 1})).err().unwrap();
        assert!(err.to_string().contains("event 3: email"));
    }
}
