//! The HTTP API (axum): the route table, authentication, and the handlers. Every route is
//! declared once in [`routes`], with its documentation; the router and `/openapi.json` are both
//! built from that table, so they cannot drift apart.

mod campaigns;
mod cloudevents;
mod customers;

pub use chronicle_app::profile::profile_json;
mod deals;
pub mod codes;
pub mod error;
mod log;
mod segment;
pub mod serve;
mod system;
mod webhooks;

use chronicle_app::app::App;
use chronicle_app::automation::Engine;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::routing::MethodRouter;
use axum::response::IntoResponse;
use axum::Router;
use chronicle_projections::{KeyKind, Role};
use error::ApiError;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Largest request body accepted (bytes); bigger ones get 413.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a client may take to send a request's body before it is answered 408.
pub const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a request may take before it is answered 503 `timeout`.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One documented route.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    /// Whether it takes `Authorization: Bearer <api_key>`.
    pub auth: bool,
    /// Query parameters, documented as strings.
    pub query: &'static [&'static str],
    /// An example request body, if it takes one.
    pub body: Option<&'static str>,
    /// The success status.
    pub ok: u16,
    /// The least a key must be allowed to call it (reads: reader; changes: writer).
    pub role: Role,
}

const fn r(method: &'static str, path: &'static str, summary: &'static str, ok: u16) -> Route {
    let role = if matches!(method.as_bytes(), b"get") { Role::Reader } else { Role::Writer };
    Route { method, path, summary, auth: true, query: &[], body: None, ok, role }
}

/// The role a route requires, put on its requests for [`Principal`] to check.
#[derive(Clone, Copy)]
struct RequiredRole(Role);

impl Route {
    const fn open(mut self) -> Self {
        self.auth = false;
        self
    }
    const fn query(mut self, q: &'static [&'static str]) -> Self {
        self.query = q;
        self
    }
    const fn body(mut self, example: &'static str) -> Self {
        self.body = Some(example);
        self
    }
    const fn admin(mut self) -> Self {
        self.role = Role::Admin;
        self
    }
}

/// Every route of the API with its handler.
pub fn routes() -> Vec<(Route, MethodRouter<Api>)> {
    use axum::routing::{delete, get, patch, post, put};
    vec![
        (r("get", "/healthz", "Liveness and the log's head position", 200).open(), get(system::healthz)),
        (r("get", "/metrics", "Prometheus metrics", 200).open(), get(system::metrics)),
        (r("get", "/openapi.json", "This document", 200).open(), get(system::openapi)),
        (
            r("post", "/v1/customers", "Register a customer with its consents (one atomic append)", 201).body(customers::CREATE_EXAMPLE),
            post(customers::create),
        ),
        (r("get", "/v1/customers/{id}", "The customer 360 profile, now or as of an instant", 200).query(&["as_of"]), get(customers::get_one)),
        (r("patch", "/v1/customers/{id}", "Change traits, e-mail or phone", 200).body(r#"{"traits":{"plan":"pro"}}"#), patch(customers::patch)),
        (r("delete", "/v1/customers/{id}", "Erase the customer", 200).admin(), delete(customers::erase)),
        (
            r("get", "/v1/customers/{id}/export", "Everything held about the person: profile, events, consents with proofs, messages, enrolments", 200).admin(),
            get(customers::export),
        ),
        (
            r("get", "/v1/customers/{id}/timeline", "The customer's events, oldest first, paged by version", 200).query(&["after", "limit", "as_of", "type"]),
            get(customers::timeline),
        ),
        (r("get", "/v1/customers/{id}/consents", "Current consents and their full history", 200), get(customers::consents)),
        (
            r("post", "/v1/customers/{id}/consents", "Grant or revoke a consent", 201)
                .body(r#"{"channel":"email","purpose":"marketing","granted":true,"source":"signup-form","proof":{"ip":"192.0.2.1"}}"#),
            post(customers::set_consent),
        ),
        (
            r("get", "/v1/consent-check", "May this customer be contacted on this channel for this purpose?", 200).query(&["customer", "channel", "purpose"]),
            get(customers::consent_check),
        ),
        (
            r("post", "/v1/customers/{id}/merge", "Merge a duplicate customer into this one (this one survives)", 200)
                .body(r#"{"from":"c-43"}"#),
            post(customers::merge),
        ),
        (r("post", "/v1/customers/{id}/deactivate", "Deactivate (history kept)", 200).body(r#"{"reason":"left"}"#), post(customers::deactivate)),
        (r("post", "/v1/customers/{id}/reactivate", "Reactivate", 200), post(customers::reactivate)),
        (r("post", "/v1/customers/{id}/tags", "Tag", 200).body(r#"{"tag":"vip"}"#), post(customers::tag)),
        (r("delete", "/v1/customers/{id}/tags/{tag}", "Untag", 200), delete(customers::untag)),
        (r("post", "/v1/customers/{id}/notes", "Add a note", 200).body(r#"{"text":"Called; wants a demo"}"#), post(customers::note)),
        (r("put", "/v1/customers/{id}/owner", "Assign an owner", 200).body(r#"{"owner":"sam"}"#), put(customers::owner)),
        (r("put", "/v1/customers/{id}/lifecycle-stage", "Move the lifecycle stage forward", 200).body(r#"{"stage":"mql"}"#), put(customers::stage)),
        (
            r("put", "/v1/customers/{id}/preferences", "Channels, quiet hours, time zone, frequency cap", 200)
                .body(r#"{"preferred_channels":["email"],"quiet_hours":{"start":"22:00","end":"07:00"},"time_zone":"Europe/Lisbon"}"#),
            put(customers::preferences),
        ),
        (
            r("post", "/v1/deals", "Create a deal", 201).body(r#"{"name":"Acme renewal","customer_id":"c1","amount":120000,"currency":"EUR"}"#),
            post(deals::create),
        ),
        (r("get", "/v1/deals/{id}", "A deal", 200), get(deals::get_one)),
        (r("patch", "/v1/deals/{id}", "Move stage, change amount or owner", 200).body(r#"{"stage":"proposal"}"#), patch(deals::patch)),
        (r("post", "/v1/deals/{id}/won", "Mark won (needs an amount)", 200), post(deals::won)),
        (r("post", "/v1/deals/{id}/lost", "Mark lost", 200).body(r#"{"reason":"budget"}"#), post(deals::lost)),
        (r("get", "/v1/pipeline", "The deal pipeline by stage", 200), get(deals::pipeline)),
        (r("get", "/v1/orders/{id}", "An order (driven by Segment e-commerce events)", 200), get(deals::order)),
        (
            r("post", "/v1/batch", "Segment batch (write key as HTTP Basic user or writeKey)", 200).open().body(
                r#"{"batch":[{"type":"identify","userId":"u1","traits":{"email":"ada@example.com"},"messageId":"m1"},{"type":"track","userId":"u1","event":"Product Added","properties":{"sku":"a"},"messageId":"m2"}]}"#
            ),
            post(segment::batch),
        ),
        (r("post", "/v1/identify", "Segment identify (write key)", 200).open().body(r#"{"userId":"u1","traits":{"plan":"pro"}}"#), post(segment::identify)),
        (r("post", "/v1/track", "Segment track (write key)", 200).open().body(r#"{"userId":"u1","event":"Order Completed","properties":{"total":30}}"#), post(segment::track)),
        (r("post", "/v1/page", "Segment page (write key)", 200).open().body(r#"{"anonymousId":"a1","name":"Pricing"}"#), post(segment::page)),
        (r("post", "/v1/alias", "Segment alias: link previousId to userId (write key)", 200).open().body(r#"{"previousId":"a1","userId":"u1"}"#), post(segment::alias)),
        (r("post", "/v1/group", "Segment group: the customer belongs to an account (write key)", 200).open().body(r#"{"userId":"u1","groupId":"acme","traits":{"name":"Acme"}}"#), post(segment::group)),
        (r("post", "/v1/screen", "Segment screen (write key)", 200).open().body(r#"{"userId":"u1","name":"Dashboard"}"#), post(segment::screen)),
        (
            r("post", "/v1/cloudevents", "CloudEvents 1.0: structured, batch or binary mode (write key or API key)", 200)
                .open()
                .body(r#"{"specversion":"1.0","id":"e-1","source":"/billing","type":"com.example.invoice.paid","subject":"c-42","time":"2026-11-01T10:00:00Z","data":{"amount":4990}}"#),
            post(cloudevents::receive),
        ),
        (r("get", "/v1/campaigns", "Campaigns in force, with their counters", 200), get(campaigns::list)),
        (r("put", "/v1/campaigns/{name}", "Create or replace a campaign (checked whole)", 200).body(campaigns::CAMPAIGN_EXAMPLE), put(campaigns::put)),
        (r("get", "/v1/campaigns/{name}", "A campaign's definition and counters", 200), get(campaigns::get_one)),
        (r("delete", "/v1/campaigns/{name}", "Stop a campaign (running enrolments exit)", 200), delete(campaigns::delete)),
        (r("get", "/v1/campaigns/{name}/stats", "Enrolled, in progress, exited, converted, sent, suppressed", 200), get(campaigns::get_stats)),
        (
            r("put", "/v1/templates/{name}", "Create or replace a message template", 200)
                .body(r#"{"subject":"Welcome, {{ traits.first_name }}","body":"<p>Hello {{ traits.first_name }}!</p>"}"#),
            put(campaigns::put_template),
        ),
        (r("get", "/v1/templates/{name}", "A message template", 200), get(campaigns::get_template)),
        (r("delete", "/v1/templates/{name}", "Delete a template no campaign sends", 200), delete(campaigns::delete_template)),
        (r("get", "/v1/dead-letters", "Messages that failed every attempt", 200), get(campaigns::dead_letters)),
        (r("post", "/v1/dead-letters/{id}/retry", "Send a dead letter back to the outbox", 200), post(campaigns::retry)),
        (r("get", "/v1/automation/parked", "Campaign reactions to events that kept failing, waiting for a retry", 200), get(campaigns::parked)),
        (r("post", "/v1/automation/parked/{position}/retry", "Retry a parked campaign reaction now", 200), post(campaigns::retry_parked)),
        (
            r("post", "/v1/webhooks/sendgrid", "SendGrid Event Webhook: delivery feedback, ECDSA-signed (write key as Basic user or ?key=)", 200)
                .open()
                .query(&["key"])
                .body(r#"[{"email":"ada@example.com","event":"open","sg_event_id":"ev-1","timestamp":1764000000}]"#),
            post(webhooks::sendgrid),
        ),
        (
            r("get", "/v1/audit", "Who read or changed a customer's data through the API, and when", 200).query(&["customer"]).admin(),
            get(customers::audit),
        ),
        (
            r("post", "/v1/api-keys", "Make a key with a role (admin, writer, reader, ingest); the key is shown once", 201)
                .admin()
                .body(r#"{"role":"reader","name":"dashboard"}"#),
            post(system::create_key),
        ),
        (r("get", "/v1/api-keys", "The tenant's keys (never the keys themselves)", 200).admin(), get(system::list_keys)),
        (r("delete", "/v1/api-keys/{id}", "Revoke a key", 200).admin(), delete(system::revoke_key)),
        (r("get", "/v1/settings/sendgrid", "The tenant's own SendGrid verification key, if it set one", 200).admin(), get(webhooks::get_sendgrid_key)),
        (
            r("put", "/v1/settings/sendgrid", "Verify this tenant's SendGrid feedback with its own key (instead of the instance's)", 200)
                .admin()
                .body(r#"{"public_key":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE..."}"#),
            put(webhooks::set_sendgrid_key),
        ),
        (r("delete", "/v1/settings/sendgrid", "Go back to the instance's SendGrid key", 200).admin(), delete(webhooks::remove_sendgrid_key)),
        (r("get", "/v1/retention", "Retention policies (days kept per event type) and the latest compactions", 200), get(system::retention)),
        (
            r("put", "/v1/retention/{event_type}", "Keep events of this type this many days; `chronicle compact` removes older ones", 200)
                .admin()
                .body(r#"{"keep_days":365}"#),
            put(system::set_retention),
        ),
        (r("delete", "/v1/retention/{event_type}", "Keep events of this type forever again", 200).admin(), delete(system::remove_retention)),
        (r("get", "/v1/events", "The tenant's events in commit order", 200).query(&["after", "limit"]), get(log::events)),
        (r("get", "/v1/events/stream", "Live events as server-sent events (catch-up, then follow)", 200).query(&["after"]), get(log::stream_live)),
        (r("get", "/v1/streams/{stream}", "Read a stream forward", 200).query(&["after", "limit"]), get(log::read_stream)),
        (
            r("post", "/v1/streams/{stream}", "Append to a stream with an expected version", 200)
                .body(r#"{"expected_version":"no_stream","events":[{"type":"TicketOpened","data":{"subject":"Login fails"}}]}"#),
            post(log::append),
        ),
    ]
}

/// What the handlers work on: the application, and the automation engine beside it (parked
/// reactions, retries, its gate and provider keys). A handler takes either as its `State`.
#[derive(Clone)]
pub struct Api {
    pub app: Arc<App>,
    pub engine: Arc<Engine>,
}

impl axum::extract::FromRef<Api> for Arc<App> {
    fn from_ref(api: &Api) -> Self {
        api.app.clone()
    }
}

impl axum::extract::FromRef<Api> for Arc<Engine> {
    fn from_ref(api: &Api) -> Self {
        api.engine.clone()
    }
}

/// The API's router, with its state.
pub fn router(api: Api) -> Router {
    router_with(api, &serve::ServeOptions::default())
}

/// What the handlers need to know of how the server was started.
#[derive(Clone, Default)]
pub(crate) struct Options {
    pub metrics_token: Option<Arc<str>>,
}

/// [`router`] with the server's options (the metrics token).
pub fn router_with(api: Api, options: &serve::ServeOptions) -> Router {
    let options = Options { metrics_token: options.metrics_token.as_deref().map(Arc::from) };
    let mut router = Router::new();
    for (route, handler) in routes() {
        router = router.route(route.path, handler.layer(axum::Extension(RequiredRole(route.role))));
    }
    router
        .fallback(|| async { ApiError::of(crate::http::codes::Code::NotFound, "no such route") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(api.app.clone(), count_requests))
        .layer(axum::Extension(options))
        .with_state(api)
}

async fn count_requests(
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
            Err(_) => ApiError::of(crate::http::codes::Code::Timeout, "the request took too long; it may or may not have taken effect (retry with the same ids)").into_response(),
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
    app.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
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

/// The routes that take events with a write key, limited per client address and per key.
const INGEST_ROUTES: &[&str] = &[
    "/v1/batch",
    "/v1/identify",
    "/v1/track",
    "/v1/page",
    "/v1/alias",
    "/v1/group",
    "/v1/screen",
    "/v1/cloudevents",
    "/v1/webhooks/sendgrid",
];

/// A `429 rate_limited` answer with `Retry-After`.
pub(crate) fn rate_limited(wait: u64, message: &str) -> ApiError {
    let mut e = ApiError::of(crate::http::codes::Code::RateLimited, format!("{message}; retry in {wait} s"));
    e.extra = Some(serde_json::json!({"retry_after_seconds": wait}));
    e
}

/// The request with its body read into memory: at most [`MAX_BODY`] bytes (else 413), within
/// [`BODY_TIMEOUT`] (else 408).
async fn read_body(req: axum::extract::Request) -> Result<axum::extract::Request, ApiError> {
    use futures_util::StreamExt;
    let too_large = || ApiError::of(crate::http::codes::Code::TooLarge, format!("the request body is over {MAX_BODY} bytes"));
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
            let chunk = chunk.map_err(|e| ApiError::of(crate::http::codes::Code::BadRequest, format!("reading the body: {e}")))?;
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
        Err(_) => Err(ApiError::of(crate::http::codes::Code::BodyTimeout,
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

/// What the request's `Authorization: Bearer` key is — its record and the actor it is recorded
/// as — authenticated once per request by the request layer; `None` without such a key or for
/// an unknown or revoked one.
#[derive(Clone, Debug)]
pub(crate) struct Authenticated(pub Option<(chronicle_projections::KeyRecord, String)>);

/// The bearer key of `headers`, if any.
fn bearer_key(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn authenticate_bearer(app: &App, headers: &axum::http::HeaderMap) -> Authenticated {
    Authenticated(bearer_key(headers).and_then(|k| Some((app.authenticate(k)?, format!("key:{}", &chronicle_app::keys::digest(k)[..12])))))
}

impl Authenticated {
    /// The request's authentication, from the request layer (or done now, when the layer did
    /// not run).
    pub(crate) fn of(app: &App, extensions: &axum::http::Extensions, headers: &axum::http::HeaderMap) -> Authenticated {
        extensions.get::<Authenticated>().cloned().unwrap_or_else(|| authenticate_bearer(app, headers))
    }
}

/// The caller, authenticated by `Authorization: Bearer <api_key>`.
pub struct Principal {
    pub tenant: String,
    /// Recorded on the events the caller causes: `key:` and a prefix of the key's digest.
    pub actor: String,
}

impl FromRequestParts<Api> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Self, Self::Rejection> {
        let app = &api.app;
        let unauthorized = |m: &str| ApiError::of(crate::http::codes::Code::Unauthorized, m);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing Authorization: Bearer <api_key>"))?;
        header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("expected Authorization: Bearer <api_key>"))?;
        let (rec, actor) = match Authenticated::of(app, &parts.extensions, &parts.headers).0 {
            Some((rec, actor)) if rec.kind == KeyKind::Api => (rec, actor),
            Some(_) => {
                return Err(ApiError::of(crate::http::codes::Code::Forbidden, "a write key may only ingest; use an API key"))
            }
            None => return Err(unauthorized("unknown or revoked API key")),
        };
        let needed = parts.extensions.get::<RequiredRole>().map_or(Role::Admin, |r| r.0);
        if rec.role == Role::Ingest || rec.role < needed {
            let msg = format!("this key's role ({:?}) may not do this; it needs {:?}", rec.role, needed).to_lowercase();
            return Err(ApiError::of(crate::http::codes::Code::Forbidden, msg));
        }
        if let Err(wait) = app.rate_check(&actor) {
            let mut e = ApiError::of(crate::http::codes::Code::RateLimited, format!("too many requests for this key; retry in {wait} s"));
            e.extra = Some(serde_json::json!({"retry_after_seconds": wait}));
            return Err(e);
        }
        Ok(Principal { tenant: rec.tenant, actor })
    }
}

pub(crate) fn clamp_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(100).clamp(1, 1000)
}
