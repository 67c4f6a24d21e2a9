//! The projection checkpoint: the whole projection state with the position it reflects, so a
//! restart resumes from it instead of replaying the whole log. How it is encoded (JSON, sealed
//! or not) is decided here; where it is kept is a [`CheckpointPlace`]: a file of the node's data
//! folder ([`CheckpointFile`], written atomically: temp file, fsync, rename), or a row that every
//! node over one PostgreSQL database shares (implemented where the database is reached).

use crate::views::{Projections, MODELS};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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
    #[error("checkpoint {path}: {message}")]
    Place { path: String, message: String },
}

/// Encryption of the checkpoint (the views hold personal data): `seal` names the key it used,
/// `open` is given that name back.
pub trait CheckpointSeal: Send + Sync {
    fn seal(&self, plain: &[u8]) -> Result<(String, Vec<u8>), String>;
    fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>>;
}

/// What a write of the checkpoint did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Written; the checkpoint it replaced was sealed under `replaced_key`. [`save_to`] gives
    /// it only when it is not the key just used: the caller destroys it.
    Written { replaced_key: Option<String> },
    /// Not written: another process keeps this checkpoint now (the holder of its lease).
    NotMine,
}

/// Where the checkpoint is kept. Every method is blocking (a file, or a database reached from a
/// blocking thread).
pub trait CheckpointPlace: Send + Sync {
    /// For messages: the file's path, or the database's table.
    fn describe(&self) -> String;
    /// The stored checkpoint, `None` when there is none.
    fn read(&self) -> Result<Option<Vec<u8>>, CheckpointError>;
    /// Whether this process keeps the checkpoint now (takes or renews its lease where it is
    /// shared); a process that does not leaves writing to the one that does.
    fn claim(&self) -> Result<bool, CheckpointError> {
        Ok(true)
    }
    /// Give the checkpoint up now (a clean stop), so another node keeps it at once.
    fn release(&self) -> Result<(), CheckpointError> {
        Ok(())
    }
    /// Replace the stored checkpoint with `bytes` (views at `position`), atomically: a crash
    /// leaves the old or the new one.
    fn write(&self, position: u64, bytes: &[u8]) -> Result<Saved, CheckpointError>;
    /// Remove the stored checkpoint (a process then rebuilds its views from the log); returns
    /// the name of the key it was sealed under.
    fn remove(&self) -> Result<Option<String>, CheckpointError>;
}

const SEALED_MAGIC: &[u8] = b"CHRONICLE-SEALED-CHECKPOINT\n";

/// Sealed checkpoint bytes as the name of their key and the sealed body (`None` when the
/// bytes are not sealed).
fn sealed_parts(bytes: &[u8]) -> Option<(String, &[u8])> {
    let rest = bytes.strip_prefix(SEALED_MAGIC)?;
    let nl = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    Some((String::from_utf8_lossy(&rest[..nl]).into_owned(), rest.get(nl + 1..).unwrap_or_default()))
}

/// The name of the key sealed checkpoint bytes name (from their head), if they are sealed.
pub fn key_of(bytes: &[u8]) -> Option<String> {
    sealed_parts(bytes).map(|(key, _)| key)
}

/// The views as checkpoint bytes: JSON, sealed when `seal` is given.
pub fn encode(p: &Projections, seal: Option<&dyn CheckpointSeal>) -> Result<Vec<u8>, CheckpointError> {
    let json = serde_json::to_vec(p).expect("projections always serialize");
    let Some(s) = seal else { return Ok(json) };
    let (key, sealed) = s.seal(&json).map_err(CheckpointError::Seal)?;
    let mut out = Vec::with_capacity(SEALED_MAGIC.len() + key.len() + 1 + sealed.len());
    out.extend_from_slice(SEALED_MAGIC);
    out.extend_from_slice(key.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// The views from checkpoint bytes read from `place` (named in errors).
pub fn decode(bytes: &[u8], seal: Option<&dyn CheckpointSeal>, place: &str) -> Result<Projections, CheckpointError> {
    let opened;
    let plain = match sealed_parts(bytes) {
        Some((key, body)) => {
            match seal.and_then(|s| s.open(&key, body)) {
                Some(p) => {
                    opened = p;
                    &opened[..]
                }
                None => return Err(CheckpointError::Sealed { path: place.into(), key }),
            }
        }
        None => bytes,
    };
    let mut views: Projections = serde_json::from_slice(plain).map_err(|source| CheckpointError::Corrupt { path: place.into(), source })?;
    views.reindex();
    Ok(views)
}

/// Load the checkpoint kept at `place`; none is an empty state at position 0.
pub fn load_from(place: &dyn CheckpointPlace, seal: Option<&dyn CheckpointSeal>) -> Result<Projections, CheckpointError> {
    match place.read()? {
        Some(bytes) => decode(&bytes, seal, &place.describe()),
        None => Ok(Projections::new()),
    }
}

/// Save the views to `place`, sealed when `seal` is given; when written, the key of the
/// checkpoint replaced if it is another than the one just used (to destroy).
pub fn save_to(place: &dyn CheckpointPlace, p: &Projections, seal: Option<&dyn CheckpointSeal>) -> Result<Saved, CheckpointError> {
    let bytes = encode(p, seal)?;
    Ok(match place.write(p.position, &bytes)? {
        Saved::Written { replaced_key } => Saved::Written { replaced_key: replaced_key.filter(|k| key_of(&bytes).as_ref() != Some(k)) },
        Saved::NotMine => Saved::NotMine,
    })
}

/// What a process resumes from: the checkpoint, or fresh views (to be rebuilt from the log) when
/// it cannot be used — sealed with a key that is gone (an erasure rotated it before the next
/// checkpoint was written), or of an older read-model version — with the reason.
pub fn resume_from(place: &dyn CheckpointPlace, seal: Option<&dyn CheckpointSeal>) -> Result<(Projections, Option<String>), CheckpointError> {
    match load_from(place, seal) {
        Ok(p) if p.models != MODELS => Ok((
            Projections::new(),
            Some(format!("the checkpoint holds read models of version {}, this build has {}", p.models, MODELS)),
        )),
        Ok(p) => Ok((p, None)),
        Err(CheckpointError::Sealed { key, .. }) => Ok((Projections::new(), Some(format!("the checkpoint's key {key} is gone")))),
        Err(e) => Err(e),
    }
}

/// The checkpoint as a file of the node's data folder.
#[derive(Debug, Clone)]
pub struct CheckpointFile(pub PathBuf);

impl CheckpointFile {
    fn io(&self) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
        |source| CheckpointError::Io { path: self.0.display().to_string(), source }
    }

    /// The key named by the file's head (read alone: the file may be large).
    fn stored_key(&self) -> Option<String> {
        let mut head = Vec::with_capacity(256);
        std::fs::File::open(&self.0).ok()?.take(256).read_to_end(&mut head).ok()?;
        key_of(&head)
    }
}

impl CheckpointPlace for CheckpointFile {
    fn describe(&self) -> String {
        self.0.display().to_string()
    }

    fn read(&self) -> Result<Option<Vec<u8>>, CheckpointError> {
        match std::fs::read(&self.0) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io()(e)),
        }
    }

    fn write(&self, _position: u64, bytes: &[u8]) -> Result<Saved, CheckpointError> {
        let replaced_key = self.stored_key();
        let tmp = self.0.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(self.io())?;
        f.write_all(bytes).map_err(self.io())?;
        f.sync_all().map_err(self.io())?;
        drop(f);
        std::fs::rename(&tmp, &self.0).map_err(self.io())?;
        if let Some(dir) = self.0.parent() {
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(Saved::Written { replaced_key })
    }

    fn remove(&self) -> Result<Option<String>, CheckpointError> {
        let key = self.stored_key();
        match std::fs::remove_file(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io()(e)),
            _ => Ok(key),
        }
    }
}

/// Load the checkpoint file at `path`; a missing file is an empty state at position 0.
pub fn load_checkpoint(path: &Path) -> Result<Projections, CheckpointError> {
    load_from(&CheckpointFile(path.to_owned()), None)
}

/// Write the checkpoint file atomically: a crash leaves either the old or the new file.
pub fn save_checkpoint(path: &Path, p: &Projections) -> Result<(), CheckpointError> {
    save_to(&CheckpointFile(path.to_owned()), p, None).map(|_| ())
}

/// The name of the key a checkpoint file is sealed with, if the file exists and is sealed.
pub fn sealed_key_name(path: &Path) -> Option<String> {
    CheckpointFile(path.to_owned()).stored_key()
}
