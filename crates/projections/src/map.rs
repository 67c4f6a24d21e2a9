//! The map type of the read models.

/// The maps of the read models: keyed by ids that callers choose, so the hasher must resist
/// collision attacks (foldhash seeds per process) while staying fast on the consent path.
pub type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
