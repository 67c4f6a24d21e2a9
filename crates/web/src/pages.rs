//! The pages and their form posts: sign-in and sign-out, the contact list, the customer 360 (now
//! or as of any instant, marking what differs from now) and the actions on a customer. Every
//! action is the command the API runs, recorded with the signed-in person as its actor; every
//! look at or change of a customer is noted on the audit trail as the API's are.

use crate::render::{self, app_error, render};
use crate::text::{display_name, enc, fmt_time, lower, show};
use crate::session::{self, page_of, Posted, Viewer};
use crate::Web;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, NaiveDateTime, Utc};
use chronicle_app::app::SignInError;
use chronicle_core::customer::{Channel, ConsentInput, Customer, CustomerCommand, LifecycleStage, Purpose};
use chronicle_projections::contacts::{ContactQuery, SortBy};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

type Client = Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;


pub async fn home(_viewer: Viewer) -> Redirect {
    Redirect::to("/ui/contacts")
}

#[derive(Deserialize, Default)]
pub struct SignInQuery {
    next: Option<String>,
    tenant: Option<String>,
}

/// Where to go after signing in: a path of the UI, else the contact list.
fn next_of(next: Option<&str>) -> String {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//")).unwrap_or("/ui/contacts").to_owned()
}

pub async fn sign_in_page(Query(q): Query<SignInQuery>) -> Response {
    sign_in_form(StatusCode::OK, q.tenant.as_deref().unwrap_or_default(), "", &next_of(q.next.as_deref()), None)
}

fn sign_in_form(status: StatusCode, tenant: &str, email: &str, next: &str, error: Option<&str>) -> Response {
    let page = render::Page { title: "Sign in".into(), ..Default::default() };
    let mut res = render("sign_in.html", context! { page, tenant, email, next, error });
    *res.status_mut() = status;
    res
}

#[derive(Deserialize)]
pub struct SignInForm {
    tenant: String,
    email: String,
    password: String,
    next: Option<String>,
}

pub async fn sign_in(State(web): State<Web>, client: Client, Form(f): Form<SignInForm>) -> Response {
    let next = next_of(f.next.as_deref());
    let ip = client.map(|c| c.0 .0.ip());
    match web.app.sign_in(f.tenant.trim(), &f.email, &f.password, ip).await {
        Ok((token, _)) => signed_in(&web, &token, &next),
        Err(SignInError::TooMany(wait)) => {
            sign_in_form(StatusCode::TOO_MANY_REQUESTS, &f.tenant, &f.email, &next, Some(&format!("Too many attempts; wait {wait} s and try again.")))
        }
        Err(SignInError::App(e)) => app_error(e),
        Err(e) => sign_in_form(StatusCode::UNAUTHORIZED, &f.tenant, &f.email, &next, Some(&e.to_string())),
    }
}

#[derive(Deserialize)]
pub struct KeyForm {
    api_key: String,
    next: Option<String>,
}

pub async fn sign_in_key(State(web): State<Web>, Form(f): Form<KeyForm>) -> Response {
    let next = next_of(f.next.as_deref());
    match web.app.sign_in_with_key(&f.api_key).await {
        Ok((token, _)) => signed_in(&web, &token, &next),
        Err(SignInError::App(e)) => app_error(e),
        Err(e) => sign_in_form(StatusCode::UNAUTHORIZED, "", "", &next, Some(&e.to_string())),
    }
}

fn signed_in(web: &Web, token: &str, next: &str) -> Response {
    let mut res = Redirect::to(next).into_response();
    res.headers_mut().insert(header::SET_COOKIE, session::cookie(token, web.secure_cookies).parse().expect("a cookie is a header value"));
    res
}

pub async fn sign_out(State(web): State<Web>, viewer: Viewer, Form(f): Form<BTreeMap<String, String>>) -> Response {
    if f.get("_csrf").map(String::as_str) != Some(viewer.csrf().as_str()) {
        return render::error(StatusCode::FORBIDDEN, "This form is out of date; reload the page and try again.");
    }
    if let Err(e) = web.app.sign_out(&viewer.token).await {
        return app_error(e);
    }
    let mut res = Redirect::to("/ui/sign-in").into_response();
    res.headers_mut().insert(header::SET_COOKIE, session::cleared(web.secure_cookies).parse().expect("a cookie is a header value"));
    res
}

#[derive(Deserialize, Serialize, Default, Clone)]
pub struct ContactsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    stage: String,
    #[serde(default)]
    owner: String,
    /// Members of this segment only.
    #[serde(default)]
    segment: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    after: String,
    /// `rows`: only the table's rows (the search box's live update).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    part: String,
    /// How many contacts a bulk action just changed (shown once).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    done: String,
}

/// A contact as the list shows it.
#[derive(Serialize)]
struct Row {
    id: String,
    href: String,
    name: String,
    email: String,
    stage: String,
    owner: String,
    tags: Vec<String>,
    status: String,
}



// The error is the page to answer, made once per request: its size does not matter.
#[allow(clippy::result_large_err)]
impl ContactsQuery {
    /// The list query these filters make, a page of `limit`.
    fn query(&self, limit: usize) -> Result<ContactQuery, Response> {
        let some = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_owned());
        let sort = match self.sort.as_str() {
            "" => SortBy::Name,
            s => s.parse::<SortBy>().map_err(|e| render::error(StatusCode::BAD_REQUEST, &e))?,
        };
        Ok(ContactQuery {
            q: some(&self.q),
            email: None,
            tag: some(&self.tag),
            stage: some(&self.stage),
            owner: some(&self.owner),
            segment: some(&self.segment),
            status: some(&self.status),
            sort,
            after: some(&self.after),
            limit,
        })
    }

    /// Every contact these filters select, up to [`MAX_BULK`], page by page.
    fn all(&self, web: &Web, tenant: &str) -> Result<Vec<Customer>, Response> {
        let mut query = self.query(1000)?;
        query.after = None;
        let mut out = Vec::new();
        loop {
            let (page, next) = web.app.contacts(tenant, &query).map_err(app_error)?;
            out.extend(page);
            match next {
                Some(n) if out.len() < MAX_BULK => query.after = Some(n),
                _ => break,
            }
        }
        out.truncate(MAX_BULK);
        Ok(out)
    }
}

/// The most contacts a bulk action or a CSV export takes at once.
const MAX_BULK: usize = 10_000;

pub async fn contacts(State(web): State<Web>, viewer: Viewer, Query(q): Query<ContactsQuery>) -> Response {
    let query = match q.query(50) {
        Ok(query) => query,
        Err(res) => return res,
    };
    let (customers, next) = match web.app.contacts(viewer.tenant(), &query) {
        Ok(page) => page,
        Err(e) => return app_error(e),
    };
    let rows: Vec<Row> = customers
        .iter()
        .map(|c| Row {
            id: c.id.clone(),
            href: format!("/ui/customers/{}", enc(&c.id)),
            name: display_name(c),
            email: c.email.clone().unwrap_or_default(),
            stage: c.lifecycle_stage.map(|s| lower(&s)).unwrap_or_default(),
            owner: c.owner.clone().unwrap_or_default(),
            tags: c.tags.iter().cloned().collect(),
            status: lower(&c.status),
        })
        .collect();
    let next_url = next.map(|n| {
        let more = ContactsQuery { after: n, part: String::new(), done: String::new(), ..q.clone() };
        format!("/ui/contacts?{}", serde_urlencoded::to_string(&more).unwrap_or_default())
    });
    let template = if q.part == "rows" { "contact_rows.html" } else { "contacts.html" };
    let page = page_of(&viewer, "Contacts", "contacts");
    let owners: Vec<(String, String)> = web.app.users(viewer.tenant()).into_iter().map(|u| (u.actor(), u.name)).collect();
    let segments: Vec<String> = web.app.views().tenant(viewer.tenant()).map(|t| t.automation.segments.keys().cloned().collect()).unwrap_or_default();
    let filters = ContactsQuery { after: String::new(), part: String::new(), done: String::new(), ..q.clone() };
    let csv_url = format!("/ui/contacts.csv?{}", serde_urlencoded::to_string(&filters).unwrap_or_default());
    render(template, context! { page, rows, next_url, q, filters, csv_url, owners, segments, stages => STAGES })
}

/// The filtered list as CSV (RFC 4180), every matching contact up to [`MAX_BULK`].
pub async fn contacts_csv(State(web): State<Web>, viewer: Viewer, Query(q): Query<ContactsQuery>) -> Response {
    let all = match q.all(&web, viewer.tenant()) {
        Ok(all) => all,
        Err(res) => return res,
    };
    let mut out = String::from("id,name,email,phone,lifecycle_stage,owner,tags,status,created_at\r\n");
    for c in &all {
        let row = [
            c.id.clone(),
            display_name(c),
            c.email.clone().unwrap_or_default(),
            c.phone.clone().unwrap_or_default(),
            c.lifecycle_stage.map(|s| lower(&s)).unwrap_or_default(),
            c.owner.clone().unwrap_or_default(),
            c.tags.iter().cloned().collect::<Vec<_>>().join(";"),
            lower(&c.status),
            c.created_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ];
        out.push_str(&row.iter().map(|f| csv_field(f)).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    tracing::info!(tenant = viewer.tenant(), actor = viewer.actor(), contacts = all.len(), "contact list exported as CSV");
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"contacts-{}.csv\"", viewer.tenant())),
        ],
        out,
    )
        .into_response()
}

/// One CSV field: quoted when it holds a separator, a quote or a line break; a field a
/// spreadsheet would run as a formula (`=`, `+`, `-`, `@` first) is prefixed with `'` — but not
/// a number such as a phone number (`+351 900 000 163`), which no spreadsheet runs.
fn csv_field(f: &str) -> String {
    let number = f.len() > 1 && f[1..].chars().all(|c| c.is_ascii_digit() || " ().-".contains(c));
    let formula = f.starts_with(['=', '@']) || (f.starts_with(['+', '-']) && !number);
    let f = if formula { format!("'{f}") } else { f.to_owned() };
    if f.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

#[derive(Deserialize)]
pub struct BulkForm {
    #[serde(flatten)]
    filters: ContactsQuery,
    /// `tag` or `owner`.
    bulk: String,
    value: String,
}

/// A bulk action over the filtered list: tag every contact, or assign them an owner; each is the
/// API's command, as the person.
pub async fn contacts_bulk(State(web): State<Web>, p: Posted<BulkForm>) -> Response {
    let value = p.form.value.trim().to_owned();
    if value.is_empty() {
        return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Give the tag or the owner.");
    }
    if p.form.bulk == "owner" && !web.app.users(p.viewer.tenant()).iter().any(|u| u.actor() == value && u.deactivated_at.is_none()) {
        return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Choose an owner among the people of this workspace.");
    }
    let all = match p.form.filters.all(&web, p.viewer.tenant()) {
        Ok(all) => all,
        Err(res) => return res,
    };
    let mut done = 0;
    for c in &all {
        let cmd = match p.form.bulk.as_str() {
            "tag" => CustomerCommand::Tag { tag: value.clone() },
            "owner" => CustomerCommand::AssignOwner { owner: value.clone() },
            _ => return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Unknown bulk action."),
        };
        match web.app.customer_command(p.viewer.tenant(), &c.id, cmd, p.viewer.actor()).await {
            Ok(_) => {
                done += 1;
                note_audit(&web, &p.viewer, &c.id, "change", "POST", 303);
            }
            Err(e) => return app_error(e),
        }
    }
    let back = ContactsQuery { after: String::new(), part: String::new(), done: done.to_string(), ..p.form.filters.clone() };
    Redirect::to(&format!("/ui/contacts?{}", serde_urlencoded::to_string(&back).unwrap_or_default())).into_response()
}

const STAGES: &[&str] = &["subscriber", "lead", "mql", "sql", "opportunity", "customer", "evangelist"];
const CHANNELS: &[&str] = &["email", "sms", "push", "in_app", "phone"];
const PURPOSES: &[&str] = &["marketing", "transactional", "analytics", "profiling"];

#[derive(Deserialize, Default)]
pub struct CustomerQuery {
    /// An instant: RFC 3339, or a `datetime-local` field's value (read as UTC).
    #[serde(default)]
    as_of: String,
    /// Comma-separated event types to show on the timeline.
    #[serde(default)]
    types: String,
    /// Show the timeline's events before this log position (older pages).
    #[serde(default)]
    before: Option<u64>,
}

pub(crate) fn parse_instant(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").ok().map(|t| t.and_utc()))
        .or_else(|| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").ok().map(|t| t.and_utc()))
}

/// One consent line of the 360.
#[derive(Serialize)]
struct ConsentLine {
    channel: String,
    purpose: String,
    granted: bool,
    source: String,
    legal_basis: String,
    at: String,
    proof: String,
    changed: bool,
    /// The decision's log position (what a message's "relied on" names).
    position: Option<u64>,
}

/// One event of the timeline, with its envelope for the expander.
#[derive(Serialize)]
struct Entry {
    version: u64,
    event_type: String,
    summary: String,
    at: String,
    actor: String,
    envelope: String,
}

const TIMELINE_PAGE: usize = 50;

/// What differs between the customer as shown and as they are now: field names as the page
/// marks them (`email`, `stage`, `owner`, `tags`, `status`, `traits.<name>`,
/// `consent.<channel>.<purpose>`).
fn differences(then: &Customer, now: &Customer) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut mark = |cond: bool, name: String| {
        if cond {
            out.insert(name);
        }
    };
    mark(then.email != now.email, "email".into());
    mark(then.phone != now.phone, "phone".into());
    mark(then.lifecycle_stage != now.lifecycle_stage, "stage".into());
    mark(then.owner != now.owner, "owner".into());
    mark(then.tags != now.tags, "tags".into());
    mark(then.status != now.status, "status".into());
    let keys: BTreeSet<&String> = then.traits.keys().chain(now.traits.keys()).collect();
    for k in keys {
        mark(then.traits.get(k) != now.traits.get(k), format!("traits.{k}"));
    }
    let consents: BTreeSet<String> =
        then.consents.values().chain(now.consents.values()).map(|c| format!("consent.{}.{}", lower(&c.channel), lower(&c.purpose))).collect();
    for key in consents {
        let granted = |c: &Customer| c.consents.values().find(|s| format!("consent.{}.{}", lower(&s.channel), lower(&s.purpose)) == key).map(|s| s.granted);
        mark(granted(then) != granted(now), key);
    }
    out
}

/// A customer's preferences in words: channels, quiet hours, time zone, frequency cap.
fn preferences_text(p: &chronicle_core::customer::Preferences) -> String {
    let mut parts = Vec::new();
    if let Some(ch) = &p.preferred_channels {
        parts.push(format!("prefers {}", ch.iter().map(lower).collect::<Vec<_>>().join(", ")));
    }
    if let Some(q) = &p.quiet_hours {
        parts.push(format!("quiet {}–{}", q.start, q.end));
    }
    if let Some(tz) = &p.time_zone {
        parts.push(format!("time zone {tz}"));
    }
    if let Some(cap) = &p.frequency_cap {
        parts.push(format!("at most {} per {}", cap.max, cap.per));
    }
    parts.join("; ")
}



pub async fn customer(State(web): State<Web>, viewer: Viewer, Path(id): Path<String>, Query(q): Query<CustomerQuery>) -> Response {
    let app = &web.app;
    let tenant = viewer.tenant().to_owned();
    let id = app.pseudonyms.id(&id).into_owned();
    let now = match app.customer(&tenant, &id) {
        Ok(c) => c,
        Err(e) => return app_error(e),
    };
    let as_of = match q.as_of.trim() {
        "" => None,
        s => match parse_instant(s) {
            Some(t) => Some(t),
            None => return render::error(StatusCode::BAD_REQUEST, "The instant is not a date and time (2026-11-01T10:00:00Z)."),
        },
    };
    let shown = match as_of {
        Some(t) => match app.customer_as_of(&tenant, &id, t).await {
            Ok(c) => c,
            Err(e) => return app_error(e),
        },
        None => now.clone(),
    };
    note_audit(&web, &viewer, &id, "read", "GET", 200);
    let changed = as_of.map(|_| differences(&shown, &now)).unwrap_or_default();
    let ledger = match app.consents(&tenant, &id) {
        Ok(l) => l,
        Err(e) => return app_error(e),
    };
    let consents: Vec<ConsentLine> = shown
        .consents
        .values()
        .map(|c| {
            let (channel, purpose) = (lower(&c.channel), lower(&c.purpose));
            ConsentLine {
                changed: changed.contains(&format!("consent.{channel}.{purpose}")),
                channel,
                purpose,
                granted: c.granted,
                source: c.source.clone(),
                legal_basis: c.legal_basis.clone(),
                at: fmt_time(&c.at),
                proof: c.proof.as_ref().map(Value::to_string).unwrap_or_default(),
                position: None,
            }
        })
        .collect();
    let history: Vec<ConsentLine> = ledger
        .history
        .iter()
        .rev()
        .filter(|h| as_of.is_none_or(|t| h.event_time <= t))
        .map(|h| ConsentLine {
            channel: lower(&h.channel),
            purpose: lower(&h.purpose),
            granted: h.granted,
            source: h.source.clone(),
            legal_basis: h.legal_basis.clone(),
            at: fmt_time(&h.event_time),
            proof: h.proof.as_ref().map(Value::to_string).unwrap_or_default(),
            changed: false,
            position: Some(h.position),
        })
        .collect();
    // The timeline, newest first, a page at a time.
    let types: Vec<String> = q.types.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect();
    let (events, more) = match app.timeline_newest(&tenant, &id, q.before, TIMELINE_PAGE, as_of, &types).await {
        Ok(page) => page,
        Err(e) => return app_error(e),
    };
    let entries: Vec<Entry> = events
        .iter()
        .map(|e| Entry {
            version: e.version,
            event_type: e.event_type.clone(),
            summary: summary(&e.event_type, &e.data),
            at: fmt_time(&e.event_time),
            actor: e.actor.clone().unwrap_or_default(),
            envelope: serde_json::to_string_pretty(e).unwrap_or_default(),
        })
        .collect();
    let older = more.map(|before| {
        let mut u = format!("/ui/customers/{}?before={before}", enc(&now.id));
        if !q.types.is_empty() {
            u.push_str(&format!("&types={}", enc(&q.types)));
        }
        if let Some(t) = as_of {
            u.push_str(&format!("&as_of={}", enc(&t.to_rfc3339())));
        }
        u
    });
    // Messages and campaign enrolments (as they are now: the automation read model keeps no
    // history of its own; the timeline shows the past).
    let (messages, enrolments) = {
        let v = app.views();
        let a = v.tenant(&tenant).map(|t| &t.automation);
        let messages: Vec<Value> = a
            .and_then(|a| a.messages.get(&id))
            .map(|ms| {
                ms.iter()
                    .rev()
                    .map(|m| {
                        json!({"id": m.id, "channel": m.channel, "purpose": lower(&m.purpose), "state": m.state, "reason": m.reason,
                               "campaign": m.campaign, "at": fmt_time(&m.at), "sent_at": m.sent_at.as_ref().map(fmt_time),
                               "consent_position": m.consent_position})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let enrolments: Vec<Value> = a
            .map(|a| {
                a.enrolments
                    .values()
                    .filter(|e| e.customer == id)
                    .map(|e| json!({"campaign": e.campaign, "status": lower(&e.status), "step": e.step, "enrolled_at": fmt_time(&e.enrolled_at),
                                    "due": e.due.as_ref().map(fmt_time)}))
                    .collect()
            })
            .unwrap_or_default();
        (messages, enrolments)
    };
    let of_customer = chronicle_app::app::ListFilter { customer: Some(id.clone()), ..Default::default() };
    let money = crate::text::money;
    let deals: Vec<Value> = app
        .deals_list(&tenant, &of_customer, None, 100)
        .0
        .iter()
        .map(|d| json!({"name": d.name, "stage": d.stage, "status": lower(&d.status), "amount": d.amount.map(|a| money(a, &d.currency))}))
        .collect();
    let orders: Vec<Value> = app
        .orders_list(&tenant, &of_customer, None, 100)
        .0
        .iter()
        .map(|o| json!({"id": o.id, "status": lower(&o.status), "total": money(o.total, &o.currency)}))
        .collect();
    let traits: Vec<(String, String, bool)> =
        shown.traits.iter().map(|(k, v)| (k.clone(), show(v), changed.contains(&format!("traits.{k}")))).collect();
    // Traits that exist now but not then are marked too (they were added since).
    let gone: Vec<String> = changed.iter().filter_map(|c| c.strip_prefix("traits.")).filter(|k| !shown.traits.contains_key(*k)).map(str::to_owned).collect();
    let first = now.created_at.unwrap_or_else(|| app.now());
    // The slider's first stop is the first whole second the customer existed in.
    let slider = json!({
        "min": first.timestamp() + i64::from(first.timestamp_subsec_nanos() > 0),
        "max": app.now().timestamp(),
        "value": as_of.unwrap_or_else(|| app.now()).timestamp(),
    });
    let page = page_of(&viewer, &display_name(&shown).chars().take(80).collect::<String>(), "contacts");
    let owners: Vec<(String, String)> = app.users(&tenant).into_iter().filter(|u| u.deactivated_at.is_none()).map(|u| (u.actor(), u.name)).collect();
    let c = json!({
        "id": shown.id,
        "href": format!("/ui/customers/{}", enc(&shown.id)),
        "name": display_name(&shown),
        "email": shown.email,
        "phone": shown.phone,
        "stage": shown.lifecycle_stage.map(|s| lower(&s)),
        "owner": shown.owner,
        "status": lower(&shown.status),
        "tags": shown.tags,
        "groups": shown.groups.keys().collect::<Vec<_>>(),
        "merged_ids": shown.merged_ids,
        "anonymous_ids": shown.anonymous_ids.len(),
        "preferences": preferences_text(&shown.preferences),
        "notes": shown.notes.iter().rev().map(|n| json!({"text": n.text, "author": n.author, "at": fmt_time(&n.at)})).collect::<Vec<_>>(),
        "version": shown.version,
    });
    render(
        "customer.html",
        context! {
            page, c, traits, gone, changed, consents, history, entries, older, deals, orders, owners, slider, messages, enrolments,
            as_of => as_of.map(|t| t.to_rfc3339()),
            as_of_local => as_of.map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string()),
            types => q.types,
            stages => STAGES, channels => CHANNELS, purposes => PURPOSES,
        },
    )
}


/// A line saying what an event did, for the timeline.
fn summary(event_type: &str, data: &Value) -> String {
    let field = |k: &str| data.get(k).map(show).unwrap_or_default();
    match event_type {
        "ConsentGranted" | "ConsentRevoked" => {
            let verb = if event_type == "ConsentRevoked" { "revoked" } else { "granted" };
            format!("{} {} consent {verb} (source: {})", field("channel"), field("purpose"), field("source"))
        }
        "CustomerProfileUpdated" => match data.get("changes").and_then(Value::as_object) {
            Some(ch) => ch.iter().map(|(k, v)| format!("{k}: {} → {}", show(&v["old"]), show(&v["new"]))).collect::<Vec<_>>().join("; "),
            None => String::new(),
        },
        "ActivityTracked" => field("event").to_string() + &data.get("name").map(|n| format!(" {}", show(n))).unwrap_or_default(),
        "CustomerTagged" | "CustomerUntagged" => field("tag"),
        "NoteAdded" => field("text"),
        "OwnerAssigned" => field("owner"),
        "LifecycleStageChanged" => format!("{} → {}", field("from"), field("to")),
        _ => String::new(),
    }
}

pub(crate) fn note_audit(web: &Web, viewer: &Viewer, customer: &str, action: &str, method: &str, status: u16) {
    web.app.audit.note(
        viewer.tenant(),
        chronicle_projections::AuditEntry {
            at: web.app.now(),
            actor: viewer.actor().to_owned(),
            action: action.into(),
            method: method.into(),
            route: "/ui/customers/{id}".into(),
            customer: customer.to_owned(),
            status,
        },
    );
}

/// Run a customer command as the viewer, then back to the 360.
async fn act(web: &Web, viewer: &Viewer, id: &str, cmd: CustomerCommand) -> Response {
    let id = web.app.pseudonyms.id(id).into_owned();
    match web.app.customer_command(viewer.tenant(), &id, cmd, viewer.actor()).await {
        Ok(c) => {
            note_audit(web, viewer, &id, "change", "POST", 303);
            Redirect::to(&format!("/ui/customers/{}", enc(&c.id))).into_response()
        }
        Err(e) => {
            note_audit(web, viewer, &id, "change", "POST", 422);
            app_error(e)
        }
    }
}

#[derive(Deserialize)]
pub struct TraitForm {
    key: String,
    value: String,
}

pub async fn set_trait(State(web): State<Web>, Path(id): Path<String>, p: Posted<TraitForm>) -> Response {
    let key = p.form.key.trim();
    if key.is_empty() {
        return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Name the trait.");
    }
    // A value that reads as JSON (a number, true, null) is kept as such; anything else is text.
    let value = match serde_json::from_str::<Value>(&p.form.value) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
        _ => Value::String(p.form.value.clone()),
    };
    let mut traits = Map::new();
    traits.insert(key.to_owned(), value);
    act(&web, &p.viewer, &id, CustomerCommand::UpdateProfile { email: None, phone: None, traits }).await
}

#[derive(Deserialize)]
pub struct NoteForm {
    text: String,
}

pub async fn add_note(State(web): State<Web>, Path(id): Path<String>, p: Posted<NoteForm>) -> Response {
    let author = Some(p.viewer.actor().to_owned());
    act(&web, &p.viewer, &id, CustomerCommand::AddNote { text: p.form.text.clone(), author }).await
}

#[derive(Deserialize)]
pub struct TagForm {
    tag: String,
}

pub async fn add_tag(State(web): State<Web>, Path(id): Path<String>, p: Posted<TagForm>) -> Response {
    act(&web, &p.viewer, &id, CustomerCommand::Tag { tag: p.form.tag.trim().to_owned() }).await
}

pub async fn remove_tag(State(web): State<Web>, Path(id): Path<String>, p: Posted<TagForm>) -> Response {
    act(&web, &p.viewer, &id, CustomerCommand::Untag { tag: p.form.tag.clone() }).await
}

#[derive(Deserialize)]
pub struct OwnerForm {
    owner: String,
}

pub async fn assign_owner(State(web): State<Web>, Path(id): Path<String>, p: Posted<OwnerForm>) -> Response {
    // Owners are the tenant's people.
    let known = web.app.users(p.viewer.tenant()).iter().any(|u| u.actor() == p.form.owner && u.deactivated_at.is_none());
    if !known {
        return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Choose an owner among the people of this workspace.");
    }
    act(&web, &p.viewer, &id, CustomerCommand::AssignOwner { owner: p.form.owner.clone() }).await
}

#[derive(Deserialize)]
pub struct ConsentForm {
    channel: Channel,
    purpose: Purpose,
    /// `grant` or `revoke`.
    decision: String,
}

pub async fn set_consent(State(web): State<Web>, Path(id): Path<String>, p: Posted<ConsentForm>) -> Response {
    let granted = match p.form.decision.as_str() {
        "grant" => true,
        "revoke" => false,
        _ => return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Grant or revoke?"),
    };
    let input = ConsentInput {
        channel: p.form.channel,
        purpose: p.form.purpose,
        granted,
        source: Some("ui".into()),
        legal_basis: None,
        proof: Some(json!({"by": p.viewer.actor(), "via": "web UI"})),
    };
    act(&web, &p.viewer, &id, CustomerCommand::SetConsent(input)).await
}

#[derive(Deserialize)]
pub struct StatusForm {
    /// `deactivate` or `reactivate`; or a lifecycle stage to move to (`stage`).
    action: String,
    #[serde(default)]
    stage: Option<LifecycleStage>,
}

pub async fn set_status(State(web): State<Web>, Path(id): Path<String>, p: Posted<StatusForm>) -> Response {
    let cmd = match (p.form.action.as_str(), p.form.stage) {
        ("deactivate", _) => CustomerCommand::Deactivate { reason: Some("ui".into()) },
        ("reactivate", _) => CustomerCommand::Reactivate,
        ("stage", Some(to)) => CustomerCommand::ChangeStage { to },
        _ => return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Unknown action."),
    };
    act(&web, &p.viewer, &id, cmd).await
}

/// Subject access (admins): everything held about the person, downloaded as the API's export.
pub async fn export(State(web): State<Web>, viewer: Viewer, Path(id): Path<String>) -> Response {
    if !viewer.is_admin() {
        return render::error(StatusCode::FORBIDDEN, "Only an admin may export a person's data.");
    }
    let id = web.app.pseudonyms.id(&id).into_owned();
    match web.app.export_customer(viewer.tenant(), &id).await {
        Ok(doc) => {
            note_audit(&web, &viewer, &id, "read", "GET", 200);
            let body = serde_json::to_string_pretty(&doc).unwrap_or_default();
            let name = format!("attachment; filename=\"export-{}.json\"", id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"));
            ([(header::CONTENT_TYPE, "application/json".to_owned()), (header::CONTENT_DISPOSITION, name)], body).into_response()
        }
        Err(e) => app_error(e),
    }
}

#[derive(Deserialize)]
pub struct EraseForm {
    /// The customer's id, typed again.
    confirm: String,
}

/// Erasure (admins), confirmed by typing the customer's id: the API's erasure, as the person.
pub async fn erase(State(web): State<Web>, Path(id): Path<String>, p: Posted<EraseForm>) -> Response {
    if !p.viewer.is_admin() {
        return render::error(StatusCode::FORBIDDEN, "Only an admin may erase a person.");
    }
    if p.form.confirm.trim() != id {
        return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Type the customer's id exactly to confirm the erasure.");
    }
    let stored = web.app.pseudonyms.id(&id).into_owned();
    match web.app.erase_customer(p.viewer.tenant(), &stored, p.viewer.actor()).await {
        Ok(_) => {
            note_audit(&web, &p.viewer, &stored, "change", "POST", 303);
            Redirect::to("/ui/contacts").into_response()
        }
        Err(e) => app_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("Ada"), "Ada");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("+351 900 000 163"), "+351 900 000 163");
        assert_eq!(csv_field("+cmd|' /C calc'!A0"), "'+cmd|' /C calc'!A0");
        assert_eq!(csv_field("@SUM(A1)"), "'@SUM(A1)");
    }

    #[test]
    fn instants_read_as_rfc3339_or_a_date_time_field() {
        assert_eq!(parse_instant("2026-11-01T10:00:00Z").unwrap().to_rfc3339(), "2026-11-01T10:00:00+00:00");
        assert_eq!(parse_instant("2026-11-01T10:00").unwrap().to_rfc3339(), "2026-11-01T10:00:00+00:00");
        assert_eq!(parse_instant("2026-11-01T10:00:30").unwrap().to_rfc3339(), "2026-11-01T10:00:30+00:00");
        assert!(parse_instant("yesterday").is_none());
    }
}
