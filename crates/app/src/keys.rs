//! API and write keys: minted from the OS's randomness, shown once, stored only as SHA-256
//! digests (keys are 256-bit random secrets, so a fast hash is enough to make a stolen data
//! folder useless for authentication), and tenant names.

use crate::error::AppError;
use sha2::{Digest, Sha256};

/// A new key: `prefix_` followed by 64 hex digits of randomness.
pub fn mint(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    format!("{prefix}_{}", hex(&bytes))
}

/// The stored form of a key.
pub fn digest(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Keys made through the API: `ck_<id>_<secret>`, the id (16 hex digits) names the record,
/// the secret (64 hex digits) is kept only as an argon2id hash. The cost is kept modest
/// (4 MiB, 2 passes): the secret is 256 random bits, so the hash guards a stolen data folder,
/// not a guessable password; each process verifies a key once and remembers it.
pub fn mint_api_key() -> (String, String, String) {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the OS provides randomness");
    let id = hex(&id);
    let key = format!("ck_{id}_{}", &mint("s")[2..]);
    let hash = hash_secret(&key);
    (id, key, hash)
}

fn argon() -> argon2::Argon2<'static> {
    let params = argon2::Params::new(4096, 2, 1, None).expect("valid argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

fn hash_secret(key: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS provides randomness");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes of salt");
    argon().hash_password(key.as_bytes(), &salt).expect("argon2 hashes").to_string()
}

/// A person's password, hashed with argon2id at OWASP's recommended cost (19 MiB, 2 passes): a
/// password is guessable, unlike a key, so each guess must be expensive.
pub fn hash_password(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the OS provides randomness");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes of salt");
    let params = argon2::Params::new(19 * 1024, 2, 1, None).expect("valid argon2 parameters");
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon.hash_password(password.as_bytes(), &salt).expect("argon2 hashes").to_string()
}

/// Whether `password` matches the stored hash (its parameters are read from the hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Whether `key` matches the stored hash.
pub fn verify_secret(key: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon().verify_password(key.as_bytes(), &h).is_ok())
}

/// The id part of an API-made key, if it is one.
pub fn api_key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("ck_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 16 && secret.len() == 64).then_some(id)
}

/// Tenant names: 1-64 lower-case letters, digits, `-` and `_`, not starting with `_`
/// (reserved for Chronicle's own records).
pub fn validate_tenant_name(name: &str) -> Result<(), AppError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(AppError::BadRequest(format!(
            "invalid tenant name {name:?}: use 1-64 of a-z, 0-9, - and _, not starting with _"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_verify_against_their_hash_only() {
        let (id, key, hash) = mint_api_key();
        assert_eq!(api_key_id(&key), Some(id.as_str()));
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains(&key[20..]));
        assert!(verify_secret(&key, &hash));
        let (_, other, _) = mint_api_key();
        assert!(!verify_secret(&other, &hash));
        assert_eq!(api_key_id("ck_0123"), None);
    }

    #[test]
    fn keys_are_random_and_digests_stable() {
        let a = mint("ck");
        assert!(a.starts_with("ck_") && a.len() == 67);
        assert_ne!(a, mint("ck"));
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn tenant_names() {
        assert!(validate_tenant_name("acme-eu_1").is_ok());
        for bad in ["", "_system", "Acme", "a b", &"x".repeat(65)] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
