//! Configuration, layered: built-in defaults < config file (`--config` / `CHRONICLE_CONFIG`,
//! TOML) < environment (`CHRONICLE_*`) < command line. clap resolves the last two (a flag
//! beats its env variable); this module adds the file and the defaults, and nothing below the
//! binary reads the environment.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA: &str = "./chronicle-data";

/// Every setting the config file may hold, and the environment variable it stands in for: the
/// file fills a variable the environment does not set, before the command line is parsed, so
/// file < environment < command line for every setting of `serve` alike. (The master key
/// itself is not among them: keep it in `master_key_file`.)
pub const FILE_KEYS: &[(&str, &str)] = &[
    ("data", "CHRONICLE_DATA"),
    ("listen", "CHRONICLE_LISTEN"),
    ("database_url", "CHRONICLE_DATABASE_URL"),
    ("database_schema", "CHRONICLE_DATABASE_SCHEMA"),
    ("seal", "CHRONICLE_SEAL"),
    ("master_key_file", "CHRONICLE_MASTER_KEY_FILE"),
    ("tls_ca_file", "CHRONICLE_TLS_CA_FILE"),
    ("rate_limit", "CHRONICLE_RATE_LIMIT"),
    ("ingest_rate_limit", "CHRONICLE_INGEST_RATE_LIMIT"),
    ("ingest_rate_limit_per_address", "CHRONICLE_INGEST_RATE_LIMIT_PER_ADDRESS"),
    ("max_connections", "CHRONICLE_MAX_CONNECTIONS"),
    ("metrics_token", "CHRONICLE_METRICS_TOKEN"),
    ("cors_origin", "CHRONICLE_CORS_ORIGINS"),
    ("tls_cert", "CHRONICLE_TLS_CERT"),
    ("tls_key", "CHRONICLE_TLS_KEY"),
    ("smtp_url", "CHRONICLE_SMTP_URL"),
    ("mail_from", "CHRONICLE_MAIL_FROM"),
    ("allow_private_webhooks", "CHRONICLE_ALLOW_PRIVATE_WEBHOOKS"),
    ("webhook_secret", "CHRONICLE_WEBHOOK_SECRET"),
    ("public_url", "CHRONICLE_PUBLIC_URL"),
    ("unsubscribe_secret", "CHRONICLE_UNSUBSCRIBE_SECRET"),
    ("sms_webhook_url", "CHRONICLE_SMS_WEBHOOK_URL"),
    ("push_webhook_url", "CHRONICLE_PUSH_WEBHOOK_URL"),
    ("retry_base_ms", "CHRONICLE_RETRY_BASE_MS"),
    ("max_attempts", "CHRONICLE_MAX_ATTEMPTS"),
    ("scan_every_ms", "CHRONICLE_SCAN_EVERY_MS"),
    ("sendgrid_public_key", "CHRONICLE_SENDGRID_PUBLIC_KEY"),
    ("campaigns", "CHRONICLE_CAMPAIGNS"),
];

/// The config file's settings (`--config FILE` among `args`, else `CHRONICLE_CONFIG`), each
/// as the text its environment variable would hold; an unknown key is an error.
pub fn file_settings(args: &[String]) -> anyhow::Result<Vec<(&'static str, String)>> {
    let named = args.iter().enumerate().find_map(|(i, a)| match a.strip_prefix("--config") {
        Some("") => args.get(i + 1).cloned(),
        Some(rest) => rest.strip_prefix('=').map(str::to_owned),
        None => None,
    });
    let Some(path) = named.or_else(|| std::env::var("CHRONICLE_CONFIG").ok()) else { return Ok(Vec::new()) };
    let table = read_table(Path::new(&path))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some((_, var)) = FILE_KEYS.iter().find(|(k, _)| *k == key) else {
            anyhow::bail!("unknown setting {key:?} in {path}; the settings are {}", FILE_KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", "));
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list (cors_origin): its variable takes the values comma-separated.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => {
                items.iter().filter_map(toml::Value::as_str).collect::<Vec<_>>().join(",")
            }
            other => anyhow::bail!("setting {key:?} in {path} is a {}, not a string, number or boolean", other.type_str()),
        };
        out.push((*var, text));
    }
    Ok(out)
}

fn read_table(p: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading config file {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", p.display()))
}
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";

/// Storage options every command takes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StorageArgs {
    /// Data folder of the embedded store [default: ./chronicle-data]
    #[arg(long, env = "CHRONICLE_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// PostgreSQL URL: events in PostgreSQL instead of the data folder's log
    #[arg(long, env = "CHRONICLE_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// The PostgreSQL schema Chronicle's tables live in [default: chronicle]
    #[arg(long, env = "CHRONICLE_DATABASE_SCHEMA", global = true)]
    pub database_schema: Option<String>,
    /// Configuration file (TOML): any setting of serve by its flag's name with `_` for `-`
    /// (data, listen, database_url, rate_limit, smtp_url, webhook_secret, …; see `chronicle config`)
    #[arg(long, env = "CHRONICLE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Crypto-shredding: seal personal data in events with per-customer keys. On by default
    /// for a new data folder (`--seal=false` / CHRONICLE_SEAL=0 makes an unsealed one); a
    /// folder keeps what it was made with (`--seal` turns it on for an unsealed folder)
    #[arg(
        long,
        env = "CHRONICLE_SEAL",
        global = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub seal: Option<bool>,
    /// File holding the master key that wraps the data keys ([N:]base64 of 32 bytes)
    /// [default: DATA/master.key, created on first use]
    #[arg(long, env = "CHRONICLE_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// The master key itself, instead of a file (prefer the file: environments leak)
    #[arg(long, env = "CHRONICLE_MASTER_KEY", global = true, hide_env_values = true)]
    pub master_key: Option<String>,
    /// PEM file of CA certificates trusted besides the system's (a private CA) by every
    /// outbound TLS connection: PostgreSQL, SMTP, webhooks and providers (`SSL_CERT_FILE`
    /// replaces the system's roots)
    #[arg(long, env = "CHRONICLE_TLS_CA_FILE", global = true)]
    pub tls_ca_file: Option<PathBuf>,
}

/// What `serve`, `demo` and `config` share: where to listen, the server's limits and where
/// campaigns deliver.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7070]
    #[arg(long, env = "CHRONICLE_LISTEN")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub automation: AutomationArgs,
}

/// How the server limits its clients, for `serve` and `demo`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Requests per second each API key may make (twice that in a burst); 0: no limit
    #[arg(long, env = "CHRONICLE_RATE_LIMIT", default_value_t = 1000)]
    pub rate_limit: u64,
    /// Ingest requests per second each write key may make (twice that in a burst; Segment
    /// batches count once); 0: no limit
    #[arg(long, env = "CHRONICLE_INGEST_RATE_LIMIT", default_value_t = 10_000)]
    pub ingest_rate_limit: u64,
    /// Ingest requests per second each client address may make (twice that in a burst),
    /// checked before the key is looked at; 0: no limit
    #[arg(long, env = "CHRONICLE_INGEST_RATE_LIMIT_PER_ADDRESS", default_value_t = 2_000)]
    pub ingest_rate_limit_per_address: u64,
    /// Connections open at once; more are answered 503 (kept under the open-files limit)
    #[arg(long, env = "CHRONICLE_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Require `Authorization: Bearer TOKEN` on GET /metrics (it counts customers and
    /// tenants across the instance) [default: open, for a scraper on a private network]
    #[arg(long, env = "CHRONICLE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// A web origin (scheme://host[:port]) whose pages may send events from the browser
    /// (CORS on the Segment routes); repeatable; each tenant can add its own (PUT
    /// /v1/settings/cors)
    #[arg(long = "cors-origin", env = "CHRONICLE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key) [default: plain HTTP, for
    /// a TLS-terminating proxy in front]
    #[arg(long, env = "CHRONICLE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, env = "CHRONICLE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ServerArgs {
    pub fn serve_options(&self) -> anyhow::Result<chronicle_server::ServeOptions> {
        for o in &self.cors_origin {
            chronicle_server::http::cors::check_origin(o.trim_end_matches('/')).map_err(|e| anyhow::anyhow!("--cors-origin: {e}"))?;
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(std::sync::Arc::new(chronicle_tls::server_config(cert, key).context("--tls-cert / --tls-key")?)),
            _ => None,
        };
        Ok(chronicle_server::ServeOptions {
            max_connections: self.max_connections.max(1),
            metrics_token: self.metrics_token.clone().filter(|t| !t.trim().is_empty()),
            tls,
            cors_origins: self.cors_origin.clone(),
            ..Default::default()
        })
    }
}

/// Where campaigns deliver, for `serve` and `demo`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AutomationArgs {
    /// SMTP server for e-mail, smtp://[user:pass@]host:port (plain SMTP: a local relay or sink)
    #[arg(long, env = "CHRONICLE_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// The From: address of e-mail
    #[arg(long, env = "CHRONICLE_MAIL_FROM", default_value = "chronicle@localhost")]
    pub mail_from: String,
    /// Let campaigns' webhook steps reach loopback, private and link-local addresses (refused
    /// by default: a tenant could otherwise make the server post to internal services); for
    /// tests and single-host setups
    #[arg(long, env = "CHRONICLE_ALLOW_PRIVATE_WEBHOOKS")]
    pub allow_private_webhooks: bool,
    /// HMAC-SHA256 key that signs webhooks: Standard Webhooks' `whsec_<base64>`, or any text
    /// [default: a random one per process]
    #[arg(long, env = "CHRONICLE_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Where recipients reach this server (https://crm.example.com): marketing mail then
    /// carries a one-click unsubscribe link (List-Unsubscribe, RFC 8058) built on it
    #[arg(long, env = "CHRONICLE_PUBLIC_URL", requires = "unsubscribe_secret")]
    pub public_url: Option<String>,
    /// The key unsubscribe links are signed with; give every node the same one
    #[arg(long, env = "CHRONICLE_UNSUBSCRIBE_SECRET", hide_env_values = true)]
    pub unsubscribe_secret: Option<String>,
    /// The SMS provider's webhook (JSON POST, signed like every webhook)
    #[arg(long, env = "CHRONICLE_SMS_WEBHOOK_URL")]
    pub sms_webhook_url: Option<String>,
    /// The push provider's webhook
    #[arg(long, env = "CHRONICLE_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    /// First retry delay of a failed delivery in milliseconds (doubling, with jitter)
    #[arg(long, env = "CHRONICLE_RETRY_BASE_MS", default_value_t = 2000)]
    pub retry_base_ms: u64,
    /// Attempts before a message goes to the dead-letter queue
    #[arg(long, env = "CHRONICLE_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// How often campaigns triggered by an absence (inactive_for, deal_stuck_for) look for
    /// whom they apply to, in milliseconds
    #[arg(long, env = "CHRONICLE_SCAN_EVERY_MS", default_value_t = 60_000)]
    pub scan_every_ms: u64,
    /// SendGrid's Event Webhook verification key (base64, as SendGrid shows it); without it
    /// delivery feedback is refused
    #[arg(long, env = "CHRONICLE_SENDGRID_PUBLIC_KEY")]
    pub sendgrid_public_key: Option<String>,
    /// Folder of campaigns and templates to load at start: TENANT/templates/NAME.json and
    /// TENANT/campaigns/NAME.json
    #[arg(long, env = "CHRONICLE_CAMPAIGNS")]
    pub campaigns: Option<PathBuf>,
}

impl AutomationArgs {
    /// Where tenants' webhooks may go.
    pub fn webhook_targets(&self) -> chronicle_app::targets::WebhookTargets {
        use chronicle_app::targets::WebhookTargets;
        if self.allow_private_webhooks { WebhookTargets::AllowPrivate } else { WebhookTargets::PublicOnly }
    }

    pub fn engine_config(&self) -> chronicle_app::automation::EngineConfig {
        use chronicle_app::automation::{delivery::DeliveryConfig, EngineConfig};
        let secret = self.webhook_secret.clone().unwrap_or_else(|| {
            tracing::warn!("no --webhook-secret: webhooks are signed with a random key that changes on restart");
            let mut b = [0u8; 32];
            let _ = getrandom::fill(&mut b);
            b.iter().map(|x| format!("{x:02x}")).collect()
        });
        EngineConfig {
            delivery: DeliveryConfig {
                smtp_url: self.smtp_url.clone(),
                mail_from: self.mail_from.clone(),
                sms_webhook_url: self.sms_webhook_url.clone(),
                push_webhook_url: self.push_webhook_url.clone(),
                webhook_secret: secret,
                unsubscribe: match (&self.public_url, &self.unsubscribe_secret) {
                    (Some(url), Some(secret)) => Some(chronicle_app::automation::unsubscribe::Links::new(url, secret)),
                    _ => None,
                },
            },
            retry_base: std::time::Duration::from_millis(self.retry_base_ms.max(1)),
            max_attempts: self.max_attempts.max(1),
            scan_every: std::time::Duration::from_millis(self.scan_every_ms.max(10)),
            ..EngineConfig::default()
        }
    }
}

#[derive(Default, Debug)]
struct FileConfig {
    data: Option<PathBuf>,
    listen: Option<String>,
    database_url: Option<String>,
}

/// The resolved configuration: where the events live, and where to listen.
#[derive(Debug, Clone)]
pub struct Config {
    pub storage: chronicle_app::storage::StorageConfig,
    pub listen: SocketAddr,
}

impl Config {
    /// The storage part, for a command that opens it (`create`: it may make the data folder).
    pub fn storage(&self) -> chronicle_app::storage::StorageConfig {
        self.storage.clone()
    }

    /// The running system's configuration: storage and listener from here, limits and
    /// automation from their flags.
    pub fn application(&self, server: &ServerArgs, automation: &AutomationArgs) -> anyhow::Result<chronicle_server::application::Config> {
        if let Some(url) = &automation.public_url {
            anyhow::ensure!(url.starts_with("https://") || url.starts_with("http://"), "--public-url {url:?}: an http(s) URL");
        }
        let mut engine = automation.engine_config();
        if let Some(k) = &automation.sendgrid_public_key {
            engine.sendgrid_key =
                Some(chronicle_app::automation::feedback::parse_public_key(k).context("--sendgrid-public-key")?);
        }
        Ok(chronicle_server::application::Config {
            serve: server.serve_options()?,
            limits: chronicle_server::application::Limits {
                per_key: server.rate_limit,
                ingest_per_key: server.ingest_rate_limit,
                ingest_per_address: server.ingest_rate_limit_per_address,
            },
            engine,
            webhook_targets: automation.webhook_targets(),
            campaigns: automation.campaigns.clone(),
            ..chronicle_server::application::Config::new(
                chronicle_app::storage::StorageConfig { create: true, ..self.storage() },
                self.listen,
            )
        })
    }

    pub fn resolve(args: &StorageArgs, listen: Option<&str>) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let data = args.data.clone().or(file.data).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
        let listen_s = listen.map(str::to_owned).or(file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen = listen_s.parse().with_context(|| format!("invalid listen address {listen_s:?} (want IP:PORT)"))?;
        Ok(Config {
            storage: chronicle_app::storage::StorageConfig {
                data,
                database_url: args.database_url.clone().or(file.database_url),
                database_schema: args.database_schema.clone().unwrap_or_else(|| "chronicle".into()),
                seal: args.seal,
                master_key_file: args.master_key_file.clone(),
                master_key: args.master_key.clone(),
                create: false,
            },
            listen,
        })
    }
}

fn read_file(p: &Path) -> anyhow::Result<FileConfig> {
    let table = read_table(p)?;
    if let Some(key) = table.keys().find(|k| !FILE_KEYS.iter().any(|(f, _)| f == k)) {
        anyhow::bail!("unknown setting {key:?} in {}", p.display());
    }
    let text = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(FileConfig { data: text("data").map(PathBuf::from), listen: text("listen"), database_url: text("database_url") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_file_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "data = \"/from/file\"\nlisten = \"127.0.0.1:9000\"\n").unwrap();
        let mut args = StorageArgs { config: Some(f.clone()), ..Default::default() };
        let c = Config::resolve(&args, None).unwrap();
        assert_eq!((c.storage.data, c.listen.port()), (PathBuf::from("/from/file"), 9000));
        args.data = Some("/from/flag".into());
        let c = Config::resolve(&args, Some("127.0.0.1:9001")).unwrap();
        assert_eq!((c.storage.data, c.listen.port()), (PathBuf::from("/from/flag"), 9001));
        let c = Config::resolve(&StorageArgs::default(), None).unwrap();
        assert_eq!((c.storage.data, c.listen.to_string()), (PathBuf::from(DEFAULT_DATA), DEFAULT_LISTEN.to_owned()));
        std::fs::write(&f, "colour = \"blue\"\n").unwrap();
        assert!(Config::resolve(&StorageArgs { config: Some(f), ..Default::default() }, None).is_err());
        assert!(Config::resolve(&StorageArgs::default(), Some("nonsense")).is_err());
    }
}
