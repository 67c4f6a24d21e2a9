//! One route's description: method, path, summary, the role it needs, its query and body — what
//! the route table declares once for the router, the roles and `/openapi.json`.

use chronicle_projections::Role;
use schemars::{JsonSchema, Schema, SchemaGenerator};

/// A type's schema, as a reference into the document's components where it has a name.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<T>()
}

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
    /// The schema of the body it reads (the type its handler deserializes).
    pub takes: Option<SchemaFn>,
    /// The schema of its success answer (the type its handler serializes), where there is one.
    pub gives: Option<SchemaFn>,
}

pub(crate) const fn r(method: &'static str, path: &'static str, summary: &'static str, ok: u16) -> Route {
    let role = if matches!(method.as_bytes(), b"get") { Role::Reader } else { Role::Writer };
    Route { method, path, summary, auth: true, query: &[], body: None, ok, role, takes: None, gives: None }
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
    /// The body is a `T` (its schema goes into the document).
    pub(crate) const fn takes<T: JsonSchema>(mut self) -> Self {
        self.takes = Some(schema_of::<T>);
        self
    }
    /// The success answer is a `T`.
    pub(crate) const fn gives<T: JsonSchema>(mut self) -> Self {
        self.gives = Some(schema_of::<T>);
        self
    }
    /// A `POST` that only reads (a query with a body): a reader key may call it.
    pub(crate) const fn reads(mut self) -> Self {
        self.role = Role::Reader;
        self
    }
    pub(crate) const fn admin(mut self) -> Self {
        self.role = Role::Admin;
        self
    }
}

