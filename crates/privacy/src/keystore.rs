//! The key store: one data key per owner (a customer, an anonymous visitor), wrapped by the
//! master key, in fixed-size slots of one file (`keys.bin`).
//!
//! Destroying a key overwrites its slot in place with zeros and syncs the file, so no copy of
//! the wrapped key is left behind: no free pages, no journal, no old version elsewhere in the
//! file (an embedded database would keep such copies). Owners are named by a SHA-256 digest
//! of tenant and id, so the file holds no customer id either.
//!
//! Customer and visitor keys come from a **pool** made ahead of time: a batch of keys is
//! written and synced once, and an owner's first append takes one and writes the owner's
//! digest into its slot without a sync of its own. Values sealed with a pooled key name its
//! slot (`enc:v2:<slot>:…`), so they open even if a crash lost the owner's digest; such a slot
//! is then an *orphan* (never handed out again, its key still there), and erasing the owner
//! destroys every slot its events name (`SealedStore::destroy_keys`), orphans included.
//!
//! Slot layout (128 bytes): state (0 = free, 1 = the owner's key, 2 = a pooled key), owner
//! digest (32; zero for a pooled key not yet handed out), master key version (4, LE), nonce
//! (12), wrapped key (32 + 16 tag), zero padding. The wrap is AES-256-GCM under the master key
//! with, as associated data, the owner digest (state 1, so a slot cannot be moved to another
//! owner) or the slot number (state 2, so a value cannot point at another slot).

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
/// Free slots added at a time when none is left.
const GROW_SLOTS: u64 = 4096;
/// Pooled keys made (and synced) at a time.
const POOL_BATCH: usize = 1024;
const OWNED: u8 = 1;
const POOLED: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key store I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("key store in PostgreSQL: {0}")]
    Database(String),
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

    /// A pooled key wrapped for `slot` (nonce and sealed key; the slot is the associated data,
    /// so a wrapped key cannot be moved to another slot).
    pub(crate) fn wrap_for_slot(&self, slot: u64, key: &DataKey) -> Vec<u8> {
        self.key.encrypt(key.bytes(), &slot_aad(slot))
    }

    /// The key [`wrap_for_slot`](Self::wrap_for_slot) wrapped, if this master key wrapped it.
    pub(crate) fn unwrap_for_slot(&self, slot: u64, wrapped: &[u8]) -> Option<DataKey> {
        let raw: [u8; 32] = self.key.decrypt(wrapped, &slot_aad(slot))?.try_into().ok()?;
        Some(DataKey::from_bytes(raw).in_slot(slot))
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

/// A pooled key's slot: the key (naming its slot) and its owner, once handed out.
struct Pooled {
    key: DataKey,
    owner: Option<[u8; 32]>,
}

struct Inner {
    file: File,
    master: MasterKey,
    keys: HashMap<[u8; 32], Live>,
    /// Every pooled key by slot: handed out, waiting in `pool`, or orphaned.
    pooled: HashMap<u64, Pooled>,
    /// Pooled keys made by this process and not handed out yet, with the write that made them.
    pool: Vec<(u64, u64)>,
    /// Pooled keys without an owner found on open (a crash may have lost their owner).
    orphans: usize,
    /// A refill ahead of need is under way.
    refilling: bool,
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

impl Drop for KeyStore {
    fn drop(&mut self) {
        // Best effort: after a crash the unused keys stay as orphans, which is safe.
        if let Err(e) = self.release_pool() {
            tracing::warn!(error = %e, "could not give the key pool's unused keys back");
        }
    }
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
            // The file's name too: a crash must not lose the file the keys are appended to.
            chronicle_store::log::sync_dir(dir)?;
            bytes.extend_from_slice(MAGIC);
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(KeyError::Invalid(format!("{} is not a Chronicle key file", path.display())));
        }
        let body = &bytes[MAGIC.len()..];
        // A torn last slot (a crash while it was appended, before its sync) held no key in use.
        let slots = (body.len() / SLOT) as u64;
        let (mut keys, mut free, mut pooled, mut orphans) = (HashMap::new(), Vec::new(), HashMap::new(), 0);
        let (mut torn, mut opened) = (Vec::new(), 0);
        for i in 0..slots {
            let s = &body[i as usize * SLOT..(i as usize + 1) * SLOT];
            if s[0] != OWNED && s[0] != POOLED {
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
            let aad = if s[0] == OWNED { digest.to_vec() } else { slot_aad(i) };
            let Some(raw) = master.key.decrypt(&s[37..97], &aad) else {
                if s[0] == POOLED && digest == [0; 32] {
                    // Possibly a pooled key whose batch was torn by a crash before its sync (so
                    // never handed out): free, if the master key opens the others.
                    torn.push(i);
                    continue;
                }
                return Err(KeyError::Invalid("a data key does not unwrap with this master key (wrong master key?)".into()));
            };
            opened += 1;
            let key: [u8; 32] = raw.try_into().map_err(|_| KeyError::Invalid("a wrapped key has the wrong length".into()))?;
            if s[0] == OWNED {
                keys.insert(digest, Live { slot: i, key: DataKey::from_bytes(key), ticket: 0 });
                continue;
            }
            let key = DataKey::from_bytes(key).in_slot(i);
            let owner = (digest != [0; 32]).then_some(digest);
            match owner {
                Some(d) => {
                    keys.insert(d, Live { slot: i, key: key.clone(), ticket: 0 });
                }
                None => orphans += 1,
            }
            pooled.insert(i, Pooled { key, owner });
        }
        if !torn.is_empty() {
            if opened == 0 {
                return Err(KeyError::Invalid("no data key unwraps with this master key (wrong master key?)".into()));
            }
            tracing::warn!(slots = torn.len(), "pooled keys torn by a crash before they were used are freed");
            free.extend(torn);
            free.sort_unstable();
        }
        free.reverse();
        let inner = Inner {
            file,
            master,
            keys,
            pooled,
            pool: Vec::new(),
            orphans,
            refilling: false,
            names: HashMap::new(),
            free,
            slots,
            written: 0,
            synced: 0,
        };
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

    /// The owner's key for sealing: theirs, or one handed out from the pool (its slot records
    /// the owner without a sync: see the module docs). `None` when the pool has no durable key
    /// left: [`assign`](Self::assign) refills it, which syncs.
    pub fn try_assign(&self, tenant: &str, owner: &str) -> Result<Option<DataKey>, KeyError> {
        let mut g = self.inner.lock().expect("key store lock");
        let d = g.digest(tenant, owner);
        if let Some(l) = g.keys.get(&d) {
            return Ok((l.ticket <= g.synced).then(|| l.key.clone()));
        }
        match g.pool.last() {
            Some(&(_, ticket)) if ticket <= g.synced => {}
            _ => return Ok(None),
        }
        let (slot, _) = g.pool.pop().expect("checked above");
        g.file.write_all_at(&d, offset(slot) + 1)?;
        let p = g.pooled.get_mut(&slot).expect("a pooled slot");
        p.owner = Some(d);
        let key = p.key.clone();
        g.keys.insert(d, Live { slot, key: key.clone(), ticket: 0 });
        g.names.entry(tenant.to_owned()).or_default().insert(owner.to_owned(), d);
        Ok(Some(key))
    }

    /// [`try_assign`](Self::try_assign), refilling the pool (one sync for a batch) when needed.
    pub fn assign(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError> {
        loop {
            if let Some(k) = self.try_assign(tenant, owner)? {
                return Ok(k);
            }
            let ticket = {
                let mut g = self.inner.lock().expect("key store lock");
                let d = g.digest(tenant, owner);
                match (g.keys.get(&d), g.pool.last()) {
                    (Some(l), _) => l.ticket,
                    (None, Some(&(_, ticket))) => ticket,
                    (None, None) => g.refill()?,
                }
            };
            self.sync_through(ticket)?;
        }
    }

    /// Whether the pool is running low and no refill is under way: the caller should call
    /// [`refill_ahead`](Self::refill_ahead) off the hot path, so appends never wait for one.
    pub fn pool_low(&self) -> bool {
        let g = self.inner.lock().expect("key store lock");
        g.pool.len() < POOL_BATCH / 2 && !g.refilling
    }

    /// Adds a batch of pooled keys and makes them durable (one sync).
    pub fn refill_ahead(&self) -> Result<(), KeyError> {
        // Slots are reserved under the lock; the keys are made and written outside it, so
        // appends taking keys from the pool meanwhile are not held up.
        let (slots, file, master) = {
            let mut g = self.inner.lock().expect("key store lock");
            if g.refilling || g.pool.len() >= POOL_BATCH / 2 {
                return Ok(());
            }
            g.refilling = true;
            let mut slots = Vec::with_capacity(POOL_BATCH);
            for _ in 0..POOL_BATCH {
                if g.free.is_empty() {
                    if let Err(e) = g.grow() {
                        g.refilling = false;
                        g.free.extend(slots.iter().rev());
                        return Err(e);
                    }
                }
                slots.push(g.free.pop().expect("grown above"));
            }
            (slots, g.file.try_clone(), MasterKey { version: g.master.version, key: g.master.key.clone() })
        };
        let made: Result<Vec<(u64, DataKey)>, KeyError> = file.map_err(KeyError::from).and_then(|file| {
            let keys: Vec<(u64, DataKey)> = slots.iter().map(|&slot| (slot, DataKey::random().in_slot(slot))).collect();
            for (slot, key) in &keys {
                file.write_all_at(&wrap(&master, POOLED, &[0; 32], *slot, key), offset(*slot))?;
            }
            file.sync_data()?;
            Ok(keys)
        });
        let mut g = self.inner.lock().expect("key store lock");
        g.refilling = false;
        match made {
            Ok(keys) => {
                for (slot, key) in keys.into_iter().rev() {
                    g.pooled.insert(slot, Pooled { key, owner: None });
                    // Durable already: usable at once.
                    g.pool.push((slot, 0));
                }
                Ok(())
            }
            Err(e) => {
                // Written or not, these slots are not handed out: free them again (zeroed on
                // the next use of the slot).
                g.free.extend(slots.iter().rev());
                Err(e)
            }
        }
    }

    /// The key in a slot (what a value sealed as `enc:v2:<slot>:…` needs), if it exists.
    pub fn get_slot(&self, slot: u64) -> Option<DataKey> {
        self.inner.lock().expect("key store lock").pooled.get(&slot).map(|p| p.key.clone())
    }

    /// Pooled keys whose owner is unknown (a crash lost it): while there are any, an erasure
    /// must look at which slots the owner's events name.
    pub fn orphans(&self) -> usize {
        self.inner.lock().expect("key store lock").orphans
    }

    /// Destroy the pooled keys of these slots whose key opens the sealed value given with the
    /// slot (each overwritten with zeros, one sync): proof that the key sealed that value, so a
    /// slot freed and reused since is not touched. Returns how many were destroyed.
    pub fn destroy_slots_opening(&self, samples: &[(u64, String)]) -> Result<usize, KeyError> {
        let (n, ticket) = {
            let mut g = self.inner.lock().expect("key store lock");
            let mut n = 0;
            for (slot, sample) in samples {
                if g.pooled.get(slot).is_none_or(|p| p.key.open(sample).is_none()) {
                    continue;
                }
                let p = g.pooled.remove(slot).expect("checked above");
                match p.owner {
                    Some(d) if g.keys.get(&d).is_some_and(|l| l.slot == *slot) => {
                        g.keys.remove(&d);
                    }
                    Some(_) => {}
                    None => g.orphans = g.orphans.saturating_sub(1),
                }
                g.pool.retain(|(s, _)| s != slot);
                g.file.write_all_at(&[0u8; SLOT], offset(*slot))?;
                g.free.push(*slot);
                g.written += 1;
                n += 1;
            }
            (n, g.written)
        };
        if n > 0 {
            self.sync_through(ticket)?;
        }
        Ok(n)
    }

    /// Gives the pool's unused keys back (their slots zeroed and synced), so a clean shutdown
    /// leaves no orphans. Called when the store is dropped.
    fn release_pool(&self) -> Result<(), KeyError> {
        let mut g = self.inner.lock().expect("key store lock");
        if g.refilling || g.pool.is_empty() {
            return Ok(());
        }
        let unused: Vec<u64> = g.pool.drain(..).map(|(slot, _)| slot).collect();
        for slot in &unused {
            g.pooled.remove(slot);
            g.file.write_all_at(&[0u8; SLOT], offset(*slot))?;
        }
        g.free.extend(unused);
        g.file.sync_data()?;
        Ok(())
    }

    /// Give every owner that has none a key from the pool (a sync only when the pool is
    /// refilled).
    pub fn create_many(&self, tenant: &str, owners: &[String]) -> Result<usize, KeyError> {
        let mut made = 0;
        for owner in owners {
            if self.get(tenant, owner).is_none() {
                self.assign(tenant, owner)?;
                made += 1;
            }
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
            g.pooled.remove(&live.slot);
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
        if g.refilling {
            // Its slots are being wrapped under the current master key outside the lock.
            return Err(KeyError::Invalid("a refill of the key pool is under way; rotate again in a moment".into()));
        }
        let mut slots: Vec<(u64, [u8; SLOT])> = g
            .keys
            .iter()
            .filter(|(_, l)| l.key.slot().is_none())
            .map(|(d, l)| (l.slot, wrap(&new, OWNED, d, l.slot, &l.key)))
            .collect();
        slots.extend(g.pooled.iter().map(|(slot, p)| (*slot, wrap(&new, POOLED, &p.owner.unwrap_or([0; 32]), *slot, &p.key))));
        for (slot, bytes) in &slots {
            g.file.write_all_at(bytes, offset(*slot))?;
        }
        g.file.sync_data()?;
        g.master = new;
        Ok(slots.len())
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
        if self.free.is_empty() {
            self.grow()?;
        }
        let slot = self.free.pop().expect("grown above");
        self.file.write_all_at(&wrap(&self.master, OWNED, &d, slot, &key), offset(slot))?;
        self.written += 1;
        let ticket = self.written;
        self.keys.insert(d, Live { slot, key: key.clone(), ticket });
        Ok((key, ticket))
    }

    /// Writes [`POOL_BATCH`] new pooled keys (not yet synced); returns the ticket that makes
    /// them usable.
    fn refill(&mut self) -> Result<u64, KeyError> {
        let mut made = Vec::with_capacity(POOL_BATCH);
        // Runs of neighbouring slots are written with one call.
        let mut run: (u64, Vec<u8>) = (0, Vec::new());
        for _ in 0..POOL_BATCH {
            if self.free.is_empty() {
                self.grow()?;
            }
            let slot = self.free.pop().expect("grown above");
            let key = DataKey::random().in_slot(slot);
            if !run.1.is_empty() && run.0 + (run.1.len() / SLOT) as u64 != slot {
                self.file.write_all_at(&run.1, offset(run.0))?;
                run.1.clear();
            }
            if run.1.is_empty() {
                run.0 = slot;
            }
            run.1.extend_from_slice(&wrap(&self.master, POOLED, &[0; 32], slot, &key));
            self.pooled.insert(slot, Pooled { key, owner: None });
            made.push(slot);
        }
        if !run.1.is_empty() {
            self.file.write_all_at(&run.1, offset(run.0))?;
        }
        self.written += 1;
        let ticket = self.written;
        // Handed out lowest slot first.
        self.pool.extend(made.into_iter().rev().map(|slot| (slot, ticket)));
        Ok(ticket)
    }

    /// Adds [`GROW_SLOTS`] zeroed (free) slots at the end of the file and syncs it, once: a
    /// key's own sync then overwrites blocks already allocated and written, with no size change
    /// to journal — about half the cost of a sync that extends the file.
    fn grow(&mut self) -> Result<(), KeyError> {
        let zeros = vec![0u8; GROW_SLOTS as usize * SLOT];
        self.file.write_all_at(&zeros, offset(self.slots))?;
        self.file.sync_all()?;
        self.free.extend((self.slots..self.slots + GROW_SLOTS).rev());
        self.slots += GROW_SLOTS;
        Ok(())
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

fn slot_aad(slot: u64) -> Vec<u8> {
    let mut aad = b"slot:".to_vec();
    aad.extend_from_slice(&slot.to_le_bytes());
    aad
}

/// A slot's bytes: `state`, the owner `digest` (zero for a pooled key not handed out), the key
/// wrapped under the master key (associated data: the digest for an owner's key, the slot for
/// a pooled one).
fn wrap(master: &MasterKey, state: u8, digest: &[u8; 32], slot: u64, key: &DataKey) -> [u8; SLOT] {
    let aad = if state == OWNED { digest.to_vec() } else { slot_aad(slot) };
    let sealed = master.key.encrypt(key.bytes(), &aad);
    debug_assert_eq!(sealed.len(), 60);
    let mut s = [0u8; SLOT];
    s[0] = state;
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
    fn pooled_keys_need_no_sync_of_their_own_and_survive_losing_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        let a = ks.assign("t", "c-1").unwrap();
        let slot = a.slot().expect("a pooled key names its slot");
        assert_eq!(ks.assign("t", "c-1").unwrap().bytes(), a.bytes(), "one key per owner");
        assert_eq!(ks.try_assign("t", "c-2").unwrap().map(|k| k.slot()), Some(Some(slot + 1)), "the next from the pool");
        assert_eq!(ks.get("t", "c-1").unwrap().bytes(), a.bytes());
        assert_eq!(ks.get_slot(slot).unwrap().bytes(), a.bytes());
        drop(ks);

        // Reopened after a clean close: the owner is known, the pool's unused keys were given back.
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert_eq!(ks.get("t", "c-1").unwrap().bytes(), a.bytes());
        assert_eq!(ks.orphans(), 0);
        let c = ks.assign("t", "c-3").unwrap();
        // A crash (no close): the unused pooled keys stay, as orphans never handed out again.
        std::mem::forget(ks);
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert_eq!(ks.orphans(), POOL_BATCH - 1);
        let d = ks.assign("t", "c-4").unwrap();
        assert!(d.slot().unwrap() > c.slot().unwrap() + POOL_BATCH as u64 - 2, "a fresh batch, not a key of the crashed run");
        drop(ks);

        // A crash lost c-1's owner record: its key is an orphan, still found by slot.
        let path = dir.path().join(KEY_FILE);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 32], offset(slot) + 1).unwrap();
        drop(f);
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert!(ks.get("t", "c-1").is_none());
        assert_eq!(ks.get_slot(slot).unwrap().bytes(), a.bytes(), "values naming the slot still open");
        let again = ks.assign("t", "c-1").unwrap();
        assert_ne!(again.slot(), Some(slot), "never handed out twice");
        // Erasing c-1 destroys its key and the orphan its events name — only with a value that
        // the slot's key really opens.
        assert!(ks.destroy("t", "c-1").unwrap());
        assert_eq!(ks.destroy_slots_opening(&[(slot, DataKey::random().in_slot(slot).seal("x"))]).unwrap(), 0);
        assert_eq!(ks.destroy_slots_opening(&[(slot, "enc:v2:0:forged".to_owned())]).unwrap(), 0);
        assert_eq!(ks.destroy_slots_opening(&[(slot, a.seal("sealed by c-1"))]).unwrap(), 1);
        assert!(ks.get_slot(slot).is_none());
        drop(ks);
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[offset(slot) as usize..offset(slot) as usize + SLOT].iter().all(|b| *b == 0));
        let ks = KeyStore::open(dir.path(), master(1)).unwrap();
        assert!(ks.get_slot(slot).is_none());
        assert!(ks.rotate(master(2)).unwrap() >= ks.len());
        drop(ks);
        let ks = KeyStore::open(dir.path(), master(2)).unwrap();
        assert_eq!(ks.get("t", "c-3").unwrap().bytes(), c.bytes(), "pooled keys rotate too");
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
