//! Access: tenants and their keys, authenticating a presented key (once per request, argon2 for
//! API-made keys, a guesser slowed per key id), and the request budgets (per key, and ingest's per
//! write key and client address).

use super::*;

impl App {
    /// The key's tenant, kind and role; `None` for an unknown or revoked key.
    pub fn authenticate(&self, presented_key: &str) -> Option<KeyRecord> {
        if let Some(id) = keys::api_key_id(presented_key) {
            let k = self.views().api_keys.get(id).cloned()?;
            if k.revoked_at.is_some() {
                return None;
            }
            let digest = keys::digest(presented_key);
            let known = self.budgets.is_verified(&digest);
            if !known {
                if !self.budgets.may_try_secret(id) {
                    return None;
                }
                // argon2 is slow on purpose: the async worker is given up meanwhile.
                self.metrics.key_verifications.fetch_add(1, Ordering::Relaxed);
                if !blocking(|| keys::verify_secret(presented_key, &k.hash)) {
                    self.budgets.secret_failed(id);
                    return None;
                }
                self.budgets.remember_verified(digest);
            }
            return Some(KeyRecord { tenant: k.tenant, kind: chronicle_projections::KeyKind::Api, role: k.role });
        }
        self.views().keys.get(&keys::digest(presented_key)).cloned()
    }

    /// Make an API key with a role; the key itself is returned once, only its hash is kept.
    pub async fn create_api_key(
        &self,
        tenant: &str,
        role: chronicle_projections::Role,
        name: Option<String>,
        actor: &str,
    ) -> Result<(chronicle_projections::ApiKey, String), AppError> {
        let (id, key, hash) = tokio::task::spawn_blocking(keys::mint_api_key).await.map_err(|e| AppError::internal("minting an API key", e))?;
        let record = chronicle_projections::ApiKey { id: id.clone(), tenant: tenant.to_owned(), role, name, hash, created_at: self.now(), revoked_at: None };
        let ev = NewEvent::new(Uuid::now_v7(), "ApiKeyCreated", json!(record), record.created_at).with_actor(actor);
        self.append(SYSTEM_TENANT, &format!("apikeys-{tenant}"), ExpectedVersion::Any, vec![ev]).await?;
        self.budgets.remember_verified(keys::digest(&key));
        Ok((record, key))
    }

    pub fn api_keys(&self, tenant: &str) -> Vec<chronicle_projections::ApiKey> {
        let mut out: Vec<_> = self.views().api_keys.values().filter(|k| k.tenant == tenant).cloned().collect();
        out.sort_by_key(|k| k.created_at);
        out
    }

    pub async fn revoke_api_key(&self, tenant: &str, id: &str, actor: &str) -> Result<(), AppError> {
        let known = self.views().api_keys.get(id).is_some_and(|k| k.tenant == tenant);
        if !known {
            return Err(AppError::NotFound("API key"));
        }
        let ev = NewEvent::new(Uuid::now_v7(), "ApiKeyRevoked", json!({"id": id, "tenant": tenant}), self.now()).with_actor(actor);
        self.append(SYSTEM_TENANT, &format!("apikeys-{tenant}"), ExpectedVersion::Any, vec![ev]).await?;
        Ok(())
    }

    /// Take one request from the key's budget; `Err(seconds)` to wait when it is spent.
    pub fn rate_check(&self, actor: &str) -> Result<(), u64> {
        self.budgets.take(actor, self.budgets.rate_limit.load(Ordering::Relaxed))
    }

    /// Ingest's budgets: per write key (when known) and per client address (when known); the
    /// seconds to wait when either is spent.
    pub fn ingest_rate_check(&self, key: Option<&str>, address: Option<std::net::IpAddr>) -> Result<(), u64> {
        // No name is built (nor a key hashed) for a budget that is off.
        let (per_address, per_key) = (self.budgets.ingest_per_address.load(Ordering::Relaxed), self.budgets.ingest_per_key.load(Ordering::Relaxed));
        if let (Some(a), true) = (address, per_address > 0) {
            self.budgets.take(&format!("ingest-address:{a}"), per_address)?;
        }
        if let (Some(k), true) = (key, per_key > 0) {
            self.budgets.take(&format!("ingest-key:{}", keys::digest(k)), per_key)?;
        }
        Ok(())
    }

    /// Ingest requests per second a write key, and a client address, may make (twice that in
    /// a burst); 0: no limit.
    pub fn set_ingest_rate_limits(&self, per_key: u64, per_address: u64) {
        self.budgets.ingest_per_key.store(per_key, Ordering::Relaxed);
        self.budgets.ingest_per_address.store(per_address, Ordering::Relaxed);
    }

    /// Requests a key may make per second (twice that in a burst); 0: no limit.
    pub fn set_rate_limit(&self, per_sec: u64) {
        self.budgets.rate_limit.store(per_sec, Ordering::Relaxed);
    }

    /// The tenants created here, by name.
    pub fn tenant_names(&self) -> Vec<String> {
        let v = self.views();
        let names: std::collections::BTreeSet<&String> = v.keys.values().map(|k| &k.tenant).collect();
        names.into_iter().cloned().collect()
    }

    /// Create a tenant and return its freshly minted (api_key, write_key); only hashes are kept.
    pub async fn create_tenant(&self, name: &str) -> Result<(String, String), AppError> {
        keys::validate_tenant_name(name)?;
        let api_key = keys::mint("ck");
        let write_key = keys::mint("wk");
        let data = json!({"name": name, "api_key_sha256": keys::digest(&api_key), "write_key_sha256": keys::digest(&write_key)});
        let ev = NewEvent::new(Uuid::now_v7(), "TenantCreated", data, self.now()).with_actor("cli");
        match self.store.append(SYSTEM_TENANT, &format!("tenant-{name}"), ExpectedVersion::NoStream, vec![ev]).await {
            Ok(_) => Ok((api_key, write_key)),
            Err(AppendError::Conflict { .. }) => {
                Err(AppError::Conflict { code: "tenant_exists", message: format!("tenant {name} already exists") })
            }
            Err(e) => Err(e.into()),
        }
    }
}
