//! The HTTP API (axum): the route table, authentication, and the handlers. Every route is
//! declared once in [`routes`], with its documentation; the router and `/openapi.json` are both
//! built from that table, so they cannot drift apart.

mod analytics;
mod campaigns;
mod cloudevents;
pub mod cors;
mod customers;

mod deals;
pub mod codes;
pub mod error;
mod log;
mod segment;
mod segments;
mod auth;
mod layer;
mod openapi;
mod route;
mod state;
pub mod serve;
mod system;
mod unsubscribe;
mod webhooks;

use axum::routing::MethodRouter;
use axum::Router;
use error::ApiError;
use route::{r, RequiredRole};
use std::sync::Arc;

pub use auth::Principal;
pub use layer::{BODY_TIMEOUT, MAX_BODY, REQUEST_TIMEOUT};
pub use route::Route;
pub use state::Api;
use state::Options;

/// Every route of the API with its handler.
pub fn routes() -> Vec<(Route, MethodRouter<Api>)> {
    use axum::routing::{delete, get, patch, post, put};
    vec![
        (r("get", "/healthz", "Liveness and the log's head position", 200).open().gives::<system::Health>(), get(system::healthz)),
        (r("get", "/metrics", "Prometheus metrics", 200).open(), get(system::metrics)),
        (r("get", "/openapi.json", "This document", 200).open(), get(openapi::serve)),
        (
            r("post", "/v1/customers", "Register a customer with its consents (one atomic append)", 201).body(customers::CREATE_EXAMPLE).takes::<customers::CreateCustomer>().gives::<chronicle_app::profile::Profile>(),
            post(customers::create),
        ),
        (
            r("get", "/v1/customers", "The contact list: search (q: a prefix of e-mail, first or last name), filters, an order and a cursor", 200)
                .query(&["q", "email", "tag", "stage", "owner", "segment", "status", "sort", "after", "limit"])
                .gives::<customers::CustomerPage>(),
            get(customers::list),
        ),
        (r("get", "/v1/customers/{id}", "The customer 360 profile, now or as of an instant", 200).query(&["as_of"]).gives::<chronicle_app::profile::Profile>(), get(customers::get_one)),
        (r("patch", "/v1/customers/{id}", "Change traits, e-mail or phone", 200).body(r#"{"traits":{"plan":"pro"}}"#).takes::<customers::PatchCustomer>().gives::<chronicle_app::profile::Profile>(), patch(customers::patch)),
        (r("delete", "/v1/customers/{id}", "Erase the customer", 200).admin().gives::<customers::Erased>(), delete(customers::erase)),
        (
            r("get", "/v1/customers/{id}/export", "Everything held about the person: profile, events, consents with proofs, messages, enrolments", 200)
                .admin()
                .gives::<chronicle_app::app::Export>(),
            get(customers::export),
        ),
        (
            r("get", "/v1/customers/{id}/timeline", "The customer's events, oldest first, paged by version", 200).query(&["after", "limit", "as_of", "type"]).gives::<chronicle_app::app::Page>(),
            get(customers::timeline),
        ),
        (r("get", "/v1/customers/{id}/consents", "Current consents and their full history", 200).gives::<chronicle_app::app::ConsentLedger>(), get(customers::consents)),
        (
            r("post", "/v1/customers/{id}/consents", "Grant or revoke a consent", 201)
                .body(r#"{"channel":"email","purpose":"marketing","granted":true,"source":"signup-form","proof":{"ip":"192.0.2.1"}}"#)
                .takes::<chronicle_core::customer::ConsentInput>()
                .gives::<chronicle_app::app::ConsentLedger>(),
            post(customers::set_consent),
        ),
        (
            r("get", "/v1/consent-check", "May this customer be contacted on this channel for this purpose?", 200).query(&["customer", "channel", "purpose"]).gives::<customers::ConsentCheck>(),
            get(customers::consent_check),
        ),
        (
            r("post", "/v1/customers/{id}/merge", "Merge a duplicate customer into this one (this one survives)", 200)
                .body(r#"{"from":"c-43"}"#)
                .takes::<customers::MergeBody>()
                .gives::<chronicle_app::profile::Profile>(),
            post(customers::merge),
        ),
        (r("post", "/v1/customers/{id}/deactivate", "Deactivate (history kept)", 200).body(r#"{"reason":"left"}"#).takes::<customers::Reason>().gives::<chronicle_app::profile::Profile>(), post(customers::deactivate)),
        (r("post", "/v1/customers/{id}/reactivate", "Reactivate", 200).gives::<chronicle_app::profile::Profile>(), post(customers::reactivate)),
        (r("post", "/v1/customers/{id}/tags", "Tag", 200).body(r#"{"tag":"vip"}"#).takes::<customers::TagBody>().gives::<chronicle_app::profile::Profile>(), post(customers::tag)),
        (r("delete", "/v1/customers/{id}/tags/{tag}", "Untag", 200).gives::<chronicle_app::profile::Profile>(), delete(customers::untag)),
        (r("post", "/v1/customers/{id}/notes", "Add a note", 200).body(r#"{"text":"Called; wants a demo"}"#).takes::<customers::NoteBody>().gives::<chronicle_app::profile::Profile>(), post(customers::note)),
        (r("put", "/v1/customers/{id}/owner", "Assign an owner", 200).body(r#"{"owner":"sam"}"#).takes::<customers::OwnerBody>().gives::<chronicle_app::profile::Profile>(), put(customers::owner)),
        (r("put", "/v1/customers/{id}/lifecycle-stage", "Move the lifecycle stage forward", 200).body(r#"{"stage":"mql"}"#).takes::<customers::StageBody>().gives::<chronicle_app::profile::Profile>(), put(customers::stage)),
        (
            r("put", "/v1/customers/{id}/preferences", "Channels, quiet hours, time zone, frequency cap", 200)
                .body(r#"{"preferred_channels":["email"],"quiet_hours":{"start":"22:00","end":"07:00"},"time_zone":"Europe/Lisbon"}"#)
                .takes::<chronicle_core::customer::Preferences>()
                .gives::<chronicle_app::profile::Profile>(),
            put(customers::preferences),
        ),
        (
            r("post", "/v1/deals", "Create a deal", 201)
                .body(r#"{"name":"Acme renewal","customer_id":"c1","amount":120000,"currency":"EUR"}"#)
                .takes::<deals::CreateDeal>()
                .gives::<chronicle_core::deal::Deal>(),
            post(deals::create),
        ),
        (r("get", "/v1/deals", "Deals, by id, filtered by stage, owner, status and customer", 200).query(&["stage", "owner", "status", "customer", "after", "limit"]).gives::<deals::DealPage>(), get(deals::list)),
        (r("get", "/v1/deals/{id}", "A deal", 200).gives::<chronicle_core::deal::Deal>(), get(deals::get_one)),
        (r("patch", "/v1/deals/{id}", "Move stage, change amount or owner", 200).body(r#"{"stage":"proposal"}"#).takes::<deals::PatchDeal>().gives::<chronicle_core::deal::Deal>(), patch(deals::patch)),
        (r("post", "/v1/deals/{id}/won", "Mark won (needs an amount)", 200).gives::<chronicle_core::deal::Deal>(), post(deals::won)),
        (r("post", "/v1/deals/{id}/lost", "Mark lost", 200).body(r#"{"reason":"budget"}"#).takes::<deals::LostBody>().gives::<chronicle_core::deal::Deal>(), post(deals::lost)),
        (r("get", "/v1/pipeline", "The deal pipeline by stage", 200).gives::<chronicle_projections::Pipeline>(), get(deals::pipeline)),
        (r("get", "/v1/orders", "Orders, by id, filtered by status and customer", 200).query(&["status", "customer", "after", "limit"]).gives::<deals::OrderPage>(), get(deals::orders)),
        (r("get", "/v1/orders/{id}", "An order (driven by Segment e-commerce events)", 200).gives::<chronicle_core::order::Order>(), get(deals::order)),
        (
            r("post", "/v1/batch", "Segment batch (write key as HTTP Basic user or writeKey)", 200).open().body(
                r#"{"batch":[{"type":"identify","userId":"u1","traits":{"email":"ada@example.com"},"messageId":"m1"},{"type":"track","userId":"u1","event":"Product Added","properties":{"sku":"a"},"messageId":"m2"}]}"#
            )
            .takes::<segment::Batch>()
            .gives::<segment::Ack>(),
            post(segment::batch),
        ),
        (r("post", "/v1/identify", "Segment identify (write key)", 200).open().body(r#"{"userId":"u1","traits":{"plan":"pro"}}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::identify)),
        (r("post", "/v1/track", "Segment track (write key)", 200).open().body(r#"{"userId":"u1","event":"Order Completed","properties":{"total":30}}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::track)),
        (r("post", "/v1/page", "Segment page (write key)", 200).open().body(r#"{"anonymousId":"a1","name":"Pricing"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::page)),
        (r("post", "/v1/alias", "Segment alias: link previousId to userId (write key)", 200).open().body(r#"{"previousId":"a1","userId":"u1"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::alias)),
        (r("post", "/v1/group", "Segment group: the customer belongs to an account (write key)", 200).open().body(r#"{"userId":"u1","groupId":"acme","traits":{"name":"Acme"}}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::group)),
        (r("post", "/v1/screen", "Segment screen (write key)", 200).open().body(r#"{"userId":"u1","name":"Dashboard"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::screen)),
        // The short paths Segment's browser SDK (analytics.js, @segment/analytics-next) posts
        // to, with a text/plain JSON body and the write key in it.
        (r("post", "/v1/t", "Segment track, the browser SDK's path (write key)", 200).open().body(r#"{"userId":"u1","event":"Signed Up","writeKey":"wk_…"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::track)),
        (r("post", "/v1/p", "Segment page, the browser SDK's path (write key)", 200).open().body(r#"{"anonymousId":"a1","name":"Pricing","writeKey":"wk_…"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::page)),
        (r("post", "/v1/i", "Segment identify, the browser SDK's path (write key)", 200).open().body(r#"{"userId":"u1","traits":{"plan":"pro"},"writeKey":"wk_…"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::identify)),
        (r("post", "/v1/g", "Segment group, the browser SDK's path (write key)", 200).open().body(r#"{"userId":"u1","groupId":"acme","writeKey":"wk_…"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::group)),
        (r("post", "/v1/a", "Segment alias, the browser SDK's path (write key)", 200).open().body(r#"{"previousId":"a1","userId":"u1","writeKey":"wk_…"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::alias)),
        (r("post", "/v1/s", "Segment screen, the browser SDK's path (write key)", 200).open().body(r#"{"userId":"u1","name":"Dashboard","writeKey":"wk_…"}"#).takes::<segment::Call>().gives::<segment::Ack>(), post(segment::screen)),
        (
            r("post", "/v1/cloudevents", "CloudEvents 1.0: structured, batch or binary mode (write key or API key)", 200)
                .open()
                .body(r#"{"specversion":"1.0","id":"e-1","source":"/billing","type":"com.example.invoice.paid","subject":"c-42","time":"2026-11-01T10:00:00Z","data":{"amount":4990}}"#)
                .takes::<cloudevents::Body>()
                .gives::<cloudevents::Accepted>(),
            post(cloudevents::receive),
        ),
        (r("get", "/v1/campaigns", "Campaigns in force, with their counters", 200).gives::<campaigns::CampaignList>(), get(campaigns::list)),
        (
            r("put", "/v1/campaigns/{name}", "Create or replace a campaign (checked whole)", 200)
                .body(campaigns::CAMPAIGN_EXAMPLE)
                .takes::<chronicle_automation::campaign::Definition>()
                .gives::<campaigns::Saved>(),
            put(campaigns::put)),
        (r("get", "/v1/campaigns/{name}", "A campaign's definition and counters", 200).gives::<campaigns::CampaignAnswer>(), get(campaigns::get_one)),
        (r("delete", "/v1/campaigns/{name}", "Stop a campaign (running enrolments exit)", 200).gives::<campaigns::Deleted>(), delete(campaigns::delete)),
        (
            r("get", "/v1/campaigns/{name}/stats", "Enrolled, in progress, exited, converted, sent, suppressed", 200)
                .gives::<chronicle_projections::automation::CampaignStats>(),
            get(campaigns::get_stats)),
        (
            r("put", "/v1/segments/{name}", "Create or replace an audience segment (checked whole); its membership is then kept as events (SegmentEntered, SegmentExited)", 200)
                .body(segments::SEGMENT_EXAMPLE)
                .takes::<segments::Definition>()
                .gives::<segments::Saved>(),
            put(segments::put)),
        (r("get", "/v1/segments/{name}", "A segment's definition and how many are in it", 200).gives::<chronicle_app::automation::definitions::SegmentInfo>(), get(segments::get_one)),
        (
            r("get", "/v1/segments/{name}/members", "A segment's members now, or as of an instant (from the log's entries and exits); paged by id", 200)
                .query(&["as_of", "known_at", "after", "limit"])
                .gives::<segments::Members>(),
            get(segments::members)),
        (
            r("put", "/v1/templates/{name}", "Create or replace a message template", 200)
                .body(r#"{"subject":"Welcome, {{ traits.first_name }}","body":"<p>Hello {{ traits.first_name }}!</p>"}"#)
                .takes::<chronicle_projections::automation::Template>()
                .gives::<campaigns::TemplateSaved>(),
            put(campaigns::put_template),
        ),
        (r("get", "/v1/templates/{name}", "A message template", 200).gives::<campaigns::TemplateAnswer>(), get(campaigns::get_template)),
        (r("delete", "/v1/templates/{name}", "Delete a template no campaign sends", 200).gives::<campaigns::Deleted>(), delete(campaigns::delete_template)),
        (r("get", "/v1/dead-letters", "Messages that failed every attempt", 200).gives::<campaigns::DeadLetters>(), get(campaigns::dead_letters)),
        (r("post", "/v1/dead-letters/{id}/retry", "Send a dead letter back to the outbox", 200).gives::<campaigns::Retried>(), post(campaigns::retry)),
        (
            r("get", "/v1/automation/parked", "Campaign reactions to events that kept failing, waiting for a retry", 200).gives::<campaigns::ParkedList>(),
            get(campaigns::parked)),
        (r("post", "/v1/automation/parked/{position}/retry", "Retry a parked campaign reaction now", 200).gives::<campaigns::Retrying>(), post(campaigns::retry_parked)),
        (
            r("post", "/v1/webhooks/sendgrid", "SendGrid Event Webhook: delivery feedback, ECDSA-signed (write key as Basic user or ?key=)", 200)
                .open()
                .query(&["key"])
                .body(r#"[{"email":"ada@example.com","event":"open","sg_event_id":"ev-1","timestamp":1764000000}]"#)
                .takes::<webhooks::SendGridBatch>()
                .gives::<webhooks::Feedback>(),
            post(webhooks::sendgrid),
        ),
        (
            r("get", "/v1/audit", "Who read or changed a customer's data through the API, and when", 200)
                .query(&["customer"])
                .admin()
                .gives::<customers::AuditTrail>(),
            get(customers::audit),
        ),
        (
            r("post", "/v1/api-keys", "Make a key with a role (admin, writer, reader, ingest); the key is shown once", 201)
                .admin()
                .body(r#"{"role":"reader","name":"dashboard"}"#)
                .takes::<system::NewKey>()
                .gives::<system::KeyInfo>(),
            post(system::create_key),
        ),
        (r("get", "/v1/api-keys", "The tenant's keys (never the keys themselves)", 200).admin().gives::<system::KeyList>(), get(system::list_keys)),
        (r("delete", "/v1/api-keys/{id}", "Revoke a key", 200).admin().gives::<system::Revoked>(), delete(system::revoke_key)),
        (
            r("get", "/v1/settings/sendgrid", "The tenant's own SendGrid verification key, if it set one", 200).admin().gives::<webhooks::SendGridSetting>(),
            get(webhooks::get_sendgrid_key)),
        (
            r("put", "/v1/settings/sendgrid", "Verify this tenant's SendGrid feedback with its own key (instead of the instance's)", 200)
                .admin()
                .body(r#"{"public_key":"MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE..."}"#)
                .takes::<webhooks::SendGridKey>()
                .gives::<webhooks::SendGridSetting>(),
            put(webhooks::set_sendgrid_key),
        ),
        (r("delete", "/v1/settings/sendgrid", "Go back to the instance's SendGrid key", 200).admin().gives::<webhooks::SendGridSetting>(), delete(webhooks::remove_sendgrid_key)),
        (
            r("get", "/v1/unsubscribe", "The one-click unsubscribe link of marketing mail: a confirmation form (nothing changes)", 200)
                .open()
                .query(&["t"]),
            get(unsubscribe::confirm),
        ),
        (
            r("post", "/v1/unsubscribe", "One-click unsubscribe (RFC 8058): revokes e-mail marketing consent (the signed token is the authority)", 200)
                .open()
                .query(&["t"]),
            post(unsubscribe::unsubscribe),
        ),
        (
            r("get", "/v1/settings/cors", "The web origins this tenant's pages may send events from (browser tracking)", 200).admin().gives::<cors::Origins>(),
            get(cors::get_origins)),
        (
            r("put", "/v1/settings/cors", "Set the web origins this tenant's pages may send events from, besides the instance's (--cors-origin)", 200)
                .admin()
                .body(r#"{"origins":["https://shop.example.com"]}"#)
                .takes::<cors::Origins>()
                .gives::<cors::Origins>(),
            put(cors::set_origins),
        ),
        (r("get", "/v1/retention", "Retention policies (days kept per event type) and the latest compactions", 200).gives::<system::Retention>(), get(system::retention)),
        (
            r("put", "/v1/retention/{event_type}", "Keep events of this type this many days; `chronicle compact` removes older ones", 200)
                .admin()
                .body(r#"{"keep_days":365}"#)
                .takes::<system::KeepFor>()
                .gives::<system::Policy>(),
            put(system::set_retention),
        ),
        (r("delete", "/v1/retention/{event_type}", "Keep events of this type forever again", 200).admin().gives::<system::Policy>(), delete(system::remove_retention)),
        (
            r("post", "/v1/analytics/funnels", "A funnel over the tenant's events, as of an instant (as_of) and as known at a log position or ingest instant (known_at)", 200)
                .reads()
                .body(analytics::FUNNEL_EXAMPLE)
                .takes::<chronicle_analytics::funnel::FunnelSpec>()
                .gives::<chronicle_analytics::funnel::FunnelAnswer>(),
            post(analytics::funnel),
        ),
        (
            r("post", "/v1/analytics/attribution", "Revenue of conversions credited to channels and campaigns (UTM context, sources, campaign messages opened or clicked): first touch, last touch, linear, time decay, position based, within a lookback window", 200)
                .reads()
                .body(analytics::ATTRIBUTION_EXAMPLE)
                .takes::<chronicle_analytics::attribution::AttributionSpec>()
                .gives::<chronicle_analytics::attribution::Attribution>(),
            post(analytics::attribution),
        ),
        (
            r("get", "/v1/analytics/rfm", "Recency, frequency and monetary value per customer with quintile scores and groups, as of an instant and as known at a position; paged by id", 200)
                .reads()
                .query(&["as_of", "known_at", "group", "after", "limit"])
                .gives::<chronicle_analytics::rfm::RfmPage>(),
            get(analytics::rfm),
        ),
        (
            r("get", "/v1/analytics/pipeline", "Deal pipeline analytics: stage velocity (overall and by owner), stage conversion, win rate, deals stuck longer than stuck_days (default 30)", 200)
                .reads()
                .query(&["as_of", "known_at", "stuck_days"])
                .gives::<chronicle_analytics::pipeline::Pipeline>(),
            get(analytics::pipeline),
        ),
        (
            r("get", "/v1/analytics/reengagement", "Re-engagement candidates: customers with at least min_events tracked events (default 5) and none in the last silent_days (default 30), the most engaged first", 200)
                .reads()
                .query(&["as_of", "known_at", "min_events", "silent_days", "limit"])
                .gives::<chronicle_analytics::reengagement::Reengagement>(),
            get(analytics::reengagement),
        ),
        (
            r("get", "/v1/analytics/cohorts", "Customers by signup week or month and their conversion (the n-th event named `event`, default the first Order Completed) over the periods after", 200)
                .reads()
                .query(&["as_of", "known_at", "period", "event", "occurrence", "periods"])
                .gives::<chronicle_analytics::cohorts::Cohorts>(),
            get(analytics::cohorts),
        ),
        (r("get", "/v1/events", "The tenant's events in commit order", 200).query(&["after", "limit"]).gives::<chronicle_app::app::Page>(), get(log::events)),
        (r("get", "/v1/events/stream", "Live events as server-sent events (catch-up, then follow)", 200).query(&["after"]), get(log::stream_live)),
        (r("get", "/v1/streams/{stream}", "Read a stream forward", 200).query(&["after", "limit"]).gives::<chronicle_app::app::Page>(), get(log::read_stream)),
        (
            r("post", "/v1/streams/{stream}", "Append to a stream with an expected version", 200)
                .body(r#"{"expected_version":"no_stream","events":[{"type":"TicketOpened","data":{"subject":"Login fails"}}]}"#)
                .takes::<log::AppendBody>()
                .gives::<log::Appended>(),
            post(log::append),
        ),
    ]
}

/// The API's router, with its state, the server's options (the metrics token) and the signal
/// that it is stopping.
pub fn router_with(api: Api, options: &serve::ServeOptions, closing: tokio::sync::watch::Receiver<bool>) -> Router {
    let cors = cors::layer(api.app.clone(), &options.cors_origins);
    let web = chronicle_web::Web {
        app: api.app.clone(),
        engine: api.engine.clone(),
        secure_cookies: options.tls.is_some(),
        closing: closing.clone(),
    };
    let options = Options { metrics_token: options.metrics_token.as_deref().map(Arc::from), closing };
    let table = routes();
    let doc = openapi::OpenApi(Arc::new(openapi::document(table.iter().map(|(route, _)| route))));
    let mut router = Router::new();
    for (route, handler) in table {
        let mut handler = handler.layer(axum::Extension(RequiredRole(route.role)));
        // Browser tracking: the Segment routes answer other origins' pages (and their preflight).
        // (`OPTIONS` is routed so the preflight reaches the layer, which answers it.)
        if layer::is_browser_route(route.path) {
            handler = handler.options(|| async { axum::http::StatusCode::NO_CONTENT }).layer(cors.clone());
        }
        router = router.route(route.path, handler);
    }
    router
        .merge(chronicle_web::router(web))
        .fallback(|| async { ApiError::of(crate::http::codes::Code::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::of(crate::http::codes::Code::MethodNotAllowed, "this route does not take this method")
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(api.app.clone(), layer::count_requests))
        .layer(axum::Extension(options))
        .layer(axum::Extension(doc))
        .with_state(api)
}

