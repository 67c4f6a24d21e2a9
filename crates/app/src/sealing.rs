//! The checkpoint's key: the views hold personal data, so the checkpoint file is sealed too,
//! with a key of its own in the key store (tenant `_system`). An erasure rotates it: the next
//! checkpoint (without the erased person) is written under a new key, then the old key is
//! destroyed, so no earlier checkpoint — nor any of its bytes left behind on the disk — can be
//! read again.

use chronicle_privacy::Keys;
use chronicle_projections::CheckpointSeal;
use std::sync::{Arc, Mutex};

const SYSTEM: &str = "_system";

pub struct CheckpointKeys {
    keys: Arc<dyn Keys>,
    current: Mutex<String>,
}

impl CheckpointKeys {
    pub fn new(keys: Arc<dyn Keys>) -> CheckpointKeys {
        CheckpointKeys { keys, current: Mutex::new(format!("checkpoint:{}", uuid::Uuid::now_v7())) }
    }

    /// Seal the next checkpoints with a new key; returns the old key's name, to destroy once a
    /// checkpoint under the new one is written.
    pub fn rotate(&self) -> String {
        let mut c = self.current.lock().expect("checkpoint key lock");
        std::mem::replace(&mut c, format!("checkpoint:{}", uuid::Uuid::now_v7()))
    }

    pub fn destroy(&self, name: &str) -> Result<bool, chronicle_privacy::KeyError> {
        self.keys.destroy(SYSTEM, name)
    }
}

impl CheckpointSeal for CheckpointKeys {
    fn seal(&self, plain: &[u8]) -> Result<(String, Vec<u8>), String> {
        let name = self.current.lock().expect("checkpoint key lock").clone();
        let key = self.keys.get_or_create(SYSTEM, &name).map_err(|e| e.to_string())?;
        Ok((name.clone(), key.encrypt(plain, name.as_bytes())))
    }

    fn open(&self, name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.get(SYSTEM, name)?;
        let plain = key.decrypt(sealed, name.as_bytes())?;
        // Go on sealing with the key the file was found under.
        *self.current.lock().expect("checkpoint key lock") = name.to_owned();
        Some(plain)
    }
}
