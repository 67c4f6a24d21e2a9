//! People and their sessions (the web UI's sign-in): user accounts per tenant (name, e-mail,
//! role, an argon2id password hash), sessions started with a password or an API key and ended
//! by signing out. Both are events on the system tenant (`user-{tenant}-{email}`,
//! `sessions-{tenant}`), so every node over the same database knows every person and honours
//! every session; the token a browser holds is kept only as its SHA-256 digest.

use super::*;
use chronicle_projections::{Role, Session, SessionOf, User};

/// How long a session lasts from its sign-in.
pub const SESSION_HOURS: i64 = 12;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;

/// Why a sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// The same answer for an unknown e-mail, a wrong password and a deactivated person.
    #[error("wrong e-mail address or password")]
    Wrong,
    #[error("unknown or revoked API key")]
    UnknownKey,
    #[error("too many sign-in attempts; retry in {0} s")]
    TooMany(u64),
    #[error(transparent)]
    App(#[from] AppError),
}

/// A session as a request sees it: who, in which tenant, with which role now.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub session: Session,
    /// The person's (or the key's) role at this moment: a role change applies at once.
    pub role: Role,
    /// The person's name, or the key's name when it has one.
    pub name: String,
}

/// A hash to verify against when the e-mail is unknown, so that an unknown address takes as
/// long to refuse as a wrong password.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| keys::hash_password("not anyone's password"));

impl App {
    /// Make a person's account. The e-mail is unique within the tenant (one stream per address,
    /// created with `NoStream`, so two nodes cannot both make it).
    pub async fn create_user(
        &self,
        tenant: &str,
        name: &str,
        email: &str,
        role: Role,
        password: &str,
        actor: &str,
    ) -> Result<User, AppError> {
        if !self.tenant_names().iter().any(|t| t == tenant) {
            return Err(AppError::NotFound("tenant"));
        }
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(AppError::BadRequest("a person's name is 1 to 200 characters".into()));
        }
        let email = customer::normalize_email(email).map_err(|e| AppError::BadRequest(e.to_string()))?;
        check_password(password)?;
        if role == Role::Ingest {
            return Err(AppError::BadRequest("a person's role is reader, writer or admin".into()));
        }
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || keys::hash_password(&password))
            .await
            .map_err(|e| AppError::internal("hashing a password", e))?;
        let user = User {
            id: Uuid::now_v7().to_string(),
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            email: email.clone(),
            role,
            hash,
            created_at: self.now(),
            deactivated_at: None,
        };
        let ev = NewEvent::new(Uuid::now_v7(), "UserCreated", json!(user), user.created_at).with_actor(actor);
        match self.append(SYSTEM_TENANT, &user_stream(tenant, &email), ExpectedVersion::NoStream, vec![ev]).await {
            Ok(_) => Ok(user),
            Err(AppError::VersionConflict { .. }) => {
                Err(AppError::Conflict { code: "user_exists", message: format!("{email} already has an account in {tenant}") })
            }
            Err(e) => Err(e),
        }
    }

    /// The tenant's people, by name.
    pub fn users(&self, tenant: &str) -> Vec<User> {
        let mut out: Vec<User> = self.views().users.values().filter(|u| u.tenant == tenant).cloned().collect();
        out.sort_by(|a, b| a.name.to_lowercase().cmp(&b.name.to_lowercase()).then(a.email.cmp(&b.email)));
        out
    }

    /// Deactivate (no sign-in, sessions refused) or reactivate a person.
    pub async fn set_user_active(&self, tenant: &str, id: &str, active: bool, actor: &str) -> Result<User, AppError> {
        let user = self.user(tenant, id)?;
        if active == user.deactivated_at.is_none() {
            return Ok(user);
        }
        let ty = if active { "UserReactivated" } else { "UserDeactivated" };
        let ev = NewEvent::new(Uuid::now_v7(), ty, json!({"id": id}), self.now()).with_actor(actor);
        self.append(SYSTEM_TENANT, &user_stream(tenant, &user.email), ExpectedVersion::Any, vec![ev]).await?;
        self.user(tenant, id)
    }

    fn user(&self, tenant: &str, id: &str) -> Result<User, AppError> {
        self.views().users.get(id).filter(|u| u.tenant == tenant).cloned().ok_or(AppError::NotFound("user"))
    }

    /// Sign a person in with their e-mail and password: the session's token (for the cookie)
    /// and the session. Attempts are limited per address and per client.
    pub async fn sign_in(
        &self,
        tenant: &str,
        email: &str,
        password: &str,
        client: Option<std::net::IpAddr>,
    ) -> Result<(String, Session), SignInError> {
        if let Some(ip) = client {
            self.budgets.take(&format!("sign-in:{ip}"), 2).map_err(SignInError::TooMany)?;
        }
        let email = email.trim().to_lowercase();
        let guard = format!("sign-in:{tenant}:{email}");
        if !self.budgets.may_try_secret(&guard) {
            return Err(SignInError::TooMany(10));
        }
        let user = self.views().users.values().find(|u| u.tenant == tenant && u.email == email).cloned();
        let hash = user.as_ref().map_or_else(|| DUMMY_HASH.clone(), |u| u.hash.clone());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || keys::verify_password(&password, &hash))
            .await
            .map_err(|e| AppError::internal("verifying a password", e))?;
        let Some(user) = user.filter(|u| matches && u.deactivated_at.is_none()) else {
            self.budgets.secret_failed(&guard);
            return Err(SignInError::Wrong);
        };
        Ok(self.start_session(tenant, SessionOf::User(user.id.clone()), user.actor()).await?)
    }

    /// Sign in with an API key (automation, or a tenant with no people yet): the session lasts
    /// while the key is valid, with the key's role.
    pub async fn sign_in_with_key(&self, presented_key: &str) -> Result<(String, Session), SignInError> {
        let rec = self.authenticate(presented_key.trim()).filter(|r| r.kind == chronicle_projections::KeyKind::Api && r.role != Role::Ingest);
        let Some(rec) = rec else { return Err(SignInError::UnknownKey) };
        let digest = keys::digest(presented_key.trim());
        // An API-made key is named by its id (its record says whether it was revoked); a
        // tenant's first key by its digest.
        let of = keys::api_key_id(presented_key.trim()).map_or_else(|| digest.clone(), str::to_owned);
        Ok(self.start_session(&rec.tenant, SessionOf::Key(of), format!("key:{}", &digest[..12])).await?)
    }

    async fn start_session(&self, tenant: &str, of: SessionOf, actor: String) -> Result<(String, Session), AppError> {
        let token = keys::mint("cs");
        let now = self.now();
        let session = Session {
            digest: keys::digest(&token),
            tenant: tenant.to_owned(),
            of,
            actor: actor.clone(),
            started_at: now,
            expires_at: now + chrono::Duration::hours(SESSION_HOURS),
        };
        let ev = NewEvent::new(Uuid::now_v7(), "SessionStarted", json!(session), now).with_actor(&actor);
        self.append(SYSTEM_TENANT, &format!("sessions-{tenant}"), ExpectedVersion::Any, vec![ev]).await?;
        Ok((token, session))
    }

    /// The session a token opens, if it is valid now: not ended, not expired, its person active
    /// or its key not revoked.
    pub fn session(&self, token: &str) -> Option<SignedIn> {
        let v = self.views();
        let session = v.sessions.get(&keys::digest(token))?;
        if session.expires_at <= self.now() {
            return None;
        }
        let (role, name) = match &session.of {
            SessionOf::User(id) => {
                let u = v.users.get(id).filter(|u| u.deactivated_at.is_none() && u.tenant == session.tenant)?;
                (u.role, u.name.clone())
            }
            SessionOf::Key(of) => match v.api_keys.get(of) {
                Some(k) if k.revoked_at.is_none() => (k.role, k.name.clone().unwrap_or_else(|| format!("API key {of}"))),
                Some(_) => return None,
                None => {
                    let rec = v.keys.get(of).filter(|r| r.kind == chronicle_projections::KeyKind::Api)?;
                    (rec.role, "API key".to_owned())
                }
            },
        };
        Some(SignedIn { session: session.clone(), role, name })
    }

    /// End a session (sign-out), on every node.
    pub async fn sign_out(&self, token: &str) -> Result<(), AppError> {
        let digest = keys::digest(token);
        let Some(s) = self.views().sessions.get(&digest).cloned() else { return Ok(()) };
        let ev = NewEvent::new(Uuid::now_v7(), "SessionEnded", json!({"digest": digest}), self.now()).with_actor(&s.actor);
        self.append(SYSTEM_TENANT, &format!("sessions-{}", s.tenant), ExpectedVersion::Any, vec![ev]).await?;
        Ok(())
    }
}

fn user_stream(tenant: &str, email: &str) -> String {
    format!("user-{tenant}-{email}")
}

fn check_password(password: &str) -> Result<(), AppError> {
    let n = password.chars().count();
    if n < MIN_PASSWORD || password.len() > 1024 {
        return Err(AppError::BadRequest(format!("a password is {MIN_PASSWORD} to 1024 characters")));
    }
    Ok(())
}
