//! Keyed pseudonyms for customer ids that are personal data.
//!
//! A customer's id becomes part of stream names (`customer-<id>`), of the id registry's rows,
//! of audit entries and of the checkpoint's keys — places that erasure does not redact, as
//! crypto-shredding seals payloads, not names. Integrators often use an e-mail address or a
//! phone number as the id (a Segment `userId` is often one). So an id that looks like one is
//! never stored: wherever a customer id enters — a Segment `userId` or `previousId`, a
//! CloudEvent's `subject`, `POST /v1/customers`' `id`, the `{id}` of `/v1/customers/{id}/…`,
//! an import — it is replaced by `p-` and 32 hex digits of HMAC-SHA256 under a key of the
//! store's own (derived from the key of the e-mail index, kept in the key store, never in the
//! log). The same id always gives the same pseudonym, so clients go on using the e-mail as the
//! id; the log alone does not tell who it is, and after an erasure nothing readable is left.
//! (Whoever holds the key store can test a guess, as with the e-mail index.) The id as given is
//! kept inside the person's own sealed events (Segment messages keep it in their context).
//!
//! A store that does not seal personal data (`--seal=false`) has no key: ids stay as given.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The pseudonym key, when the store seals personal data.
#[derive(Clone, Default)]
pub struct Pseudonyms {
    key: Option<[u8; 32]>,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.key.is_some() { "Pseudonyms(on)" } else { "Pseudonyms(off)" })
    }
}

impl Pseudonyms {
    /// Pseudonyms keyed from the store's index key (none: ids stay as given).
    pub fn new(index_key: Option<[u8; 32]>) -> Pseudonyms {
        let key = index_key.map(|k| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&k).expect("HMAC takes any key length");
            mac.update(b"chronicle customer-id pseudonyms v1");
            mac.finalize().into_bytes().into()
        });
        Pseudonyms { key }
    }

    /// The id to store for `id`: its pseudonym when it looks like personal data and the store
    /// seals, else `id` itself.
    pub fn id<'a>(&self, id: &'a str) -> std::borrow::Cow<'a, str> {
        match (&self.key, looks_personal(id)) {
            (Some(key), true) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
                mac.update(id.trim().to_lowercase().as_bytes());
                let digest = mac.finalize().into_bytes();
                std::borrow::Cow::Owned(format!("p-{}", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>()))
            }
            _ => std::borrow::Cow::Borrowed(id),
        }
    }

    /// Replace the ids in `fields` of a message (a JSON object) by what is stored for them,
    /// keeping the ids as given in `context.given_ids` (sealed with the rest of the person's
    /// event). Numbers are ids too (Segment stringifies them) but never look personal.
    pub fn apply(&self, m: &mut serde_json::Map<String, serde_json::Value>, fields: &[&str]) {
        if self.key.is_none() {
            return;
        }
        let mut given = serde_json::Map::new();
        for f in fields {
            let Some(serde_json::Value::String(id)) = m.get(*f) else { continue };
            if let std::borrow::Cow::Owned(p) = self.id(id) {
                given.insert((*f).to_owned(), serde_json::Value::String(id.clone()));
                m.insert((*f).to_owned(), serde_json::Value::String(p));
            }
        }
        if given.is_empty() {
            return;
        }
        let context = m.entry("context").or_insert_with(|| serde_json::Value::Object(Default::default()));
        if let serde_json::Value::Object(c) = context {
            c.insert("given_ids".into(), serde_json::Value::Object(given));
        }
    }
}

/// Whether an id looks like an e-mail address or a phone number.
pub fn looks_personal(id: &str) -> bool {
    let id = id.trim();
    if id.contains('@') {
        return true;
    }
    // A phone number: written with `+` or separators; a bare run of digits is taken for a
    // numeric id (a database key, a timestamp), as integrators use those far more.
    let digits = id.chars().filter(char::is_ascii_digit).count();
    let phone_chars = id.chars().all(|c| c.is_ascii_digit() || " +-().".contains(c));
    phone_chars
        && digits >= 7
        && (id.starts_with('+') || id.contains([' ', '(']) || (id.contains('-') && digits >= 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_looking_ids_get_a_stable_keyed_pseudonym_and_others_stay() {
        let p = Pseudonyms::new(Some([7; 32]));
        let a = p.id("Ada@Example.com").into_owned();
        assert!(a.starts_with("p-") && a.len() == 34, "{a}");
        assert_eq!(p.id(" ada@example.com"), a, "the same address, however written");
        assert_ne!(Pseudonyms::new(Some([8; 32])).id("ada@example.com"), a, "keyed");
        assert!(p.id("+351 910 000 000").starts_with("p-"));
        assert!(p.id("555-123-4567").starts_with("p-"));
        for plain in ["c-42", "user_1", "42", "1700000000", "5551234567", "anon-z", "2026-01-01"] {
            assert_eq!(p.id(plain), plain, "{plain}");
        }
        assert_eq!(Pseudonyms::new(None).id("ada@example.com"), "ada@example.com", "no key: as given");
        let mut m = serde_json::json!({"userId": "ada@example.com", "previousId": "anon-1"}).as_object().unwrap().clone();
        p.apply(&mut m, &["userId", "previousId"]);
        assert_eq!(m["userId"], serde_json::json!(a));
        assert_eq!(m["previousId"], "anon-1");
        assert_eq!(m["context"]["given_ids"]["userId"], "ada@example.com");
    }
}
