//! AES-256-GCM: data keys, sealing a value into a self-describing string, and opening it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use std::sync::{Arc, Mutex};
use zeroize::Zeroize;

/// What every sealed string starts with.
pub const SEALED_MARK: &str = "enc:v";
/// A value sealed with a key known by its owner: `enc:v1:<base64>`.
pub const SEALED_PREFIX: &str = "enc:v1:";
/// A value sealed with a key that names its slot in the key store: `enc:v2:<slot>:<base64>`
/// (a reader finds the key even when the owner's record of it was lost in a crash).
const SLOT_PREFIX: &str = "enc:v2:";

/// Which key a sealed string needs: `Some(None)` its owner's (v1), `Some(Some(slot))` the key
/// in that slot (v2); `None` when it is not sealed.
pub fn sealed_slot(sealed: &str) -> Option<Option<u64>> {
    if sealed.starts_with(SEALED_PREFIX) {
        return Some(None);
    }
    let rest = sealed.strip_prefix(SLOT_PREFIX)?;
    let (slot, _) = rest.split_once(':')?;
    slot.parse().ok().map(Some)
}

/// The slots that `enc:v2:<slot>:` values in `text` name (a scan of the text: a payload as
/// stored need not be parsed to know which keys opening it takes).
pub fn slots_named(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.match_indices(SLOT_PREFIX).filter_map(move |(at, _)| {
        let rest = &text[at + SLOT_PREFIX.len()..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..digits].parse().ok()
    })
}

/// A 256-bit key; its bytes (and the cipher's expanded round keys) are wiped when it is
/// dropped.
#[derive(Clone)]
pub struct DataKey(Arc<Inner>);

struct Inner {
    bytes: [u8; 32],
    aead: Aes256Gcm,
    /// The key store slot it lives in, when sealed values name it (v2).
    slot: Option<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// Nonces: a random 64-bit prefix per process and a 32-bit counter (a new prefix when it wraps),
/// so no two seals under one key share a nonce without a per-seal system call.
fn next_nonce() -> [u8; 12] {
    static STATE: Mutex<Option<([u8; 8], u32)>> = Mutex::new(None);
    let mut s = STATE.lock().expect("nonce lock");
    let (prefix, counter) = match s.as_mut() {
        Some((p, c)) if *c < u32::MAX => {
            *c += 1;
            (*p, *c)
        }
        _ => {
            let mut p = [0u8; 8];
            getrandom::fill(&mut p).expect("the OS random source");
            *s = Some((p, 0));
            (p, 0)
        }
    };
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&prefix);
    n[8..].copy_from_slice(&counter.to_le_bytes());
    n
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn random() -> DataKey {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).expect("the OS random source");
        let key = DataKey::from_bytes(k);
        k.zeroize();
        key
    }

    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        let aead = Aes256Gcm::new_from_slice(&bytes).expect("32-byte key");
        DataKey(Arc::new(Inner { bytes, aead, slot: None }))
    }

    /// The same key, living in key store slot `slot`: what it seals names the slot.
    pub fn in_slot(&self, slot: u64) -> DataKey {
        let aead = Aes256Gcm::new_from_slice(&self.0.bytes).expect("32-byte key");
        DataKey(Arc::new(Inner { bytes: self.0.bytes, aead, slot: Some(slot) }))
    }

    pub fn slot(&self) -> Option<u64> {
        self.0.slot
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0.bytes
    }

    fn aead(&self) -> &Aes256Gcm {
        &self.0.aead
    }

    /// `nonce || ciphertext || tag`, authenticated with `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = next_nonce();
        let ct = self
            .aead()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encrypts any length we use");
        let mut out = Vec::with_capacity(12 + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    pub fn decrypt(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < 12 + 16 {
            return None;
        }
        let (nonce, ct) = sealed.split_at(12);
        self.aead().decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).ok()
    }

    /// Seal text into `enc:v1:<base64>`, or `enc:v2:<slot>:<base64>` for a key in a slot; the
    /// prefix is authenticated with the ciphertext.
    pub fn seal(&self, plaintext: &str) -> String {
        let mut out = String::with_capacity(SEALED_PREFIX.len() + 21 + (plaintext.len() + 28) * 4 / 3 + 4);
        self.seal_into(plaintext, &mut out);
        out
    }

    /// [`seal`](Self::seal), appending to `out` (bulk writers seal many payloads; this spares
    /// a buffer per payload).
    pub fn seal_into(&self, plaintext: &str, out: &mut String) {
        use aes_gcm::aead::AeadInPlace;
        let start = out.len();
        match self.0.slot {
            None => out.push_str(SEALED_PREFIX),
            Some(slot) => {
                use std::fmt::Write;
                let _ = write!(out, "{SLOT_PREFIX}{slot}:");
            }
        }
        let nonce = next_nonce();
        let mut buf = Vec::with_capacity(12 + plaintext.len() + 16);
        buf.extend_from_slice(&nonce);
        buf.extend_from_slice(plaintext.as_bytes());
        let tag = self
            .aead()
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &out.as_bytes()[start..], &mut buf[12..])
            .expect("AES-GCM encrypts any length we use");
        buf.extend_from_slice(&tag);
        base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(&buf, out);
    }

    /// Open what [`seal`](Self::seal) made; `None` if it is not sealed with this key.
    pub fn open(&self, sealed: &str) -> Option<String> {
        let prefix_len = match sealed_slot(sealed)? {
            None => SEALED_PREFIX.len(),
            Some(_) => SLOT_PREFIX.len() + sealed[SLOT_PREFIX.len()..].find(':')? + 1,
        };
        let (prefix, b64) = sealed.split_at(prefix_len);
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).ok()?;
        String::from_utf8(self.decrypt(&raw, prefix.as_bytes())?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_text_opens_only_with_its_key_and_hides_the_plaintext() {
        let k = DataKey::random();
        let s = k.seal("ada@example.com");
        assert!(s.starts_with(SEALED_PREFIX));
        assert!(!s.contains("ada@"));
        assert_eq!(k.open(&s).as_deref(), Some("ada@example.com"));
        assert_ne!(k.seal("ada@example.com"), s, "a fresh nonce each time");
        assert_eq!(DataKey::random().open(&s), None);
        // One character of the ciphertext changed: the tag no longer matches.
        let mid = s.len() / 2;
        let swap = if &s[mid..mid + 1] == "A" { "B" } else { "A" };
        let tampered = format!("{}{swap}{}", &s[..mid], &s[mid + 1..]);
        assert_eq!(k.open(&tampered), None);

        // In a slot: the value names it, and the name is authenticated.
        let in_slot = k.in_slot(42);
        let s = in_slot.seal("ada@example.com");
        assert!(s.starts_with("enc:v2:42:"), "{s}");
        assert_eq!(sealed_slot(&s), Some(Some(42)));
        assert_eq!(sealed_slot(&k.seal("x")), Some(None));
        assert_eq!(sealed_slot("plain"), None);
        assert_eq!(in_slot.open(&s).as_deref(), Some("ada@example.com"));
        assert_eq!(k.open(&s).as_deref(), Some("ada@example.com"), "the same key bytes");
        let moved = s.replacen("enc:v2:42:", "enc:v2:43:", 1);
        assert_eq!(in_slot.open(&moved), None, "a value cannot claim another slot");
    }
}
