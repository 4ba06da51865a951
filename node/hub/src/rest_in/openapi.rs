//! The OpenAPI 3.1 document of the hub's REST endpoint, made per caller
//! from the catalog: exactly the services offered to that REST client
//! (its record's `services`), each with its operations, the request body,
//! the answer (the service's JSON Schema from the catalog as `data`) and
//! the error body. A caller learns nothing of services it is not offered.

use crate::Hub;
use lgsp_proto::{RestClient, ServiceKind};
use serde_json::{Value, json};

/// The operations a service of `kind` answers through the hub.
fn operations(kind: i32) -> &'static [&'static str] {
    match ServiceKind::try_from(kind) {
        Ok(ServiceKind::Dataset) => &["get"],
        // A backend the node fronts names its own operations: the document
        // says so with one templated path.
        _ => &[],
    }
}

/// The document `client` reads at `GET /openapi.json`.
pub fn document(hub: &Hub, client: &RestClient) -> Value {
    let cache = &hub.ctx.cache;
    let mut paths = serde_json::Map::new();
    let mut ids = client.services.clone();
    ids.sort();
    for id in ids {
        let Some(service) = cache.service(&id) else {
            continue;
        };
        let data_schema: Value = serde_json::from_str(&service.schema_json)
            .ok()
            .filter(Value::is_object)
            .map(|mut s: Value| {
                // The document's own dialect applies; an embedded `$schema`
                // or `$id` would make validators fetch or re-base it.
                if let Some(o) = s.as_object_mut() {
                    o.remove("$schema");
                    o.remove("$id");
                }
                s
            })
            .unwrap_or_else(|| json!({}));
        let agency_name = cache.agency_name(&service.agency_code).unwrap_or_default();
        let summary = if service.description.is_empty() {
            format!("{} ({agency_name})", service.name)
        } else {
            service.description.clone()
        };
        let ops: Vec<String> = match operations(service.kind) {
            [] => vec!["{operation}".to_owned()],
            ops => ops.iter().map(|o| (*o).to_owned()).collect(),
        };
        for op in ops {
            let templated = op == "{operation}";
            let mut parameters = vec![json!({"$ref": "#/components/parameters/RequestId"})];
            if templated {
                parameters.push(json!({
                    "name": "operation", "in": "path", "required": true,
                    "description": "The operation, as the provider names it.",
                    "schema": {"type": "string"}
                }));
            }
            let operation_id = format!(
                "{}_{}",
                id.replace(['/', '.', '-'], "_"),
                op.trim_matches(['{', '}'])
            );
            let responses = json!({
                "200": {
                    "description": "The service's answer.",
                    "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["request_id", "data"],
                        "properties": {
                            "request_id": {"type": "string"},
                            "data": data_schema.clone()
                        }
                    }}}
                },
                "400": {"$ref": "#/components/responses/Error"},
                "401": {"$ref": "#/components/responses/Error"},
                "403": {"$ref": "#/components/responses/Error"},
                "404": {"$ref": "#/components/responses/Error"},
                "429": {"$ref": "#/components/responses/Error"},
                "503": {"$ref": "#/components/responses/Error"},
                "default": {"$ref": "#/components/responses/Error"}
            });
            let item = json!({
                "post": {
                    "operationId": operation_id,
                    "summary": summary,
                    "description": format!("Service {id} of {agency_name}, through the provincial hub. The caller's agency needs an active grant."),
                    "parameters": parameters,
                    "requestBody": {
                        "required": true,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Call"}}}
                    },
                    "responses": responses
                }
            });
            paths.insert(format!("/v1/services/{id}/{op}"), item);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": format!("Services of {} for {}", hub.id.trust_domain, client.name),
            "version": "1",
            "description": format!(
                "What REST client {} ({} of {}) may call through the provincial hub. Every call needs the client's TLS certificate (mTLS).",
                client.name, client.agency_code, client.trust_domain
            )
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Call": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "parameters": {
                            "type": "object",
                            "description": "The envelope's parameters: for a dataset's get, `key` and optionally `fields` (comma-separated).",
                            "additionalProperties": {"type": "string"}
                        },
                        "payload": {"description": "Any JSON, sent to the service as the envelope's payload."}
                    }
                },
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "description": "The gRPC status code's name.",
                            "enum": ["CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"]
                        },
                        "message": {"type": "string", "description": "Why, and what to do."},
                        "request_id": {"type": "string"}
                    }
                }
            },
            "parameters": {
                "RequestId": {
                    "name": "X-Request-Id", "in": "header", "required": false,
                    "description": "The request id to log the exchange under (letters, digits, - _ . :, at most 128); another is made when absent or malformed.",
                    "schema": {"type": "string"}
                }
            },
            "headers": {
                "RequestId": {
                    "description": "The request id the exchange is logged under on every hop.",
                    "schema": {"type": "string"}
                }
            },
            "responses": {
                "Error": {
                    "description": "A refusal or failure, saying why.",
                    "headers": {"X-Request-Id": {"$ref": "#/components/headers/RequestId"}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                }
            },
            "securitySchemes": {
                "mtls": {"type": "mutualTLS", "description": "A client certificate of the CA registered for the REST client."}
            }
        },
        "security": [{"mtls": []}]
    })
}
