//! Connecting to PostgreSQL with libpq's `sslmode`, which tokio-postgres reads only in part
//! (it knows `disable`, `prefer` and `require`, and refuses a URL with `verify-ca`,
//! `verify-full` or `sslrootcert`). So the URL's TLS settings are taken out here and applied
//! with rustls; the rest of the URL is tokio-postgres's.
//!
//! | `sslmode` | encrypted | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default, as libpq's) | when the server offers it | not checked |
//! | `require` | always | not checked (checked as `verify-ca` when `sslrootcert` is given, as libpq does) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and naming the host |
//!
//! Trusted CAs: those of `sslrootcert` when the URL names a file, else the process's trust
//! (the system's roots and `--tls-ca-file`, see the crate's docs).

use crate::{client_config, read_pem, root_store, trust, TlsError, Verify};
use std::str::FromStr;
use std::sync::Arc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connection task of a client made by [`connect`] (to be spawned).
pub type Connection = tokio_postgres::Connection<Socket, <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream>;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Why a PostgreSQL connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PgConnectError {
    #[error("the database URL: {0}")]
    Url(String),
    #[error("the database URL's sslrootcert: {0}")]
    RootCert(#[source] TlsError),
    #[error("{}", connect_message(.0))]
    Connect(#[source] tokio_postgres::Error),
}

/// tokio-postgres says "error performing TLS handshake" and leaves the reason to its source.
fn connect_message(e: &tokio_postgres::Error) -> String {
    match crate::tls_reason(e) {
        Some(reason) => format!("{e}: {reason}"),
        None => e.to_string(),
    }
}

/// A database URL with its TLS settings taken apart.
#[derive(Debug)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub root_cert: Option<String>,
}

/// Reads `url` (`postgres://…?sslmode=…&sslrootcert=…`, or libpq's `key=value` form).
pub fn parse(url: &str) -> Result<Target, PgConnectError> {
    let (rest, settings) = take_ssl_settings(url);
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    for (key, value) in settings {
        match key.as_str() {
            "sslmode" => {
                mode = match value.as_str() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(PgConnectError::Url(format!(
                            "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        )))
                    }
                }
            }
            _ => root_cert = Some(value),
        }
    }
    if mode == SslMode::Require && root_cert.is_some() {
        mode = SslMode::VerifyCa;
    }
    let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| PgConnectError::Url(e.to_string()))?;
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok(Target { config, mode, root_cert })
}

/// Connects to `url` as its `sslmode` says.
pub async fn connect(url: &str) -> Result<(Client, Connection), PgConnectError> {
    let target = parse(url)?;
    let roots = match &target.root_cert {
        Some(path) => Arc::new(root_store(&read_pem(path.as_ref()).map_err(PgConnectError::RootCert)?)),
        None => trust().roots(),
    };
    let verify = match target.mode {
        SslMode::VerifyFull => Verify::Full,
        SslMode::VerifyCa => Verify::Chain,
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Verify::Nothing,
    };
    let tls = MakeRustlsConnect::new(client_config(verify, roots).map_err(PgConnectError::RootCert)?);
    target.config.connect(tls).await.map_err(PgConnectError::Connect)
}

/// Splits `sslmode` and `sslrootcert` off a URL, returning the rest and the settings.
fn take_ssl_settings(url: &str) -> (String, Vec<(String, String)>) {
    let is_ssl = |k: &str| k == "sslmode" || k == "sslrootcert";
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), taken) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some((k, v)) if is_ssl(k) => taken.push((k.to_owned(), percent_decode(v))),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        (rest, taken)
    } else {
        // libpq's key=value form (values without quotes or spaces).
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((k, v)) if is_ssl(k.trim()) => taken.push((k.trim().to_owned(), v.trim_matches('\'').to_owned())),
                _ => kept.push(word),
            }
        }
        (kept.join(" "), taken)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_from_either_form() {
        let t = parse("postgres://postgres@127.0.0.1:5432/test?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=3").unwrap();
        assert_eq!((t.mode, t.root_cert.as_deref()), (SslMode::VerifyFull, Some("/tmp/ca.pem")));
        assert_eq!(t.config.get_connect_timeout(), Some(&std::time::Duration::from_secs(3)));
        assert_eq!(t.config.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
        let t = parse("postgres://postgres@127.0.0.1/test").unwrap();
        assert_eq!((t.mode, t.config.get_ssl_mode()), (SslMode::Prefer, tokio_postgres::config::SslMode::Prefer));
        let t = parse("host=127.0.0.1 user=postgres sslmode=disable").unwrap();
        assert_eq!((t.mode, t.config.get_ssl_mode()), (SslMode::Disable, tokio_postgres::config::SslMode::Disable));
        // libpq: require with a root certificate checks the chain.
        assert_eq!(parse("postgres://h/db?sslmode=require&sslrootcert=/ca.pem").unwrap().mode, SslMode::VerifyCa);
        let e = parse("postgres://h/db?sslmode=sometimes").unwrap_err().to_string();
        assert!(e.contains("sslmode \"sometimes\""), "{e}");
    }
}
