//! Crypto-shredding. Personal data in events is sealed (AES-256-GCM) with a key of its owner —
//! the customer, or the anonymous visitor — before it reaches the log; the keys live in a key
//! store, wrapped by a master key; erasing a customer destroys their keys in place, after which
//! their events read redacted, in every replay, while the log itself stays append-only and
//! whole. See `docs/privacy.md` for the threat model.
//!
//! - [`cipher`]: data keys, sealing and opening;
//! - [`keys`]: what sealing needs of a key store ([`Keys`]);
//! - [`keystore`]: the key file of one node (slots overwritten in place on destruction), master
//!   key, rotation;
//! - [`pgkeys`]: the keys in PostgreSQL, shared by every node over one database;
//! - [`seal`]: which parts of which events are personal;
//! - [`store`]: the `EventStore` layer that seals on append and opens on read.

pub mod cipher;
pub mod keys;
pub mod keystore;
pub mod pgkeys;
pub mod seal;
pub mod store;

pub use cipher::DataKey;
pub use keys::Keys;
pub use keystore::KeyError;
pub use keystore::{KeyStore, MasterKey};
pub use pgkeys::PgKeyStore;
pub use store::SealedStore;
