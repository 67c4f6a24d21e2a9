//! The checkpoint file: the whole projection state with the position it reflects, written
//! atomically (temp file, fsync, rename), so a restart resumes from it instead of replaying
//! the whole log.

use crate::Projections;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("checkpoint {path} is corrupt: {source}")]
    Corrupt { path: String, source: serde_json::Error },
    #[error("checkpoint {path} is sealed with a key that is not available ({key})")]
    Sealed { path: String, key: String },
    #[error("sealing the checkpoint: {0}")]
    Seal(String),
}

/// Encryption of the checkpoint file (the views hold personal data): `seal` names the key it
/// used, `open` is given that name back.
pub trait CheckpointSeal: Send + Sync {
    fn seal(&self, plain: &[u8]) -> Result<(String, Vec<u8>), String>;
    fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>>;
}

const SEALED_MAGIC: &[u8] = b"CHRONICLE-SEALED-CHECKPOINT\n";

/// Load the checkpoint at `path`; a missing file is an empty state at position 0.
pub fn load_checkpoint(path: &Path) -> Result<Projections, CheckpointError> {
    load_checkpoint_sealed(path, None)
}

/// Load a checkpoint that may be sealed (see [`CheckpointSeal`]).
pub fn load_checkpoint_sealed(path: &Path, seal: Option<&dyn CheckpointSeal>) -> Result<Projections, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Projections::new()),
        Err(source) => return Err(CheckpointError::Io { path: path.display().to_string(), source }),
    };
    let plain = match bytes.strip_prefix(SEALED_MAGIC) {
        Some(rest) => {
            let nl = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            let key = String::from_utf8_lossy(&rest[..nl]).into_owned();
            let body = rest.get(nl + 1..).unwrap_or_default();
            match seal.and_then(|s| s.open(&key, body)) {
                Some(p) => p,
                None => return Err(CheckpointError::Sealed { path: path.display().to_string(), key }),
            }
        }
        None => bytes,
    };
    serde_json::from_slice(&plain)
        .map_err(|source| CheckpointError::Corrupt { path: path.display().to_string(), source })
}

/// What a process resumes from: the checkpoint, or fresh views (to be rebuilt from the log) when
/// it cannot be used — sealed with a key that is gone (an erasure rotated it before the next
/// checkpoint was written), or of an older read-model version — with the reason.
pub fn resume_from(path: &Path, seal: Option<&dyn CheckpointSeal>) -> Result<(Projections, Option<String>), CheckpointError> {
    match load_checkpoint_sealed(path, seal) {
        Ok(p) if p.models != crate::MODELS => Ok((
            Projections::new(),
            Some(format!("the checkpoint holds read models of version {}, this build has {}", p.models, crate::MODELS)),
        )),
        Ok(p) => Ok((p, None)),
        Err(CheckpointError::Sealed { key, .. }) => Ok((Projections::new(), Some(format!("the checkpoint's key {key} is gone")))),
        Err(e) => Err(e),
    }
}

/// The name of the key a checkpoint file is sealed with, if the file exists and is sealed.
pub fn sealed_key_name(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let rest = bytes.strip_prefix(SEALED_MAGIC)?;
    let nl = rest.iter().position(|b| *b == b'\n')?;
    Some(String::from_utf8_lossy(&rest[..nl]).into_owned())
}

/// Write the checkpoint atomically: a crash leaves either the old or the new file.
pub fn save_checkpoint(path: &Path, p: &Projections) -> Result<(), CheckpointError> {
    save_checkpoint_sealed(path, p, None)
}

/// Write the checkpoint atomically, sealed when `seal` is given.
pub fn save_checkpoint_sealed(path: &Path, p: &Projections, seal: Option<&dyn CheckpointSeal>) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec(p).expect("projections always serialize");
    let bytes = match seal {
        Some(s) => {
            let (key, sealed) = s.seal(&json).map_err(CheckpointError::Seal)?;
            let mut out = Vec::with_capacity(SEALED_MAGIC.len() + key.len() + 1 + sealed.len());
            out.extend_from_slice(SEALED_MAGIC);
            out.extend_from_slice(key.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(&sealed);
            out
        }
        None => json,
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent() {
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
