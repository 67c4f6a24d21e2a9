//! AES-256-GCM: data keys, sealing a value into a self-describing string, and opening it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use zeroize::Zeroize;

/// What a sealed string starts with.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// A 256-bit key; its bytes are wiped when it is dropped.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl Drop for DataKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
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
        DataKey(k)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> DataKey {
        DataKey(bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&self.0).expect("32-byte key")
    }

    /// `nonce || ciphertext || tag`, authenticated with `aad`.
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).expect("the OS random source");
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

    /// Seal text into `enc:v1:<base64>`.
    pub fn seal(&self, plaintext: &str) -> String {
        let b = self.encrypt(plaintext.as_bytes(), SEALED_PREFIX.as_bytes());
        let mut out = String::with_capacity(SEALED_PREFIX.len() + b.len() * 4 / 3 + 4);
        out.push_str(SEALED_PREFIX);
        base64::engine::general_purpose::STANDARD_NO_PAD.encode_string(&b, &mut out);
        out
    }

    /// Open what [`seal`](Self::seal) made; `None` if it is not sealed with this key.
    pub fn open(&self, sealed: &str) -> Option<String> {
        let b64 = sealed.strip_prefix(SEALED_PREFIX)?;
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64).ok()?;
        String::from_utf8(self.decrypt(&raw, SEALED_PREFIX.as_bytes())?).ok()
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
        assert!(!s.contains("ada"));
        assert_eq!(k.open(&s).as_deref(), Some("ada@example.com"));
        assert_ne!(k.seal("ada@example.com"), s, "a fresh nonce each time");
        assert_eq!(DataKey::random().open(&s), None);
        // One character of the ciphertext changed: the tag no longer matches.
        let mid = s.len() / 2;
        let swap = if &s[mid..mid + 1] == "A" { "B" } else { "A" };
        let tampered = format!("{}{swap}{}", &s[..mid], &s[mid + 1..]);
        assert_eq!(k.open(&tampered), None);
    }
}
