//! Privacy duties on a person's data: erasure (crypto-shredding, finished after a crash), the
//! export of everything held on them, and the access audit trail written in batches.

use super::*;

impl App {

    /// Write the audit trail noted so far (one append per tenant, on its `_audit` stream).
    pub async fn flush_audit(&self) -> Result<(), AppError> {
        for (tenant, ev) in self.audit.take(self.now()) {
            self.append(&tenant, crate::audit::STREAM, ExpectedVersion::Any, vec![ev]).await?;
        }
        Ok(())
    }

    /// Flush the audit trail every [`crate::audit::FLUSH_EVERY`] while the app lives.
    pub(super) fn spawn_audit_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(crate::audit::FLUSH_EVERY).await;
                let Some(app) = weak.upgrade() else { return };
                if let Err(e) = app.flush_audit().await {
                    tracing::warn!(error = &e as &dyn std::error::Error, "writing the audit trail failed; retrying");
                }
            }
        });
    }

    /// Erase a customer and every duplicate merged into it (one person, one erasure).
    /// Erase a customer (and the duplicates merged into them): `CustomerErased` on each, the
    /// read models redacted (and their pending sends and waits cancelled) in the same commit
    /// path, then — with crypto-shredding on — their data keys and those of their anonymous
    /// identities destroyed, and a new checkpoint written under a new key.
    pub async fn erase_customer(&self, tenant: &str, id: &str, actor: &str) -> Result<Erasure, AppError> {
        let c = self.customer(tenant, id)?;
        let mut people = vec![c.clone()];
        for m in &c.merged_ids {
            if let Some(d) = self.views().customer(tenant, m).cloned() {
                people.push(d);
            }
        }
        let (sends, waits) = {
            let v = self.views();
            let a = v.tenant(tenant).map(|t| &t.automation);
            let ids: Vec<&str> = people.iter().map(|p| p.id.as_str()).collect();
            let sends = a.map_or(0, |a| {
                a.outbox.values().chain(a.dead_letters.values()).filter(|m| ids.contains(&m.customer.as_str())).count()
            });
            let waits = a.map_or(0, |a| {
                ids.iter().map(|i| a.active.get(*i).map_or(0, Vec::len)).sum::<usize>()
            });
            (sends, waits)
        };
        let reason = || CustomerCommand::Erase { reason: Some("erasure request".into()) };
        // Erased already (a request repeated after a crash cut the first short): go on to the keys.
        let erased = match self.customer_command(tenant, id, reason(), actor).await {
            Err(AppError::Erased(_)) => c.clone(),
            other => other?,
        };
        for m in &c.merged_ids {
            match self.customer_command(tenant, m, reason(), actor).await {
                Ok(_) | Err(AppError::Erased(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut keys_destroyed = 0;
        if self.keys.is_some() {
            for p in &people {
                for stream in owner_streams(&p.id, &p.anonymous_ids) {
                    keys_destroyed += self.store.destroy_keys(tenant, &stream).await?;
                }
            }
            // The checkpoint on disk still holds the person's data: replaced now, under a new
            // key (the views applied the erasure, so `checkpoint` rotates). Off the async
            // thread: the checkpoint writer woken by the same erasure may hold the checkpoint's
            // lock while it waits on the database, which needs this runtime's threads.
            blocking(|| self.checkpoint())?;
        }
        Ok(Erasure {
            customer: erased,
            merged_customers_erased: c.merged_ids.iter().cloned().collect(),
            keys_destroyed,
            pending_sends_cancelled: sends,
            enrolments_ended: waits,
        })
    }

    /// Destroy the keys an erasure cut short by a crash left behind: every erased customer's,
    /// and their anonymous identities' (the erased record keeps those ids). A stream is read
    /// (for the pooled keys its events name) only when its owner still has a key, or when a
    /// crash left keys whose owner is unknown.
    pub(super) async fn finish_erasures(&self) -> Result<(), AppError> {
        let Some(keys) = &self.keys else { return Ok(()) };
        let streams: Vec<(String, String, String)> = {
            let v = self.views();
            let mut out = Vec::new();
            for (t, views) in &v.tenants {
                for c in views.customers.values().filter(|c| c.status == customer::CustomerStatus::Erased) {
                    let owners = std::iter::once(c.id.clone())
                        .chain(c.anonymous_ids.iter().map(|a| chronicle_privacy::seal::anonymous_owner(a)));
                    for (owner, stream) in owners.zip(owner_streams(&c.id, &c.anonymous_ids)) {
                        out.push((t.clone(), owner, stream));
                    }
                }
            }
            out
        };
        let orphans = keys.orphans() > 0;
        let mut destroyed = 0;
        for (tenant, owner, stream) in streams {
            if orphans || keys.get(&tenant, &owner).is_some() {
                destroyed += self.store.destroy_keys(&tenant, &stream).await?;
            }
        }
        if destroyed > 0 {
            tracing::info!(keys = destroyed, "destroyed the keys of erasures a crash had cut short");
        }
        Ok(())
    }

    /// Who read or changed the customer's data through the API, oldest first (what is still
    /// waiting to be written included).
    pub fn audit_trail(&self, tenant: &str, id: &str) -> Vec<chronicle_projections::AuditEntry> {
        self.views().tenant(tenant).and_then(|t| t.audit.get(id)).cloned().unwrap_or_default()
    }

    /// Subject access: everything held about a person as one document — the profile, every
    /// event of their timeline (their anonymous history and merged duplicates included, opened
    /// where sealing is on), the consent ledger with its proofs, the messages waiting or dead-
    /// lettered, and their campaign enrolments. `customer` is how the API shows a profile.
    pub async fn export_customer(&self, tenant: &str, id: &str) -> Result<Export, AppError> {
        let c = self.customer(tenant, id)?;
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self.timeline(tenant, id, after, 1000, None, &[]).await?;
            if page.events.is_empty() {
                break;
            }
            after = page.next;
            events.extend(page.events);
        }
        let consents = self.consents(tenant, id)?;
        let (messages, campaign_enrolments) = {
            let v = self.views();
            let a = v.tenant(tenant).map(|t| &t.automation);
            let messages = a.map_or_else(Vec::new, |a| {
                a.outbox
                    .values()
                    .map(|m| (m, MessageState::Queued))
                    .chain(a.dead_letters.values().map(|m| (m, MessageState::DeadLetter)))
                    .filter(|(m, _)| m.customer == id)
                    .map(|(m, state)| ExportedMessage {
                        id: m.message.clone(),
                        state,
                        channel: m.channel.clone(),
                        purpose: m.purpose,
                        to: m.to.clone(),
                        subject: m.subject.clone(),
                        body: m.body.clone(),
                        queued_at: m.queued_at,
                        attempts: m.attempts,
                    })
                    .collect()
            });
            let enrolments = a.map_or_else(Vec::new, |a| a.enrolments.values().filter(|e| e.customer == id).cloned().collect());
            (messages, enrolments)
        };
        Ok(Export {
            exported_at: self.now(),
            tenant: tenant.to_owned(),
            customer: crate::profile::Profile::from(&c),
            consents,
            events,
            messages,
            campaign_enrolments,
        })
    }
}

/// A subject access export: everything held about one person.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Export {
    pub exported_at: DateTime<Utc>,
    pub tenant: String,
    pub customer: crate::profile::Profile,
    pub consents: ConsentLedger,
    /// Every event of their timeline, oldest first.
    pub events: Vec<EventEnvelope>,
    /// Messages to them waiting in the outbox or dead-lettered (those sent are events).
    pub messages: Vec<ExportedMessage>,
    pub campaign_enrolments: Vec<chronicle_projections::automation::Enrolment>,
}

/// Where an exported message stands.
#[derive(Debug, Clone, Copy, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Queued,
    DeadLetter,
}

/// A message not yet sent, as the export shows it.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ExportedMessage {
    pub id: String,
    pub state: MessageState,
    pub channel: String,
    pub purpose: Purpose,
    pub to: String,
    pub subject: Option<String>,
    pub body: String,
    pub queued_at: DateTime<Utc>,
    pub attempts: u32,
}
