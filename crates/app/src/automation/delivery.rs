//! Handing a message to the outside world: e-mail over SMTP (lettre), and JSON over HTTP for
//! webhooks and the SMS and push providers, signed with HMAC-SHA256 over the timestamp and the
//! body. Every delivery carries the message's idempotency key: as the `Idempotency-Key` header
//! over HTTP, and as the e-mail's `Message-ID`, so a duplicate from the one window where one can
//! happen (sent, then a crash before the outcome is recorded) is recognisable.

use chronicle_projections::automation::OutboxEntry;
use hmac::{Hmac, Mac};
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::extension::ClientId;
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;

/// Where messages go; what is not configured fails delivery with a clear error (and so ends in
/// the dead-letter queue, where an operator sees it).
#[derive(Clone, Default)]
pub struct DeliveryConfig {
    /// `smtp://[user:pass@]host:port`, plain SMTP (a local relay or a test sink).
    pub smtp_url: Option<String>,
    /// The `From:` address of e-mail.
    pub mail_from: String,
    pub sms_webhook_url: Option<String>,
    pub push_webhook_url: Option<String>,
    /// The HMAC key webhooks are signed with: Standard Webhooks' form (`whsec_` and base64 of
    /// the key bytes), or any other text, whose bytes are the key.
    pub webhook_secret: String,
}

/// The key bytes of a webhook secret: `whsec_…` decoded from base64, else the text's bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, DeliveryError> {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| DeliveryError::WebhookSecret),
        None => Ok(secret.as_bytes().to_vec()),
    }
}

/// The Standard Webhooks signature (`webhook-signature`): `v1,` and base64 of
/// HMAC-SHA256(key, `id.timestamp.body`), which receivers check with the spec's libraries.
pub fn standard_signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    use base64::Engine;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

pub struct Delivery {
    config: DeliveryConfig,
    smtp: Option<SmtpServer>,
    /// For the URLs the operator configured (SMS and push providers).
    operator: ureq::Agent,
    /// For tenants' webhooks while internal addresses are refused: every resolved address is
    /// checked (see [`crate::targets`]).
    guarded: ureq::Agent,
    /// The webhook secret's key bytes (see [`secret_key`]).
    secret_key: Vec<u8>,
}

/// An agent that follows no redirect (a redirect could lead a checked request anywhere) and
/// answers HTTP errors as statuses.
fn agent_config() -> ureq::config::Config {
    ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(false).max_redirects(0).build()
}

/// Where e-mail goes: `smtp://[user:pass@]host:port`.
#[derive(Debug)]
struct SmtpServer {
    host: String,
    port: u16,
    credentials: Option<Credentials>,
}

const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `QUIT` after an accepted message may take before the connection is dropped.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the delivery configuration was refused (at start, before anything is sent).
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("{url:?}: {why}")]
    SmtpUrl { url: String, why: &'static str },
    #[error("the mail sender {0:?} is not an e-mail address")]
    MailFrom(String),
    #[error("the webhook secret starts with whsec_ but the rest is not base64")]
    WebhookSecret,
}

/// Why an SMTP session did not get the message accepted.
#[derive(Debug, thiserror::Error)]
enum SmtpError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Session(#[source] lettre::transport::smtp::Error),
}

impl Delivery {
    pub fn new(config: DeliveryConfig) -> Result<Delivery, DeliveryError> {
        let smtp = match &config.smtp_url {
            Some(url) => Some(smtp_server(url)?),
            None => None,
        };
        let secret_key = secret_key(&config.webhook_secret)?;
        if !config.mail_from.contains('@') {
            return Err(DeliveryError::MailFrom(config.mail_from.clone()));
        }
        let operator = ureq::Agent::new_with_config(agent_config());
        let guarded = ureq::Agent::with_parts(
            agent_config(),
            ureq::unversioned::transport::DefaultConnector::default(),
            crate::targets::GuardedResolver::default(),
        );
        Ok(Delivery { config, smtp, operator, guarded, secret_key })
    }

    /// Deliver one message; `Ok` carries the provider's id for it, when it gives one. A
    /// tenant's webhook goes only where `targets` lets it.
    pub async fn deliver(&self, tenant: &str, m: &OutboxEntry, targets: crate::targets::WebhookTargets) -> Result<Option<String>, String> {
        match m.channel.as_str() {
            "email" => self.email(m).await,
            "webhook" => {
                let agent = match targets {
                    crate::targets::WebhookTargets::PublicOnly => &self.guarded,
                    crate::targets::WebhookTargets::AllowPrivate => &self.operator,
                };
                self.post(agent, &m.to, tenant, m).await.map_err(|e| e.for_tenant())
            }
            "sms" => match &self.config.sms_webhook_url {
                Some(url) => self.post(&self.operator, url, tenant, m).await.map_err(|e| e.for_operator(url)),
                None => Err("no SMS provider is configured (--sms-webhook-url)".into()),
            },
            "push" | "in_app" => match &self.config.push_webhook_url {
                Some(url) => self.post(&self.operator, url, tenant, m).await.map_err(|e| e.for_operator(url)),
                None => Err("no push provider is configured (--push-webhook-url)".into()),
            },
            other => Err(format!("no delivery for channel {other}")),
        }
    }

    async fn email(&self, m: &OutboxEntry) -> Result<Option<String>, String> {
        let Some(smtp) = &self.smtp else { return Err("no SMTP server is configured (--smtp-url)".into()) };
        let message_id = format!("<{}@chronicle>", m.message);
        let mail = lettre::Message::builder()
            .message_id(Some(message_id.clone()))
            .from(self.config.mail_from.parse().map_err(|e| format!("sender: {e}"))?)
            .to(m.to.parse().map_err(|e| format!("recipient {:?}: {e}", m.to))?)
            .subject(m.subject.clone().unwrap_or_default())
            .header(ContentType::TEXT_HTML)
            .body(m.body.clone())
            .map_err(|e| e.to_string())?;
        smtp.send(&mail).await.map_err(|e| format!("SMTP: {e}"))?;
        Ok(Some(message_id))
    }

    async fn post(&self, agent: &ureq::Agent, url: &str, tenant: &str, m: &OutboxEntry) -> Result<Option<String>, PostError> {
        let body = json!({
            "message": m.message, "tenant": tenant, "customer": m.customer, "channel": m.channel,
            "purpose": m.purpose, "to": m.to, "subject": m.subject, "body": m.body,
            "campaign": m.origin.as_ref().map(|o| &o.campaign),
        })
        .to_string();
        let ts = chrono::Utc::now().timestamp().to_string();
        let signature = sign(&self.config.webhook_secret, &ts, body.as_bytes());
        // Standard Webhooks: the message id is the webhook id (the same on every attempt, so a
        // receiver drops a duplicate), signed with the timestamp and the body.
        let standard = standard_signature(&self.secret_key, &m.message, &ts, body.as_bytes());
        let (url, key, agent) = (url.to_owned(), m.message.clone(), agent.clone());
        tokio::task::spawn_blocking(move || {
            let resp = agent
                .post(&url)
                .header("Content-Type", "application/json")
                .header("Idempotency-Key", &key)
                .header("X-Chronicle-Timestamp", &ts)
                .header("X-Chronicle-Signature", &format!("v1={signature}"))
                .header("webhook-id", &key)
                .header("webhook-timestamp", &ts)
                .header("webhook-signature", &standard)
                .send(body.as_bytes())
                .map_err(PostError::Transport)?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                Ok(None)
            } else {
                Err(PostError::Status(status))
            }
        })
        .await
        .map_err(|e| PostError::Transport(ureq::Error::Io(std::io::Error::other(e.to_string()))))?
    }
}

/// Why a POST failed.
#[derive(Debug)]
enum PostError {
    Transport(ureq::Error),
    Status(u16),
}

impl PostError {
    /// What a tenant is told: no address, port or connection detail (which would tell which
    /// internal ports answer), only whether the target was refused, gave no answer or
    /// answered with an error status.
    fn for_tenant(self) -> String {
        match self {
            PostError::Status(s) => format!("webhook: the target answered HTTP {s}"),
            PostError::Transport(ureq::Error::Io(e)) if e.to_string() == crate::targets::REFUSED => {
                format!("webhook: refused, {} (--allow-private-webhooks allows it)", crate::targets::REFUSED)
            }
            PostError::Transport(ureq::Error::Timeout(_)) => "webhook: the target did not answer in time".into(),
            PostError::Transport(_) => "webhook: could not reach the target".into(),
        }
    }

    /// What the operator is told about a provider they configured: everything.
    fn for_operator(self, url: &str) -> String {
        match self {
            PostError::Status(s) => format!("POST {url}: HTTP {s}"),
            PostError::Transport(e) => format!("POST {url}: {e}"),
        }
    }
}

/// `hex(HMAC-SHA256(secret, timestamp + "." + body))`: what a receiver recomputes to check a
/// webhook came from us and was not replayed from long ago.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn smtp_server(url: &str) -> Result<SmtpServer, DeliveryError> {
    let refused = |why| DeliveryError::SmtpUrl { url: url.to_owned(), why };
    let rest = url.strip_prefix("smtp://").ok_or_else(|| refused("the SMTP URL must start with smtp://"))?;
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| refused("bad port"))?),
        None => (hostport, 25),
    };
    if host.is_empty() {
        return Err(refused("no host"));
    }
    let credentials = auth.map(|a| {
        let (user, pass) = a.split_once(':').unwrap_or((a, ""));
        Credentials::new(user.to_owned(), pass.to_owned())
    });
    Ok(SmtpServer { host: host.to_owned(), port, credentials })
}

impl SmtpServer {
    /// One SMTP session per message. The connection is ours, so it can have `TCP_NODELAY`:
    /// lettre writes the message and the closing `.` separately, and with Nagle's algorithm the
    /// second write would wait for the server's delayed ACK (~40 ms on Linux).
    ///
    /// The time limit covers the session up to the server's `250` to the end of the message
    /// data: from that answer on the message is accepted, so it is sent. `QUIT` is said on
    /// the side, with its own limit, and nothing it does (a slow or failing answer, a reset)
    /// can turn an accepted message into a failed one that would be sent again.
    async fn send(&self, mail: &lettre::Message) -> Result<(), SmtpError> {
        let session = async {
            let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await.map_err(SmtpError::Connect)?;
            stream.set_nodelay(true).map_err(SmtpError::Connect)?;
            let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &ClientId::default())
                .await
                .map_err(SmtpError::Session)?;
            if let Some(c) = &self.credentials {
                conn.auth(&[Mechanism::Plain, Mechanism::Login], c).await.map_err(SmtpError::Session)?;
            }
            conn.send(mail.envelope(), &mail.formatted()).await.map_err(SmtpError::Session)?;
            Ok::<_, SmtpError>(conn)
        };
        let mut conn = tokio::time::timeout(TIMEOUT, session).await.map_err(|_| SmtpError::Timeout)??;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, conn.quit()).await;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_are_read_or_refused() {
        assert_eq!(smtp_server("smtp://127.0.0.1:2525").unwrap().port, 2525);
        let s = smtp_server("smtp://u:p@mail.local").unwrap();
        assert_eq!((s.host.as_str(), s.port, s.credentials.is_some()), ("mail.local", 25, true));
        assert!(smtp_server("http://x").unwrap_err().to_string().contains("smtp://"));
        assert!(smtp_server("smtp://h:port").unwrap_err().to_string().contains("bad port"));
    }

    /// The Standard Webhooks specification's own example (the `standardwebhooks` library from
    /// PyPI signs it the same).
    #[test]
    fn the_standard_webhooks_signature_matches_the_specs_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(secret_key("plain").unwrap(), b"plain");
        assert!(matches!(secret_key("whsec_not base64!"), Err(DeliveryError::WebhookSecret)));
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python's hmac.new(b"Jefe", b"what do ya want.for nothing?", sha256) gives this.
        assert_eq!(
            sign("Jefe", "what do ya want", b"for nothing?"),
            "e33f91577b90d4b3bbd73cb61803074f1965d27701b5527942dd9ea9443af37c"
        );
    }
}
