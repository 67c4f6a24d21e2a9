//! One-click unsubscribe (RFC 8058) for marketing e-mail: each marketing message carries
//! `List-Unsubscribe: <PUBLIC_URL/v1/unsubscribe?t=TOKEN>` and `List-Unsubscribe-Post:
//! List-Unsubscribe=One-Click`; a `POST` to the link revokes the customer's e-mail marketing
//! consent, with the message as its proof.
//!
//! The token names the tenant, the customer and the message, and is signed (HMAC-SHA256) with
//! a key every node shares (`--unsubscribe-secret`), so any node verifies any link and nothing
//! is stored per link. A `GET` of the link only shows a confirmation form: link scanners fetch
//! links, and must not unsubscribe anyone.

use crate::app::App;
use crate::error::AppError;
use base64::Engine as _;
use chronicle_automation::derive_id;
use chronicle_core::customer::{Channel, ConsentInput, CustomerCommand, Purpose};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// How links are made and checked.
#[derive(Clone)]
pub struct Links {
    /// Where recipients reach Chronicle (`--public-url`), without a trailing `/`.
    public_url: String,
    key: Vec<u8>,
}

/// Whom a verified link unsubscribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub tenant: String,
    pub customer: String,
    pub message: String,
}

/// Why a link is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the unsubscribe link is not valid (changed, or made with another key)")]
pub struct InvalidLink;

impl Links {
    pub fn new(public_url: &str, secret: &str) -> Links {
        Links { public_url: public_url.trim_end_matches('/').to_owned(), key: secret.as_bytes().to_vec() }
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(payload);
        mac
    }

    /// The link of one message.
    pub fn link(&self, tenant: &str, customer: &str, message: &str) -> String {
        let payload = format!("{tenant}\n{customer}\n{message}");
        let signature = self.mac(payload.as_bytes()).finalize().into_bytes();
        format!("{}/v1/unsubscribe?t={}.{}", self.public_url, B64.encode(payload), B64.encode(signature))
    }

    /// The claim of a token, if this key signed it (compared in constant time).
    pub fn verify(&self, token: &str) -> Result<Claim, InvalidLink> {
        let (payload, signature) = token.split_once('.').ok_or(InvalidLink)?;
        let payload = B64.decode(payload).map_err(|_| InvalidLink)?;
        let signature = B64.decode(signature).map_err(|_| InvalidLink)?;
        self.mac(&payload).verify_slice(&signature).map_err(|_| InvalidLink)?;
        let text = String::from_utf8(payload).map_err(|_| InvalidLink)?;
        let mut parts = text.splitn(3, '\n');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(t), Some(c), Some(m)) => Ok(Claim { tenant: t.to_owned(), customer: c.to_owned(), message: m.to_owned() }),
            _ => Err(InvalidLink),
        }
    }
}

/// Revokes the claim's customer's e-mail marketing consent (source `list-unsubscribe`, the
/// message and how it was asked as proof). Idempotent: the revocation's id is derived from the
/// message, so a second click (or a client's retry) records nothing more.
pub async fn apply(app: &App, claim: &Claim, one_click: bool) -> Result<(), AppError> {
    let now = app.now();
    let revoke = ConsentInput {
        channel: Channel::Email,
        purpose: Purpose::Marketing,
        granted: false,
        source: Some("list-unsubscribe".into()),
        legal_basis: None,
        proof: Some(json!({"message": claim.message, "method": if one_click { "one-click" } else { "link" }, "at": now})),
    };
    let key = derive_id(&[&claim.tenant, "unsubscribe", &claim.message]).to_string();
    match app
        .customer_commands_from(&claim.tenant, &claim.customer, vec![CustomerCommand::SetConsent(revoke)], "list-unsubscribe", Some((&key, now)), None)
        .await
    {
        Ok(_) | Err(AppError::IdReused(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_verifies_with_its_key_only_and_not_once_changed() {
        let links = Links::new("https://crm.example.com/", "shared secret");
        let link = links.link("acme", "c-42", "m-1");
        assert!(link.starts_with("https://crm.example.com/v1/unsubscribe?t="), "{link}");
        let token = link.split_once("?t=").unwrap().1;
        let claim = links.verify(token).unwrap();
        assert_eq!(claim, Claim { tenant: "acme".into(), customer: "c-42".into(), message: "m-1".into() });
        assert_eq!(Links::new("https://crm.example.com", "another").verify(token), Err(InvalidLink));
        let (payload, sig) = token.split_once('.').unwrap();
        let forged = format!("{}.{sig}", B64.encode("acme\nc-43\nm-1"));
        assert_eq!(links.verify(&forged), Err(InvalidLink), "another customer with the same signature");
        assert_eq!(links.verify(payload), Err(InvalidLink));
        assert_eq!(links.verify("!!.??"), Err(InvalidLink));
    }
}
