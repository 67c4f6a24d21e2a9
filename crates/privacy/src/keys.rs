//! [`Keys`]: what sealing and erasure need of a key store — the key file of one node
//! ([`KeyStore`](crate::KeyStore)) or the table every node over one PostgreSQL database shares
//! ([`PgKeyStore`](crate::PgKeyStore)).
//!
//! The methods that may write (and wait for the disk or the database) are called off the async
//! threads (`spawn_blocking`), except [`try_assign`](Keys::try_assign), which never waits.

use crate::cipher::DataKey;
use crate::keystore::{KeyError, KeyStore};
use async_trait::async_trait;

#[async_trait]
pub trait Keys: Send + Sync {
    /// The owner's key, if it has one here (none: never had personal data, erased, or not made).
    fn get(&self, tenant: &str, owner: &str) -> Option<DataKey>;
    /// The key in a slot (what a value sealed as `enc:v2:<slot>:…` needs), if it is held here.
    fn get_slot(&self, slot: u64) -> Option<DataKey>;
    /// The owner's key for sealing, or one from the pool of keys made ahead; `None` when the
    /// pool has no durable key left ([`assign`](Keys::assign) refills it).
    fn try_assign(&self, tenant: &str, owner: &str) -> Result<Option<DataKey>, KeyError>;
    /// [`try_assign`](Keys::try_assign), refilling the pool when needed.
    fn assign(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError>;
    /// Whether the pool (the tenant's, where pools are per tenant) runs low with no refill
    /// under way: call [`refill_ahead`](Keys::refill_ahead) off the hot path.
    fn pool_low(&self, tenant: &str) -> bool;
    fn refill_ahead(&self, tenant: &str) -> Result<(), KeyError>;
    /// The owner's key, made (durably) on first use: one key per owner, whichever node asks.
    fn get_or_create(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError>;
    /// Give every owner that has none a key.
    fn create_many(&self, tenant: &str, owners: &[String]) -> Result<usize, KeyError>;
    /// Destroy the owner's key; whether there was one.
    fn destroy(&self, tenant: &str, owner: &str) -> Result<bool, KeyError>;
    /// Destroy the keys of these slots (values of `tenant`'s events) whose key opens the sealed
    /// value given with the slot.
    fn destroy_slots_opening(&self, tenant: &str, samples: &[(u64, String)]) -> Result<usize, KeyError>;
    /// Pooled keys whose owner is unknown: while there are any, an erasure must look at which
    /// slots the owner's events name.
    fn orphans(&self) -> usize;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether other processes make keys in this store (so a key may have to be fetched).
    fn shared(&self) -> bool {
        false
    }
    /// Of these `(tenant, slot)`s (sorted, deduplicated), those not held here that may exist
    /// elsewhere.
    fn missing(&self, _wanted: &[(String, u64)]) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// Fetch the keys of these `(tenant, slot)`s that another process made (one destroyed since
    /// stays missing).
    async fn fetch(&self, _wanted: Vec<(String, u64)>) -> Result<(), KeyError> {
        Ok(())
    }
}

impl Keys for KeyStore {
    fn get(&self, tenant: &str, owner: &str) -> Option<DataKey> {
        KeyStore::get(self, tenant, owner)
    }
    fn get_slot(&self, slot: u64) -> Option<DataKey> {
        KeyStore::get_slot(self, slot)
    }
    fn try_assign(&self, tenant: &str, owner: &str) -> Result<Option<DataKey>, KeyError> {
        KeyStore::try_assign(self, tenant, owner)
    }
    fn assign(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError> {
        KeyStore::assign(self, tenant, owner)
    }
    fn pool_low(&self, _tenant: &str) -> bool {
        KeyStore::pool_low(self)
    }
    fn refill_ahead(&self, _tenant: &str) -> Result<(), KeyError> {
        KeyStore::refill_ahead(self)
    }
    fn get_or_create(&self, tenant: &str, owner: &str) -> Result<DataKey, KeyError> {
        KeyStore::get_or_create(self, tenant, owner)
    }
    fn create_many(&self, tenant: &str, owners: &[String]) -> Result<usize, KeyError> {
        KeyStore::create_many(self, tenant, owners)
    }
    fn destroy(&self, tenant: &str, owner: &str) -> Result<bool, KeyError> {
        KeyStore::destroy(self, tenant, owner)
    }
    fn destroy_slots_opening(&self, _tenant: &str, samples: &[(u64, String)]) -> Result<usize, KeyError> {
        KeyStore::destroy_slots_opening(self, samples)
    }
    fn orphans(&self) -> usize {
        KeyStore::orphans(self)
    }
    fn len(&self) -> usize {
        KeyStore::len(self)
    }
}
