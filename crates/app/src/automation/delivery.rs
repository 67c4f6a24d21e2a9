//! Handing a message to the outside world: e-mail over SMTP (lettre; plain, STARTTLS or SMTPS),
//! and JSON over HTTP(S) for webhooks and the SMS and push providers (reqwest: async, pooled,
//! rustls), signed with HMAC-SHA256 over the timestamp and the body. TLS trusts what
//! [`chronicle_tls`] trusts (the system's roots and `--tls-ca-file`); a TLS failure says so in
//! the retry's, the dead letter's and the log's reason. Every delivery carries the message's idempotency key: as the `Idempotency-Key` header
//! over HTTP, and as the e-mail's `Message-ID`, so a duplicate from the one window where one can
//! happen (sent, then a crash before the outcome is recorded) is recognisable.

use chronicle_projections::automation::OutboxEntry;
use hmac::{Hmac, Mac};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::MultiPart;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, CertificateStore, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde_json::json;
use sha2::Sha256;
use std::time::Duration;

/// Where messages go; what is not configured fails delivery with a clear error (and so ends in
/// the dead-letter queue, where an operator sees it).
#[derive(Clone, Default)]
pub struct DeliveryConfig {
    /// `smtp://[user:pass@]host[:port][?tls=opportunistic|required]` (plain by default, as
    /// lettre reads it; STARTTLS when offered, or required) or `smtps://…` (TLS from the start).
    pub smtp_url: Option<String>,
    /// The `From:` address of e-mail.
    pub mail_from: String,
    pub sms_webhook_url: Option<String>,
    pub push_webhook_url: Option<String>,
    /// The HMAC key webhooks are signed with: Standard Webhooks' form (`whsec_` and base64 of
    /// the key bytes), or any other text, whose bytes are the key.
    pub webhook_secret: String,
    /// One-click unsubscribe links on marketing mail (`--public-url`, `--unsubscribe-secret`).
    pub unsubscribe: Option<super::unsubscribe::Links>,
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
    operator: reqwest::Client,
    /// For tenants' webhooks while internal addresses are refused: every resolved address is
    /// checked (see [`crate::targets`]).
    guarded: reqwest::Client,
    /// The webhook secret's key bytes (see [`secret_key`]).
    secret_key: Vec<u8>,
}

/// A pooled HTTP(S) client that follows no redirect (a redirect could lead a checked request
/// anywhere) and uses no proxy from the environment (a proxy would connect where the guard
/// did not look).
fn http_client(guard: Option<crate::targets::GuardedResolver>) -> Result<reqwest::Client, DeliveryError> {
    let tls = (*chronicle_tls::trust().client()).clone();
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(g) = guard {
        builder = builder.dns_resolver(std::sync::Arc::new(g));
    }
    builder.build().map_err(|e| DeliveryError::Client(e.to_string()))
}

/// How an SMTP session is secured (lettre's URL convention: `smtp://` plain unless `?tls=`
/// says otherwise, `smtps://` TLS from the first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SmtpTls {
    None,
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS, or no message.
    Required,
    /// SMTPS.
    Wrapper,
}

/// Where e-mail goes (see [`DeliveryConfig::smtp_url`]).
struct SmtpServer {
    host: String,
    port: u16,
    credentials: Option<Credentials>,
    tls: SmtpTls,
    /// STARTTLS's settings: the host's name and the trusted roots.
    starttls: Option<TlsParameters>,
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
    #[error("building the HTTPS client: {0}")]
    Client(String),
    #[error("the SMTP server's TLS settings: {0}")]
    SmtpTls(String),
}

/// Why an SMTP session did not get the message accepted; a TLS failure names its reason.
#[derive(Debug, thiserror::Error)]
enum SmtpError {
    #[error("timed out")]
    Timeout,
    #[error("{}", chronicle_tls::tls_reason(.0).unwrap_or_else(|| .0.to_string()))]
    Connect(#[source] std::io::Error),
    #[error("{}", chronicle_tls::tls_reason(.0).map(|r| format!("{r} ({})", .0)).unwrap_or_else(|| .0.to_string()))]
    Session(#[source] lettre::transport::smtp::Error),
    #[error("the server does not offer STARTTLS, and the SMTP URL requires TLS (tls=required)")]
    NoStartTls,
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
        let operator = http_client(None)?;
        let guarded = http_client(Some(crate::targets::GuardedResolver))?;
        Ok(Delivery { config, smtp, operator, guarded, secret_key })
    }

    /// Deliver one message; `Ok` carries the provider's id for it, when it gives one. A
    /// tenant's webhook goes only where `targets` lets it.
    pub async fn deliver(&self, tenant: &str, m: &OutboxEntry, targets: crate::targets::WebhookTargets) -> Result<Option<String>, String> {
        match m.channel.as_str() {
            "email" => self.email(tenant, m).await,
            "webhook" => {
                let client = match targets {
                    crate::targets::WebhookTargets::PublicOnly => {
                        // An address literal is not resolved, so the resolver's check cannot
                        // see it: it is checked here, as the URL parser reads it (`127.1`
                        // is 127.0.0.1).
                        if crate::targets::literal_is_internal(&m.to) {
                            return Err(PostError::Refused.for_tenant());
                        }
                        &self.guarded
                    }
                    crate::targets::WebhookTargets::AllowPrivate => &self.operator,
                };
                self.post(client, &m.to, tenant, m).await.map_err(|e| e.for_tenant())
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

    /// The HTML body with a plain-text part beside it; marketing mail also carries its one-click
    /// unsubscribe link (RFC 8058) when links are configured.
    async fn email(&self, tenant: &str, m: &OutboxEntry) -> Result<Option<String>, String> {
        let Some(smtp) = &self.smtp else { return Err("no SMTP server is configured (--smtp-url)".into()) };
        let message_id = format!("<{}@chronicle>", m.message);
        let mut builder = lettre::Message::builder()
            .message_id(Some(message_id.clone()))
            .from(self.config.mail_from.parse().map_err(|e| format!("sender: {e}"))?)
            .to(m.to.parse().map_err(|e| format!("recipient {:?}: {e}", m.to))?)
            .subject(m.subject.clone().unwrap_or_default());
        if let (Some(links), chronicle_core::customer::Purpose::Marketing) = (&self.config.unsubscribe, m.purpose) {
            let link = links.link(tenant, &m.customer, &m.message);
            let header = |name: &'static str, value: String| HeaderValue::new(HeaderName::new_from_ascii_str(name), value);
            builder = builder
                .raw_header(header("List-Unsubscribe", format!("<{link}>")))
                .raw_header(header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".into()));
        }
        let text = chronicle_automation::template::plain_text(&m.body);
        let mail = builder.multipart(MultiPart::alternative_plain_html(text, m.body.clone())).map_err(|e| e.to_string())?;
        smtp.send(&mail).await.map_err(|e| format!("SMTP: {e}"))?;
        Ok(Some(message_id))
    }

    async fn post(&self, client: &reqwest::Client, url: &str, tenant: &str, m: &OutboxEntry) -> Result<Option<String>, PostError> {
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
        let resp = client
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &m.message)
            .header("X-Chronicle-Timestamp", &ts)
            .header("X-Chronicle-Signature", format!("v1={signature}"))
            .header("webhook-id", &m.message)
            .header("webhook-timestamp", &ts)
            .header("webhook-signature", &standard)
            .body(body)
            .send()
            .await
            .map_err(PostError::Transport)?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            Ok(None)
        } else {
            Err(PostError::Status(status))
        }
    }
}

/// Why a POST failed.
#[derive(Debug)]
enum PostError {
    /// A tenant's webhook whose address is internal.
    Refused,
    Transport(reqwest::Error),
    Status(u16),
}

impl PostError {
    /// What a tenant is told: no address, port or connection detail (which would tell which
    /// internal ports answer), only whether the target was refused, failed TLS, gave no answer
    /// or answered with an error status.
    fn for_tenant(self) -> String {
        match self {
            PostError::Status(s) => format!("webhook: the target answered HTTP {s}"),
            PostError::Refused => format!("webhook: refused, {} (--allow-private-webhooks allows it)", crate::targets::REFUSED),
            PostError::Transport(e) if chain(&e).contains(crate::targets::REFUSED) => PostError::Refused.for_tenant(),
            PostError::Transport(e) => match chronicle_tls::tls_reason(&e) {
                Some(reason) => format!("webhook: {reason}"),
                None if e.is_timeout() => "webhook: the target did not answer in time".into(),
                None => "webhook: could not reach the target".into(),
            },
        }
    }

    /// What the operator is told about a provider they configured: everything.
    fn for_operator(self, url: &str) -> String {
        match self {
            PostError::Status(s) => format!("POST {url}: HTTP {s}"),
            PostError::Refused => format!("POST {url}: {}", crate::targets::REFUSED),
            PostError::Transport(e) => match chronicle_tls::tls_reason(&e) {
                Some(reason) => format!("POST {url}: {reason}"),
                None => format!("POST {url}: {}", chain(&e)),
            },
        }
    }
}

/// An error with its sources, `: `-joined (reqwest's own message is only the outermost).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
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
    let (rest, wrapper) = match (url.strip_prefix("smtp://"), url.strip_prefix("smtps://")) {
        (Some(r), _) => (r, false),
        (_, Some(r)) => (r, true),
        _ => return Err(refused("the SMTP URL must start with smtp:// or smtps://")),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut tls = if wrapper { SmtpTls::Wrapper } else { SmtpTls::None };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        tls = match (pair, wrapper) {
            ("tls=none", false) => SmtpTls::None,
            ("tls=opportunistic", false) => SmtpTls::Opportunistic,
            ("tls=required", false) => SmtpTls::Required,
            (_, true) => return Err(refused("smtps:// is TLS from the start and takes no ?tls=")),
            _ => return Err(refused("the only setting is tls=none, tls=opportunistic or tls=required")),
        };
    }
    let rest = rest.trim_end_matches('/');
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let default_port = match tls {
        SmtpTls::Wrapper => 465,
        SmtpTls::Required => 587,
        SmtpTls::None | SmtpTls::Opportunistic => 25,
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| refused("bad port"))?),
        None => (hostport, default_port),
    };
    if host.is_empty() {
        return Err(refused("no host"));
    }
    let credentials = auth.map(|a| {
        let (user, pass) = a.split_once(':').unwrap_or((a, ""));
        Credentials::new(user.to_owned(), pass.to_owned())
    });
    let starttls = match tls {
        SmtpTls::Opportunistic | SmtpTls::Required => Some(starttls_parameters(host)?),
        SmtpTls::None | SmtpTls::Wrapper => None,
    };
    Ok(SmtpServer { host: host.to_owned(), port, credentials, tls, starttls })
}

/// lettre's TLS settings for STARTTLS with Chronicle's trusted roots.
fn starttls_parameters(host: &str) -> Result<TlsParameters, DeliveryError> {
    let mut builder = TlsParameters::builder(host.to_owned()).certificate_store(CertificateStore::None);
    for der in &chronicle_tls::trust().certificates {
        match Certificate::from_der(der.to_vec()) {
            Ok(c) => builder = builder.add_root_certificate(c),
            // A system bundle can hold a certificate rustls cannot read; it is skipped.
            Err(_) => continue,
        }
    }
    builder.build_rustls().map_err(|e| DeliveryError::SmtpTls(e.to_string()))
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
            let hello = ClientId::default();
            let mut conn = if self.tls == SmtpTls::Wrapper {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| SmtpError::Connect(std::io::Error::other(e)))?;
                let tls = tokio_rustls::TlsConnector::from(chronicle_tls::trust().client()).connect(name, stream).await.map_err(SmtpError::Connect)?;
                AsyncSmtpConnection::connect_with_transport(Box::new(Smtps(tls)), &hello).await.map_err(SmtpError::Session)?
            } else {
                AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello).await.map_err(SmtpError::Session)?
            };
            if let Some(params) = &self.starttls {
                if conn.can_starttls() {
                    conn.starttls(params.clone(), &hello).await.map_err(SmtpError::Session)?;
                } else if self.tls == SmtpTls::Required {
                    return Err(SmtpError::NoStartTls);
                }
            }
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

/// An SMTPS connection, made here (rather than by lettre) so that it is the connection with
/// `TCP_NODELAY` (see [`SmtpServer::send`]) and trusts Chronicle's roots.
#[derive(Debug)]
struct Smtps(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl lettre::transport::smtp::client::AsyncTokioStream for Smtps {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl tokio::io::AsyncRead for Smtps {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Smtps {
    fn poll_write(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
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
        assert!(smtp_server("http://x").err().unwrap().to_string().contains("smtp://"));
        assert!(smtp_server("smtp://h:port").err().unwrap().to_string().contains("bad port"));
        let s = smtp_server("smtps://mail.example.com").unwrap();
        assert_eq!((s.port, s.tls, s.starttls.is_none()), (465, SmtpTls::Wrapper, true));
        let s = smtp_server("smtp://u:p@mail.example.com?tls=required").unwrap();
        assert_eq!((s.port, s.tls, s.starttls.is_some()), (587, SmtpTls::Required, true));
        assert_eq!(smtp_server("smtp://h:2525?tls=opportunistic").unwrap().tls, SmtpTls::Opportunistic);
        assert!(smtp_server("smtp://h?tls=sometimes").err().unwrap().to_string().contains("tls=required"));
        assert!(smtp_server("smtps://h?tls=required").is_err());
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
