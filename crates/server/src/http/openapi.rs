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

/// OpenAPI 3.1, generated from the route table.
pub fn document<'a>(routes: impl IntoIterator<Item = &'a Route>) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for route in routes {
        let mut params: Vec<Value> = Vec::new();
        for seg in route.path.split('/').filter(|s| s.starts_with('{')) {
            let name = seg.trim_matches(|c| c == '{' || c == '}');
            params.push(json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}));
        }
        for q in route.query {
            params.push(json!({"name": q, "in": "query", "required": false, "schema": {"type": "string"}}));
        }
        let mut op = json!({
            "summary": route.summary,
            "parameters": params,
            "responses": {
                route.ok.to_string(): {"description": "success", "content": {"application/json": {}}},
                "400": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
            },
        });
        if route.auth {
            op["security"] = json!([{"apiKey": []}]);
            op["x-required-role"] = json!(route.role);
            op["responses"]["401"] = json!({"$ref": "#/components/responses/Error"});
        }
        if let Some(example) = route.body {
            let example: Value = serde_json::from_str(example).expect("route examples are valid JSON");
            op["requestBody"] = json!({"required": true, "content": {"application/json": {"example": example}}});
        }
        if route.method != "get" {
            op["responses"]["409"] = json!({"$ref": "#/components/responses/Error"});
            op["responses"]["422"] = json!({"$ref": "#/components/responses/Error"});
        }
        paths.entry(route.path).or_insert_with(|| json!({}))[route.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Chronicle", "version": env!("CARGO_PKG_VERSION"), "description": "Event-sourced CRM engine"},
        "paths": paths,
        "components": {
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
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
