//! Commands: decided by the pure domain against the current views, appended with the expected
//! version (decided again when another writer moved the stream first); raw appends; identities
//! linked and customers merged.

use super::*;

impl App {

    /// Decide against the current view and append with the view's version as the expected
    /// version; when another writer got there first, decide again on the newer state.
    async fn run_command(
        &self,
        tenant: &str,
        stream: &str,
        actor: &str,
        decide: impl FnMut(&Projections) -> Result<(u64, Vec<(String, Value)>), AppError>,
    ) -> Result<Option<AppendResult>, AppError> {
        self.run_command_from(tenant, stream, actor, None, decide).await
    }

    /// `run_command` for a command caused by an outside message: its events get ids derived
    /// from `cause` (so a redelivered message is a replay, not a second effect) and the
    /// message's time.
    async fn run_command_from(
        &self,
        tenant: &str,
        stream: &str,
        actor: &str,
        cause: Option<(&str, DateTime<Utc>)>,
        mut decide: impl FnMut(&Projections) -> Result<(u64, Vec<(String, Value)>), AppError>,
    ) -> Result<Option<AppendResult>, AppError> {
        for _ in 0..COMMAND_ATTEMPTS {
            let (version, events) = decide(&self.views())?;
            if events.is_empty() {
                return Ok(None);
            }
            let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exact(version) };
            let now = cause.map_or_else(|| self.now(), |(_, at)| at);
            let batch = events
                .into_iter()
                .enumerate()
                .map(|(i, (ty, data))| {
                    let id = match cause {
                        Some((key, _)) => chronicle_core::ids::event_id(tenant, &format!("{key}/{stream}/{i}")),
                        None => Uuid::now_v7(),
                    };
                    NewEvent::new(id, ty, data, now).with_actor(actor)
                })
                .collect();
            match self.append(tenant, stream, expected, batch).await {
                Ok(r) => return Ok(Some(r)),
                // Another writer (maybe another node) won: decide again on the state after it.
                Err(AppError::VersionConflict { .. }) => {
                    self.store.sync().await?;
                    continue;
                }
                // The ids derive from the cause, and an append is all or nothing: a stored id
                // means this message already had its effect (decided then on an older state).
                Err(AppError::IdReused(_)) if cause.is_some() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Err(AppError::Conflict { code: "contention", message: format!("stream {stream} kept changing; try again") })
    }

    /// Run a command on a customer; returns the customer as it is after it.
    pub async fn customer_command(
        &self,
        tenant: &str,
        id: &str,
        cmd: CustomerCommand,
        actor: &str,
    ) -> Result<Customer, AppError> {
        self.customer_command_from(tenant, id, cmd, actor, None).await
    }

    /// `customer_command` on behalf of an outside message (`cause`: its key and time), whose
    /// events get ids derived from the key: delivering the message again has no second effect,
    /// even when the customer has changed since.
    pub async fn customer_command_from(
        &self,
        tenant: &str,
        id: &str,
        cmd: CustomerCommand,
        actor: &str,
        cause: Option<(&str, DateTime<Utc>)>,
    ) -> Result<Customer, AppError> {
        self.customer_commands_from(tenant, id, vec![cmd], actor, cause, None).await
    }

    /// Several commands on one customer as one decision and one append: all of them take
    /// effect or none does (each is decided on the state the ones before it leave).
    ///
    /// `record` (an event type and payload: the outside message itself) is written after the
    /// commands' events in the same append, even when they change nothing. With a `cause`, that makes the
    /// message's handling a fact in the log: delivered again later, it finds its ids stored
    /// and has no effect, rather than being decided afresh on a newer state (an old identify
    /// undoing a newer one's traits).
    pub async fn customer_commands_from(
        &self,
        tenant: &str,
        id: &str,
        cmds: Vec<CustomerCommand>,
        actor: &str,
        cause: Option<(&str, DateTime<Utc>)>,
        record: Option<(String, Value)>,
    ) -> Result<Customer, AppError> {
        validate_id(id)?;
        let claimed = cmds.iter().find_map(|cmd| match cmd {
            CustomerCommand::Register { email: Some(e), .. }
            | CustomerCommand::UpdateProfile { email: Some(e), .. } => customer::normalize_email(e).ok(),
            _ => None,
        });
        // Two commands can't claim one address: claims of the same address take turns.
        let _guard = match &claimed {
            Some(e) => Some(self.email_locks[email_stripe(e)].lock().await),
            None => None,
        };
        let stream = customer::stream_of(id);
        self.run_command_from(tenant, &stream, actor, cause, |v| {
            let mut state = v.customer(tenant, id).cloned().unwrap_or_else(|| Customer::new(id));
            let version = state.version;
            let emails = ViewEmails(v, tenant);
            let mut out = Vec::new();
            for cmd in &cmds {
                for e in state.decide(cmd.clone(), &emails)? {
                    state.apply(&e, state.version + 1, self.now());
                    out.push(e.to_parts());
                }
            }
            out.extend(record.iter().cloned());
            Ok((version, out))
        })
        .await?;
        self.customer(tenant, id)
    }

    pub async fn deal_command(&self, tenant: &str, id: &str, cmd: DealCommand, actor: &str) -> Result<Deal, AppError> {
        validate_id(id)?;
        self.run_command(tenant, &deal::stream_of(id), actor, |v| {
            let state = v.tenant(tenant).and_then(|t| t.deals.get(id)).cloned().unwrap_or_else(|| Deal::new(id));
            let events = state.decide(cmd.clone())?;
            Ok((state.version, events.iter().map(|e| e.to_parts()).collect()))
        })
        .await?;
        self.deal(tenant, id)
    }

    /// Run a command on an order on behalf of an outside message (`cause`: its key and time).
    pub async fn order_command(
        &self,
        tenant: &str,
        id: &str,
        cmd: OrderCommand,
        actor: &str,
        cause: (&str, DateTime<Utc>),
    ) -> Result<(), AppError> {
        validate_id(id)?;
        self.run_command_from(tenant, &order::stream_of(id), actor, Some(cause), |v| {
            let state = v.tenant(tenant).and_then(|t| t.orders.get(id)).cloned().unwrap_or_else(|| Order::new(id));
            let events = state.decide(cmd.clone())?;
            Ok((state.version, events.iter().map(|e| e.to_parts()).collect()))
        })
        .await?;
        Ok(())
    }

    /// Append raw events (the streams API); counts and maps store errors.
    pub async fn append(
        &self,
        tenant: &str,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, AppError> {
        let n = events.len() as u64;
        let started = std::time::Instant::now();
        match self.store.append(tenant, stream, expected, events).await {
            Ok(r) => {
                self.metrics.labelled.append(started.elapsed());
                self.metrics.appends.fetch_add(1, Ordering::Relaxed);
                self.metrics.events_appended.fetch_add(n, Ordering::Relaxed);
                Ok(r)
            }
            Err(e) => {
                if matches!(e, AppendError::Conflict { .. }) {
                    self.metrics.append_conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    /// Link an anonymous identity to a customer (identity resolution); refused when it is
    /// already linked to someone else.
    pub async fn link_identity(&self, tenant: &str, id: &str, anonymous_id: &str, actor: &str) -> Result<(), AppError> {
        if let Some(owner) = self.identity_owner(tenant, anonymous_id) {
            if owner != id {
                return Err(AppError::IdentityLinkedElsewhere);
            }
            return Ok(());
        }
        self.customer_command(
            tenant,
            id,
            CustomerCommand::LinkIdentity { anonymous_id: anonymous_id.to_owned() },
            actor,
        )
        .await?;
        Ok(())
    }

    /// Merge the duplicate `from` into `survivor` (CustomerMergedInto on the duplicate, then
    /// CustomersMerged on the survivor). Both are checked before anything is written; a merge
    /// cut off between its two appends (a crash) is finished by running it again, and running
    /// a finished merge again changes nothing.
    pub async fn merge_customers(
        &self,
        tenant: &str,
        survivor: &str,
        from: &str,
        actor: &str,
    ) -> Result<Customer, AppError> {
        validate_id(survivor)?;
        validate_id(from)?;
        // No e-mail lock: an address only moves from the duplicate to the survivor, and while
        // it moves the index names one of the two, so no third customer can claim it.
        let s = self.customer(tenant, survivor)?;
        let d = self.customer(tenant, from)?;
        if s.merged_ids.contains(from) {
            return Ok(s);
        }
        // Dry-run both halves on the current states, so a refusal writes nothing.
        let mut marked = d.clone();
        if d.merged_into.as_deref() != Some(survivor) {
            let evs = d.decide(CustomerCommand::MergeInto { survivor: survivor.to_owned() }, &customer::NoEmails)?;
            evs.iter().for_each(|e| marked.apply(e, d.version + 1, self.now()));
        }
        s.decide(CustomerCommand::Absorb { other: Box::new(marked) }, &customer::NoEmails)?;
        self.customer_command(tenant, from, CustomerCommand::MergeInto { survivor: survivor.to_owned() }, actor)
            .await?;
        let frozen = self.customer(tenant, from)?;
        self.customer_command(tenant, survivor, CustomerCommand::Absorb { other: Box::new(frozen) }, actor).await
    }
}

fn email_stripe(email: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(email);
    (h % EMAIL_STRIPES as u64) as usize
}

struct ViewEmails<'a>(&'a Projections, &'a str);
impl EmailIndex for ViewEmails<'_> {
    fn owner_of(&self, email: &str) -> Option<String> {
        self.0.tenant(self.1)?.email_owner(self.0.index_key.as_ref(), email).cloned()
    }
}
