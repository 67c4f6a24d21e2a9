//! The listener: accepts connections and serves the router on each over HTTP/1.1, with the
//! limits that keep slow or many clients from exhausting the server — a cap on open
//! connections (one more is answered `503 too_many_connections` and closed), a time limit on
//! reading a request's headers (the connection is closed), and, in the router, one on reading
//! its body (`408`). The cap is kept below the process's file-descriptor limit, so the log, the
//! checkpoint and the key store always have descriptors left however many clients come.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How the listener limits its clients; `Default` is what `chronicle serve` uses.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Connections open at once; more are refused with a `503` (also lowered to fit the
    /// process's file-descriptor limit, see [`effective_max_connections`]).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (also how long an idle
    /// keep-alive connection stays open).
    pub header_timeout: Duration,
    /// When set, `GET /metrics` answers only `Authorization: Bearer <token>` (it counts
    /// customers and tenants across the instance).
    pub metrics_token: Option<String>,
    /// Serve HTTPS with this configuration (`--tls-cert`, `--tls-key`); plain HTTP without.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Web origins allowed to send events from the browser (`--cors-origin`), besides each
    /// tenant's own.
    pub cors_origins: Vec<String>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { max_connections: 1024, header_timeout: Duration::from_secs(10), metrics_token: None, tls: None, cors_origins: Vec::new() }
    }
}

/// Descriptors kept for everything but client connections: the log and its index, the
/// checkpoint and its temporary file, the key store, the database pool, outgoing deliveries.
pub const RESERVED_FDS: u64 = 128;

/// `wanted` connections, lowered so that they and [`RESERVED_FDS`] fit under the process's
/// soft limit on open files.
pub fn effective_max_connections(wanted: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(limit) => wanted.min(limit.saturating_sub(RESERVED_FDS).max(1) as usize),
        None => wanted,
    }
}

/// How long a shutdown waits for open connections to finish their requests (live streams end
/// at once; this bounds a slow request, so the process stops within about ten seconds).
const DRAIN_LIMIT: Duration = Duration::from_secs(8);

/// The answer to a connection over the cap: a whole HTTP response in the API's error shape,
/// its code and status from the error table.
fn refusal() -> &'static [u8] {
    static REFUSAL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    REFUSAL.get_or_init(|| {
        let code = super::codes::Code::TooManyConnections;
        let body = serde_json::json!({"error": {"code": code.as_str(), "message": "the server has too many open connections; retry"}}).to_string();
        let status = code.status();
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
    })
}

/// Serve `router` on `listener` until `shutdown` resolves; in-flight requests finish first.
/// `stopping` is set when the shutdown begins (the router's live streams end on it).
/// One connection's HTTP/1.1, closed gracefully when the server stops.
async fn serve_connection<I, S>(io: I, service: S, header_timeout: Duration, mut stop: tokio::sync::watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming> + Send,
    S::Future: Send + 'static,
    S::ResBody: Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
    let conn = builder.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

pub async fn serve_router(
    router: axum::Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
    stopping: tokio::sync::watch::Sender<bool>,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    let max = effective_max_connections(options.max_connections);
    if max < options.max_connections {
        tracing::warn!(wanted = options.max_connections, max, "the open-files limit lowers the connection cap");
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let stop_rx = stopping.subscribe();
    let mut shutdown = std::pin::pin!(shutdown);
    let service = hyper_util::service::TowerToHyperService::new(router);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors (EMFILE) or a connection reset before it was taken:
                    // wait a moment instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Answered, then the client's request is read and dropped for a moment before the
            // close, so the client is not reset while still sending and sees the answer.
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(refusal()).await?;
                    stream.shutdown().await?;
                    let mut sink = [0u8; 1024];
                    while stream.read(&mut sink).await? > 0 {}
                    Ok::<_, std::io::Error>(())
                })
                .await;
            });
            tracing::debug!(%peer, "connection refused: too many open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        // Each request knows its client's address (ingest is limited per address).
        let inner = service.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            hyper::service::Service::call(&inner, req)
        });
        let stop = stop_rx.clone();
        let header_timeout = options.header_timeout;
        let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(TokioIo::new(stream), service, header_timeout, stop).await,
                // The handshake has the headers' time limit: a client that stalls in it holds a
                // connection no longer than one that stalls in its headers.
                Some(acceptor) => match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(TokioIo::new(tls), service, header_timeout, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    stopping.send_replace(true);
    // Every connection's task holds a permit: all back means all finished. A response that
    // never ends (a live event stream) does not hold the process up past the drain limit.
    if tokio::time::timeout(DRAIN_LIMIT, permits.acquire_many(max as u32)).await.is_err() {
        tracing::warn!("connections still open after the drain limit; stopping anyway");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_refusal_is_a_whole_http_response() {
        let text = std::str::from_utf8(super::refusal()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "too_many_connections");
    }
}
