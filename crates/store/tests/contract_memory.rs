//! The contract suite on the in-memory reference model.

use chronicle_store::memory::MemoryStore;
use chronicle_store::EventStore;
use std::sync::Arc;

fn fresh() -> (Arc<dyn EventStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

chronicle_store::contract_tests!(fresh());
