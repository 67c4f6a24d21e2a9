//! The request layer every route runs under: ingest's per-address budget, the body read whole
//! within its size and time limits, the Bearer key authenticated once, the access audit noted,
//! read-your-writes across nodes, the request time limit, and the request counters.

use super::auth::{authenticate_bearer, Authenticated};
use super::codes::Code;
use super::error::{rate_limited, ApiError};
use axum::response::IntoResponse;
use chronicle_app::App;
use chronicle_projections::KeyKind;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest request body accepted (bytes); bigger ones get 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a client may take to send a request's body before it is answered 408.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request may take before it is answered 503 `timeout`.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) async fn count_requests(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let has_body = req.headers().contains_key(axum::http::header::TRANSFER_ENCODING)
        || req.headers().get(axum::http::header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() != b"0");
    // The route's template, not the path: ids in paths may be personal (an e-mail as user id).
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let started = std::time::Instant::now();
    // Ingest is open to the world (write keys sit in web pages): each client address has a
    // budget, checked before anything else is done for the request.
    if INGEST_ROUTES.contains(&route.as_str()) {
        let address = req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
        if let Err(wait) = app.ingest_rate_check(None, address) {
            app.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
            app.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
            app.metrics.labelled.request(&route, method.as_str(), 429, started.elapsed());
            return rate_limited(wait, "too many ingest requests from this address").into_response();
        }
    }
    // The body is read whole first, within its own time limit: a client that trickles it in
    // holds a connection for seconds, not for as long as it likes.
    let mut req = if has_body {
        match read_body(req).await {
            Ok(req) => req,
            Err(e) => {
                app.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
                app.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
                let mut res = e.into_response();
                res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
                return res;
            }
        }
    } else {
        req
    };
    // The Bearer key is authenticated here, once per request; the extractors read the result.
    let auth = authenticate_bearer(&app, req.headers());
    req.extensions_mut().insert(auth.clone());
    let audited = audit_subject(&auth, &app, &req, &route);
    // Read-your-writes across nodes: the answer reflects everything committed, on any node
    // over the same database, before the request came (one query per request on PostgreSQL;
    // nothing on a store only this process writes).
    let synced_app = app.clone();
    let handle = async move {
        match synced_app.store().sync().await {
            Ok(_) => next.run(req).await,
            Err(e) => ApiError::from(chronicle_app::error::AppError::from(e)).into_response(),
        }
    };
    // Every request but the live stream gets an answer within the time limit.
    let res = if route == "/v1/events/stream" {
        handle.await
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, handle).await {
            Ok(res) => res,
            Err(_) => ApiError::of(Code::Timeout, "the request took too long; it may or may not have taken effect (retry with the same ids)").into_response(),
        }
    };
    if let Some((tenant, actor, customer)) = audited {
        let status = res.status().as_u16();
        // Attempts that got through authentication, whatever their outcome.
        if status != 401 {
            let action = if method == axum::http::Method::GET { "read" } else { "change" };
            let entry = chronicle_projections::AuditEntry {
                at: app.now(),
                actor,
                action: action.into(),
                method: method.to_string(),
                route: route.clone(),
                customer,
                status,
            };
            app.audit.note(&tenant, entry);
        }
    }
    let res = json_error_shape(res).await;
    app.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
    app.metrics.labelled.request(&route, method.as_str(), res.status().as_u16(), started.elapsed());
    if res.status().is_server_error() || res.status().is_client_error() {
        app.metrics.http_errors.fetch_add(1, Ordering::Relaxed);
    }
    // A request refused before its body was read leaves the body unread, and the server then
    // closes the connection after answering; saying so keeps a client from reusing that
    // connection for its next request (which would fail with a reset).
    let mut res = res;
    if has_body && (res.status().is_client_error() || res.status().is_server_error()) {
        res.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    // Bodies, paths and keys are never logged.
    tracing::debug!(%method, %route, status = res.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    res
}

/// One error shape everywhere: an error answered below the handlers in another form (axum's
/// plain-text rejection of a path segment that is not a number, say) is given the JSON shape,
/// with the code of its status and its text as the message. The web UI's pages are HTML, their
/// errors too.
async fn json_error_shape(res: axum::response::Response) -> axum::response::Response {
    let status = res.status();
    let kind = res.headers().get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let is_json = kind.starts_with("application/json");
    if is_json || kind.starts_with("text/html") || !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let (parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.map(|b| String::from_utf8_lossy(&b).trim().to_owned()).unwrap_or_default();
    let code = crate::http::codes::Code::for_status(status);
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let mut json = ApiError::of(code, message).into_response();
    // The status stays what it was (a code's class may differ), and so do headers such as
    // `Allow` or `Retry-After`.
    *json.status_mut() = status;
    for (name, value) in parts.headers.iter() {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

/// Whether a web page's tracking posts to this route (Segment's, long and short paths): the
/// ingest routes but CloudEvents and SendGrid's feedback, which servers send. CORS applies.
pub(crate) fn is_browser_route(path: &str) -> bool {
    INGEST_ROUTES.contains(&path) && !matches!(path, "/v1/cloudevents" | "/v1/webhooks/sendgrid")
}

/// The routes that take events with a write key, limited per client address and per key.
pub(crate) const INGEST_ROUTES: &[&str] = &[
    "/v1/batch",
    "/v1/identify",
    "/v1/track",
    "/v1/page",
    "/v1/alias",
    "/v1/group",
    "/v1/screen",
    "/v1/t",
    "/v1/p",
    "/v1/i",
    "/v1/g",
    "/v1/a",
    "/v1/s",
    "/v1/cloudevents",
    "/v1/webhooks/sendgrid",
];


/// The request with its body read into memory: at most [`MAX_BODY`] bytes (else 413), within
/// [`BODY_TIMEOUT`] (else 408).
async fn read_body(req: axum::extract::Request) -> Result<axum::extract::Request, ApiError> {
    use futures_util::StreamExt;
    let too_large = || ApiError::of(Code::TooLarge, format!("the request body is over {MAX_BODY} bytes"));
    let declared = req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let read = async {
        let mut data = body.into_data_stream();
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            drain(&mut data).await;
            return Err(too_large());
        }
        let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| ApiError::of(Code::BadRequest, format!("reading the body: {e}")))?;
            if buf.len() + chunk.len() > MAX_BODY {
                drain(&mut data).await;
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(buf)) => Ok(axum::extract::Request::from_parts(parts, axum::body::Body::from(buf))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::of(Code::BodyTimeout,
            format!("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// Reads and drops what is left of an over-size body, up to [`DRAIN_MAX`] bytes (within the
/// caller's time limit), so that a client still sending sees the `413` instead of a reset
/// connection; past that the connection is simply closed.
async fn drain(data: &mut axum::body::BodyDataStream) {
    use futures_util::StreamExt;
    let mut seen = 0usize;
    while seen < DRAIN_MAX {
        match data.next().await {
            Some(Ok(chunk)) => seen += chunk.len(),
            _ => break,
        }
    }
}

/// How much of an over-size body is read and dropped before answering `413`.
const DRAIN_MAX: usize = 8 * MAX_BODY;

/// Whether a request touches a customer's data: its tenant, the caller and the customer.
fn audit_subject(auth: &Authenticated, app: &App, req: &axum::extract::Request, route: &str) -> Option<(String, String, String)> {
    let customer = chronicle_app::audit::customer_of(route, req.uri().path(), req.uri().query())?;
    let (rec, actor) = auth.0.as_ref().filter(|(r, _)| r.kind == KeyKind::Api)?;
    // As stored: an id that is personal data is on the audit trail as its pseudonym.
    Some((rec.tenant.clone(), actor.clone(), app.pseudonyms.id(&customer).into_owned()))
}

