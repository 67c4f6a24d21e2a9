//! The views' durability: the checkpoint written (sealed, its key rotated after an erasure), the
//! shared checkpoint's lease over a database, and the automation engine's saved cursor.

use super::*;

impl App {

    /// Write the views to the checkpoint; the position written, `None` without a checkpoint
    /// or when another node keeps the shared one. When the views applied an erasure since the
    /// last rotation — made here, or by another node over the same database — the checkpoint is
    /// written under a new key and the old key destroyed: the checkpoints written before (which
    /// held the person) can no longer be read. So is the key of a checkpoint this one replaced
    /// when another node had sealed it (the shared checkpoint changed hands).
    pub fn checkpoint(&self) -> Result<Option<u64>, AppError> {
        let Some(place) = &self.checkpoint_place else { return Ok(None) };
        let internal = |e: chronicle_projections::CheckpointError| AppError::internal("writing the views' checkpoint", e);
        let mut retired = self.checkpointing.lock().expect("checkpoint lock");
        let applied = self.erasures.applied.load(Ordering::SeqCst);
        if !place.claim().map_err(internal)? {
            // Another node keeps the shared checkpoint, and rotates its key on erasures. A
            // rotation due here stays due: should this node keep the checkpoint later, the one
            // it replaces may still be sealed under a key that saw the erased person.
            return Ok(None);
        }
        if let Some(ck) = &self.checkpoint_keys {
            if applied > self.erasures.sealed.load(Ordering::SeqCst) {
                retired.push(ck.rotate());
            }
        }
        let mut snapshot = self.views().clone();
        snapshot.reacted = self.reacted();
        // Kept in the checkpoint itself: a crash after it is written and before the keys are
        // destroyed leaves their names where the next start finds them.
        snapshot.retired_keys = retired.clone();
        let seal = self.checkpoint_keys.as_ref().map(|k| k as &dyn chronicle_projections::CheckpointSeal);
        let Saved::Written { replaced_key } = chronicle_projections::save_to(&**place, &snapshot, seal).map_err(internal)? else {
            // The lease was lost since the claim, or the stored checkpoint is further on than
            // these views: nothing written, the rotation stays due.
            return Ok(None);
        };
        self.erasures.sealed.fetch_max(applied, Ordering::SeqCst);
        // Destroyed only once a checkpoint under the new key is written; a failure keeps the
        // old names for the next checkpoint to destroy.
        if let Some(ck) = &self.checkpoint_keys {
            if let Some(old) = replaced_key.filter(|k| !retired.contains(k)) {
                retired.push(old);
            }
            while let Some(old) = retired.last() {
                ck.destroy(old).map_err(|e| AppError::internal("destroying a retired checkpoint key", e))?;
                retired.pop();
            }
        }
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        Ok(Some(snapshot.position))
    }

    /// Take or renew the shared checkpoint's lease (see [`CheckpointPlace::claim`]); whether
    /// this node keeps the checkpoint.
    pub fn claim_checkpoint(&self) -> Result<bool, AppError> {
        let Some(place) = &self.checkpoint_place else { return Ok(false) };
        place.claim().map_err(|e| AppError::internal("claiming the checkpoint's lease", e))
    }

    /// The last checkpoint of a process that stops (a server, a one-off command): written if
    /// this process keeps the checkpoint, then the shared checkpoint's lease given up, so a
    /// running node keeps it at once.
    pub fn final_checkpoint(&self) -> Result<Option<u64>, AppError> {
        let written = self.checkpoint()?;
        if let Some(place) = &self.checkpoint_place {
            place.release().map_err(|e| AppError::internal("releasing the checkpoint's lease", e))?;
        }
        Ok(written)
    }

    /// The last log position the automation engine has reacted to.
    pub fn reacted(&self) -> u64 {
        self.reacted.load(Ordering::Relaxed)
    }

    /// Records that the engine reacted up to `position` (never moves back: a task of an
    /// earlier lease term may finish an older event late).
    pub fn set_reacted(&self, position: u64) {
        self.reacted.fetch_max(position, Ordering::Relaxed);
    }
}
