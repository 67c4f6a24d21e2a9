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
}

/// Load the checkpoint at `path`; a missing file is an empty state at position 0.
pub fn load_checkpoint(path: &Path) -> Result<Projections, CheckpointError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Projections::new()),
        Err(source) => return Err(CheckpointError::Io { path: path.display().to_string(), source }),
    };
    serde_json::from_slice(&bytes)
        .map_err(|source| CheckpointError::Corrupt { path: path.display().to_string(), source })
}

/// Write the checkpoint atomically: a crash leaves either the old or the new file.
pub fn save_checkpoint(path: &Path, p: &Projections) -> Result<(), CheckpointError> {
    let io = |source| CheckpointError::Io { path: path.display().to_string(), source };
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(p).expect("projections always serialize");
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
