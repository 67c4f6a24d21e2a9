//! For admins: the tenant's people (invite with a first password shown once, deactivate,
//! reactivate, change a role), its API keys (make one, shown once; revoke) and the audit trail
//! of who read or changed a person's data.

use crate::render::app_error;
use crate::text::{enc, fmt_time, lower};
use crate::render::{self, render};
use crate::session::{page_of, Posted, Viewer};
use crate::Web;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chronicle_projections::Role;
use minijinja::context;
use serde::Deserialize;
use serde_json::json;

fn forbidden() -> Response {
    render::error(StatusCode::FORBIDDEN, "Only an admin may see this.")
}

fn role_of(s: &str) -> Option<Role> {
    serde_json::from_value::<Role>(json!(s)).ok().filter(|r| *r != Role::Ingest)
}

pub async fn people(State(web): State<Web>, viewer: Viewer) -> Response {
    if !viewer.is_admin() {
        return forbidden();
    }
    people_page(&web, &viewer, None)
}

fn people_page(web: &Web, viewer: &Viewer, made: Option<serde_json::Value>) -> Response {
    let people: Vec<_> = web
        .app
        .users(viewer.tenant())
        .into_iter()
        .map(|u| {
            json!({"id": u.id, "name": u.name, "email": u.email, "role": lower(&u.role), "active": u.deactivated_at.is_none(),
                   "created_at": fmt_time(&u.created_at), "action": format!("/ui/admin/people/{}", enc(&u.id))})
        })
        .collect();
    let page = page_of(viewer, "People", "admin");
    render("people.html", context! { page, people, made })
}

#[derive(Deserialize)]
pub struct Invite {
    name: String,
    email: String,
    role: String,
}

pub async fn invite(State(web): State<Web>, p: Posted<Invite>) -> Response {
    if !p.viewer.is_admin() {
        return forbidden();
    }
    let Some(role) = role_of(&p.form.role) else { return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Choose a role.") };
    // A first password, shown once to the admin to hand over; the person keeps it or is given
    // another by an admin later.
    let password = chronicle_app::keys::mint("pw")[3..23].to_owned();
    match web.app.create_user(p.viewer.tenant(), &p.form.name, &p.form.email, role, &password, p.viewer.actor()).await {
        Ok(u) => people_page(&web, &p.viewer, Some(json!({"email": u.email, "password": password}))),
        Err(e) => app_error(e),
    }
}

#[derive(Deserialize)]
pub struct PersonAction {
    /// `deactivate` or `reactivate`.
    action: String,
}

pub async fn person(State(web): State<Web>, Path(id): Path<String>, p: Posted<PersonAction>) -> Response {
    if !p.viewer.is_admin() {
        return forbidden();
    }
    let active = match p.form.action.as_str() {
        "deactivate" => false,
        "reactivate" => true,
        _ => return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Unknown action."),
    };
    match web.app.set_user_active(p.viewer.tenant(), &id, active, p.viewer.actor()).await {
        Ok(_) => Redirect::to("/ui/admin/people").into_response(),
        Err(e) => app_error(e),
    }
}

pub async fn keys(State(web): State<Web>, viewer: Viewer) -> Response {
    if !viewer.is_admin() {
        return forbidden();
    }
    keys_page(&web, &viewer, None)
}

fn keys_page(web: &Web, viewer: &Viewer, made: Option<serde_json::Value>) -> Response {
    let keys: Vec<_> = web
        .app
        .api_keys(viewer.tenant())
        .into_iter()
        .map(|k| {
            json!({"id": k.id, "name": k.name, "role": lower(&k.role), "created_at": fmt_time(&k.created_at),
                   "revoked_at": k.revoked_at.as_ref().map(fmt_time), "revoke": format!("/ui/admin/keys/{}/revoke", enc(&k.id))})
        })
        .collect();
    let page = page_of(viewer, "API keys", "admin");
    render("keys.html", context! { page, keys, made })
}

#[derive(Deserialize)]
pub struct NewKey {
    role: String,
    #[serde(default)]
    name: String,
}

pub async fn make_key(State(web): State<Web>, p: Posted<NewKey>) -> Response {
    if !p.viewer.is_admin() {
        return forbidden();
    }
    let role = match p.form.role.as_str() {
        "ingest" => Role::Ingest,
        r => match role_of(r) {
            Some(r) => r,
            None => return render::error(StatusCode::UNPROCESSABLE_ENTITY, "Choose a role."),
        },
    };
    let name = Some(p.form.name.trim().to_owned()).filter(|n| !n.is_empty());
    match web.app.create_api_key(p.viewer.tenant(), role, name, p.viewer.actor()).await {
        Ok((record, key)) => keys_page(&web, &p.viewer, Some(json!({"id": record.id, "key": key}))),
        Err(e) => app_error(e),
    }
}

pub async fn revoke_key(State(web): State<Web>, Path(id): Path<String>, p: Posted<serde_json::Map<String, serde_json::Value>>) -> Response {
    if !p.viewer.is_admin() {
        return forbidden();
    }
    match web.app.revoke_api_key(p.viewer.tenant(), &id, p.viewer.actor()).await {
        Ok(()) => Redirect::to("/ui/admin/keys").into_response(),
        Err(e) => app_error(e),
    }
}

#[derive(Deserialize, Default)]
pub struct AuditQuery {
    #[serde(default)]
    customer: String,
}

pub async fn audit(State(web): State<Web>, viewer: Viewer, Query(q): Query<AuditQuery>) -> Response {
    if !viewer.is_admin() {
        return forbidden();
    }
    let customer = q.customer.trim();
    let entries: Vec<_> = if customer.is_empty() {
        Vec::new()
    } else {
        let id = web.app.pseudonyms.id(customer).into_owned();
        if let Err(e) = web.app.flush_audit().await {
            return app_error(e);
        }
        web.app
            .audit_trail(viewer.tenant(), &id)
            .into_iter()
            .rev()
            .map(|e| json!({"at": fmt_time(&e.at), "actor": e.actor, "action": e.action, "method": e.method, "route": e.route, "status": e.status}))
            .collect()
    };
    let page = page_of(&viewer, "Audit", "admin");
    render("audit.html", context! { page, customer, entries })
}
