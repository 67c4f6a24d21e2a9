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
