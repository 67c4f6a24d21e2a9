//! `/openapi.json`: the OpenAPI 3.1 document, generated from the route table (so it cannot drift
//! from the router).

use super::route::Route;
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// The document, made once from the route table when the router is built.
#[derive(Clone)]
pub(crate) struct OpenApi(pub Arc<Value>);

/// `GET /openapi.json`.
pub(crate) async fn serve(axum::Extension(doc): axum::Extension<OpenApi>) -> Json<Value> {
    Json((*doc.0).clone())
}

/// A query parameter's schema, by its name (the same name means the same thing on every route).
fn query_schema(name: &str) -> Value {
    match name {
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        "as_of" => json!({"type": "string", "format": "date-time"}),
        "channel" => json!({"type": "string", "enum": ["email", "sms", "push", "in_app", "phone"]}),
        "purpose" => json!({"type": "string", "enum": ["marketing", "transactional", "analytics", "profiling"]}),
        "sort" => json!({"type": "string", "enum": ["created", "name", "activity"]}),
        _ => json!({"type": "string"}),
    }
}

/// The operation's id: its method and path, e.g. `get_customers_by_id_timeline`.
fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_owned();
    for seg in path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        id.push('_');
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(param) => {
                id.push_str("by_");
                id.push_str(param);
            }
            None => id.extend(seg.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })),
        }
    }
    id
}

/// The group an operation is listed under: ingest for the write-key routes, else the first
/// segment after `/v1` (`customers`, `deals`, …), `system` outside `/v1`.
fn tag(path: &str) -> String {
    if super::layer::INGEST_ROUTES.contains(&path) {
        return "ingest".into();
    }
    match path.strip_prefix("/v1/") {
        Some(rest) => rest.split('/').next().unwrap_or("v1").to_owned(),
        None => "system".into(),
    }
}

/// What a success answers with: JSON, except the metrics, the live stream and the
/// unsubscribe pages.
fn success_content(path: &str) -> Value {
    match path {
        "/metrics" => json!({"application/openmetrics-text": {"schema": {"type": "string"}}}),
        "/v1/events/stream" => json!({"text/event-stream": {"schema": {"type": "string"}}}),
        "/v1/unsubscribe" => json!({"text/html": {"schema": {"type": "string"}}}),
        _ => json!({"application/json": {"schema": {"type": "object"}}}),
    }
}

/// OpenAPI 3.1, generated from the route table; the bodies' and answers' schemas from the
/// types the handlers read and write (schemars), named in `components.schemas`.
pub fn document<'a>(routes: impl IntoIterator<Item = &'a Route>) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error = json!({"$ref": "#/components/responses/Error"});
    for route in routes {
        let mut params: Vec<Value> = Vec::new();
        for seg in route.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        for q in route.query {
            let required = route.path == "/v1/unsubscribe" || route.path == "/v1/consent-check";
            params.push(json!({"name": q, "in": "query", "required": required, "schema": query_schema(q)}));
        }
        let ingest = super::layer::INGEST_ROUTES.contains(&route.path);
        let mut responses = Map::new();
        let mut content = success_content(route.path);
        if let Some(gives) = route.gives {
            content["application/json"]["schema"] = gives(&mut generator).to_value();
        }
        responses.insert(route.ok.to_string(), json!({"description": "success", "content": content}));
        // What any route can answer: a bad request, no such thing, the connection cap.
        for status in ["400", "404", "503"] {
            responses.insert(status.into(), error.clone());
        }
        if route.auth || ingest {
            // The key is missing or wrong; its budget is spent.
            for status in ["401", "429"] {
                responses.insert(status.into(), error.clone());
            }
        }
        if route.auth {
            responses.insert("403".into(), error.clone());
        }
        if route.path.contains('{') {
            // An empty path parameter collapses the path into another route's
            // (`/v1/customers//tags` is `/v1/customers/tags`), which may not take this method.
            responses.insert("405".into(), error.clone());
        }
        if route.method != "get" && route.method != "delete" {
            // The body: too slow, too large, not JSON.
            for status in ["408", "413", "415"] {
                responses.insert(status.into(), error.clone());
            }
        }
        if route.method != "get" {
            for status in ["409", "422"] {
                responses.insert(status.into(), error.clone());
            }
        }
        let mut op = json!({
            "operationId": operation_id(route.method, route.path),
            "tags": [tag(route.path)],
            "summary": route.summary,
            "parameters": params,
            "responses": responses,
        });
        if route.auth {
            op["security"] = json!([{"apiKey": []}]);
            op["x-required-role"] = json!(route.role);
        } else if ingest {
            // The write key as Basic auth's user, or in the body (`writeKey`) as Segment allows.
            op["security"] = json!([{"writeKey": []}, {}]);
        }
        if let Some(example) = route.body {
            let example: Value = serde_json::from_str(example).expect("route examples are valid JSON");
            let schema = match route.takes {
                Some(takes) => takes(&mut generator).to_value(),
                None => json!({"type": ["object", "array"]}),
            };
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema, "example": example}}});
        } else if let Some(takes) = route.takes {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": takes(&mut generator).to_value()}}});
        }
        paths.entry(route.path).or_insert_with(|| json!({}))[route.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Chronicle", "version": env!("CARGO_PKG_VERSION"), "description": "Event-sourced CRM engine"},
        "paths": paths,
        "components": {
            "schemas": generator.take_definitions(true),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "An API key of the tenant"},
                "writeKey": {"type": "http", "scheme": "basic", "description": "The tenant's write key as the user name, no password (Segment's convention)"}
            },
            "responses": {"Error": {"description": "error", "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}
                }}}
            }}}}}
        }
    })
}
