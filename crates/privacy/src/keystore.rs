//! The key store: one data key per owner (a customer, an anonymous visitor), wrapped by the
//! master key, in fixed-size slots of one file (`keys.bin`).
//!
//! Destroying a key overwrites its slot in place with zeros and syncs the file, so no copy of
//! the wrapped key is left behind: no free pages, no journal, no old version elsewhere in the
//! file (an embedded database would keep such copies). Owners are named by a SHA-256 digest
//! of tenant and id, so the file holds no customer id either.
//!
//! Slot layout (128 bytes): state (1 = live, 0 = free), owner digest (32), master key version
//! (4, LE), nonce (12), wrapped key (32 + 16 tag), zero padding. The wrap is AES-256-GCM under
//! the master key with the owner digest as associated data, so a slot cannot be moved to
//! another owner.

use crate::cipher::DataKey;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

pub const KEY_FILE: &str = "keys.bin";
const MAGIC: &[u8; 16] = b"CHRONICLEKEYS\0v1";
const SLOT: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The master key that wraps every data key, with its version (rotation bumps it).
pub struct MasterKey {
    pub version: u32,
    key: DataKey,
}

impl MasterKey {
    pub fn new(version: u32, bytes: [u8; 32]) -> MasterKey {
        MasterKey { version, key: DataKey::from_bytes(bytes) }
    }

    /// `base64(32 bytes)`, optionally prefixed `N:` with the version (default 1).
    pub fn parse(text: &str) -> Result<MasterKey, KeyError> {
        use base64::Engine;
        let text = text.trim();
        let (version, b64) = match text.split_once(':') {
            Some((v, k)) => (v.parse().map_err(|_| KeyError::Invalid("master key version must be a number".into()))?, k),
            None => (1, text),
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| KeyError::Invalid("the master key must be base64 of 32 bytes".into()))?;
        let bytes: [u8; 32] =
            raw.try_into().map_err(|_| KeyError::Invalid("the master key must be 32 bytes (base64 of 44 characters)".into()))?;
        Ok(MasterKey::new(version, bytes))
    }

    pub fn generate(version: u32) -> (MasterKey, String) {
        use base64::Engine;
        let k = DataKey::random();
        let text = format!("{version}:{}", base64::engine::general_purpose::STANDARD.encode(k.bytes()));
        (MasterKey { version, key: k }, text)
    }
}

struct Live {
    slot: u64,
    key: DataKey,
    /// The write that made it: usable once a sync covered it (nothing may be sealed with a
    /// key that a crash could lose).
    ticket: u64,
}

struct Inner {
    file: File,
    master: MasterKey,
    keys: HashMap<[u8; 32], Live>,
    /// Tenant → owner → digest, so a look-up by name needs no hashing of its own (the digest is
    /// SHA-256; look-ups run for every append).
    names: HashMap<String, HashMap<String, [u8; 32]>>,
    free: Vec<u64>,
    slots: u64,
    /// Slot writes so far, and the count the last sync covered (group sync).
    written: u64,
    synced: u64,
}

pub struct KeyStore {
    inner: Mutex<Inner>,
    sync: Mutex<()>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyStore({} keys)", self.len())
    }
}

pub fn owner_digest(tenant: &str, owner: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(tenant.as_bytes());
    h.update([0]);
    h.update(owner.as_bytes());
    h.finalize().into()
}

impl KeyStore {
    /// Open (or create) `dir/keys.bin`, unwrapping every live key with `master`.
    pub fn open(dir: &Path, master: MasterKey) -> Result<KeyStore, KeyError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(KEY_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        if bytes.is_empty() {
            file.write_all_at(MAGIC, 0)?;
            file.sync_all()?;
            bytes.extend_from_slice(MAGIC);
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(KeyError::Invalid(format!("{} is not a Chronicle key file", path.display())));
        }
        let body = &bytes[MAGIC.len()..];
        // A torn last slot (a crash while it was appended, before its sync) held no key in use.
        let slots = (body.len() / SLOT) as u64;
        let (mut keys, mut free) = (HashMap::new(), Vec::new());
        for i in 0..slots {
            let s = &body[i as usize * SLOT..(i as usize + 1) * SLOT];
            if s[0] != 1 {
                free.push(i);
                continue;
            }
            let digest: [u8; 32] = s[1..33].try_into().expect("32 bytes");
            let version = u32::from_le_bytes(s[33..37].try_into().expect("4 bytes"));
            if version != master.version {
                return Err(KeyError::Invalid(format!(
                    "a key is wrapped by master key version {version}, but version {} was given; finish the rotation with the old key",
                    master.version
                )));
            }
            let raw = master
                .key
                .decrypt(&s[37..97], &digest)
                .ok_or_else(|| KeyError::Invalid("a data key does not unwrap with this master key (wrong master key?)".into()))?;
            let key: [u8; 32] = raw.try_into().map_err(|_| KeyError::Invalid("a wrapped key has the wrong length".into()))?;
            keys.insert(digest, Live { slot: i, key: DataKey::from_bytes(key), ticket: 0 });
        }
        free.reverse();
        let inner = Inner { file, master, keys, names: HashMap::new(), free, slots, written: 0, synced: 0 };
        Ok(KeyStore { inner: Mutex::new(inner), sync: Mutex::new(()) })
    }

    /// The owner's key, if it has one, durably stored (none: never had personal data, erased,
    /// or still being made).
    pub fn get(&self, tenant: &str, owner: &str) -> Option<DataKey> {
        let mut g = self.inner.lock().expect("key store lock");
        let d = g.digest(tenant, owner);
        g.keys.get(&d).filter(|l| l.ticket <= g.synced).map(|l| l.key.clone())
    }

    /// The owner's key, made (and durably stored) on first use.
    pub fn get_or_create(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError> {
        let d = owner_digest(tenant, owner);
        let (key, ticket) = {
            let mut g = self.inner.lock().expect("key store lock");
            if let Some(l) = g.keys.get(&d) {
                let (key, ticket) = (l.key.clone(), l.ticket);
                drop(g);
                self.sync_through(ticket)?;
                return Ok(key);
            }
            g.make(d)?
        };
        self.sync_through(ticket)?;
        Ok(key)
    }

    /// Make the keys of every owner that has none, with one sync for all of them.
    pub fn create_many(&self, tenant: &str, owners: &[String]) -> Result<usize, KeyError> {
        let (made, ticket) = {
            let mut g = self.inner.lock().expect("key store lock");
            let mut made = 0;
            for owner in owners {
                let d = owner_digest(tenant, owner);
                if g.keys.contains_key(&d) {
                    continue;
                }
                g.make(d)?;
                made += 1;
            }
            (made, g.written)
        };
        if made > 0 {
            self.sync_through(ticket)?;
        }
        Ok(made)
    }

    /// Destroy the owner's key: its slot is overwritten with zeros and synced. Returns whether
    /// there was one.
    pub fn destroy(&self, tenant: &str, owner: &str) -> Result<bool, KeyError> {
        let d = owner_digest(tenant, owner);
        let ticket = {
            let mut g = self.inner.lock().expect("key store lock");
            if let Some(m) = g.names.get_mut(tenant) {
                m.remove(owner);
            }
            let Some(live) = g.keys.remove(&d) else { return Ok(false) };
            g.file.write_all_at(&[0u8; SLOT], offset(live.slot))?;
            g.free.push(live.slot);
            g.written += 1;
            g.written
        };
        self.sync_through(ticket)?;
        Ok(true)
    }

    /// Re-wrap every key under `new` (each slot rewritten in place, then synced); afterwards
    /// the old master key is no longer needed.
    pub fn rotate(&self, new: MasterKey) -> Result<usize, KeyError> {
        let mut g = self.inner.lock().expect("key store lock");
        let live: Vec<([u8; 32], u64, DataKey)> = g.keys.iter().map(|(d, l)| (*d, l.slot, l.key.clone())).collect();
        for (d, slot, key) in &live {
            g.file.write_all_at(&wrap(&new, d, key), offset(*slot))?;
        }
        g.file.sync_data()?;
        g.master = new;
        Ok(live.len())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("key store lock").keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make every slot write up to `ticket` durable; concurrent callers share one sync.
    fn sync_through(&self, ticket: u64) -> Result<(), KeyError> {
        let _one = self.sync.lock().expect("key sync lock");
        let (file, upto) = {
            let g = self.inner.lock().expect("key store lock");
            if g.synced >= ticket {
                return Ok(());
            }
            (g.file.try_clone()?, g.written)
        };
        file.sync_data()?;
        let mut g = self.inner.lock().expect("key store lock");
        g.synced = g.synced.max(upto);
        Ok(())
    }
}

impl Inner {
    /// A new key for `d`, written to a free slot (not yet synced); returns it and its ticket.
    fn make(&mut self, d: [u8; 32]) -> Result<(DataKey, u64), KeyError> {
        let key = DataKey::random();
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots += 1;
            self.slots - 1
        });
        self.file.write_all_at(&wrap(&self.master, &d, &key), offset(slot))?;
        self.written += 1;
        let ticket = self.written;
        self.keys.insert(d, Live { slot, key: key.clone(), ticket });
        Ok((key, ticket))
    }

    fn digest(&mut self, tenant: &str, owner: &str) -> [u8; 32] {
        if let Some(d) = self.names.get(tenant).and_then(|m| m.get(owner)) {
            return *d;
        }
        let d = owner_digest(tenant, owner);
        // Remembered only for owners that have a key (erased ones are forgotten below).
        if self.keys.contains_key(&d) {
            self.names.entry(tenant.to_owned()).or_default().insert(owner.to_owned(), d);
        }
        d
    }
}

fn offset(slot: u64) -> u64 {
    MAGIC.len() as u64 + slot * SLOT as u64
}

fn wrap(master: &MasterKey, digest: &[u8; 32], key: &DataKey) -> [u8; SLOT] {
    let sealed = master.key.encrypt(key.bytes(), digest);
    debug_assert_eq!(sealed.len(), 60);
    let mut s = [0u8; SLOT];
    s[0] = 1;
    s[1..33].copy_from_slice(digest);
    s[33..37].copy_from_slice(&master.version.to_le_bytes());
    s[37..97].copy_from_slice(&sealed);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(v: u32) -> MasterKey {
        MasterKey::new(v, [v as u8; 32])
    }

    #[test]
    fn keys_survive_reopening_and_a_destroyed_key_leaves_no_bytes_behind() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        let a = ks.get_or_create("t", "c-1").unwrap();
        let b = ks.get_or_create("t", "c-2").unwrap();
        assert_eq!(ks.get_or_create("t", "c-1").unwrap().bytes(), a.bytes(), "one key per owner");
        assert!(ks.get("u", "c-1").is_none(), "tenants are apart");
        drop(ks);
        let before = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert_eq!(ks.get("t", "c-1").unwrap().bytes(), a.bytes());
        assert!(ks.destroy("t", "c-1").unwrap());
        assert!(!ks.destroy("t", "c-1").unwrap());
        assert!(ks.get("t", "c-1").is_none());
        drop(ks);
        let after = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(before.len(), after.len(), "destroyed in place");
        let slot = &before[MAGIC.len()..MAGIC.len() + SLOT];
        assert!(after.windows(48).all(|w| w != &slot[49..97]), "the wrapped key's bytes are gone from the file");
        assert!(after[MAGIC.len()..MAGIC.len() + SLOT].iter().all(|b| *b == 0));
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert!(ks.get("t", "c-1").is_none());
        assert_eq!(ks.get("t", "c-2").unwrap().bytes(), b.bytes());
        // The free slot is used again.
        ks.get_or_create("t", "c-3").unwrap();
        assert_eq!(std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().len(), after.len() as u64);
    }

    #[test]
    fn the_wrong_master_key_is_refused_and_rotation_rewraps_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        let a = ks.get_or_create("t", "c-1").unwrap();
        drop(ks);
        assert!(KeyStore::open(dir.path(), MasterKey::new(1, [9; 32])).is_err());
        assert!(KeyStore::open(dir.path(), master(2)).unwrap_err().to_string().contains("version 1"));
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert_eq!(ks.rotate(master(2)).unwrap(), 1);
        drop(ks);
        assert!(KeyStore::open(dir.path(), master(1)).is_err(), "the old master key no longer opens it");
        let ks = KeyStore::open(dir.path(), master(2)).unwrap();
        assert_eq!(ks.get("t", "c-1").unwrap().bytes(), a.bytes());
    }

    #[test]
    fn master_keys_parse_from_text() {
        let (m, text) = MasterKey::generate(3);
        let back = MasterKey::parse(&text).unwrap();
        assert_eq!((back.version, back.key.bytes()), (3, m.key.bytes()));
        assert!(MasterKey::parse("not base64!").is_err());
        assert!(MasterKey::parse("AAAA").is_err());
    }
}
