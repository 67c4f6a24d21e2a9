//! One route's description: method, path, summary, the role it needs, its query and body — what
//! the route table declares once for the router, the roles and `/openapi.json`.

use chronicle_projections::Role;

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

pub(crate) const fn r(method: &'static str, path: &'static str, summary: &'static str, ok: u16) -> Route {
    let role = if matches!(method.as_bytes(), b"get") { Role::Reader } else { Role::Writer };
    Route { method, path, summary, auth: true, query: &[], body: None, ok, role }
}

/// The role a route requires, put on its requests for [`Principal`] to check.
#[derive(Clone, Copy)]
pub(crate) struct RequiredRole(pub Role);

impl Route {
    pub(crate) const fn open(mut self) -> Self {
        self.auth = false;
        self
    }
    pub(crate) const fn query(mut self, q: &'static [&'static str]) -> Self {
        self.query = q;
        self
    }
    pub(crate) const fn body(mut self, example: &'static str) -> Self {
        self.body = Some(example);
        self
    }
    pub(crate) const fn admin(mut self) -> Self {
        self.role = Role::Admin;
        self
    }
}

