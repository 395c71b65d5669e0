//! The HTTP API's OpenAPI document (`src/api/openapi.json`, served at
//! `/v1/openapi.json`), checked by an independent validator, the `jsonschema` crate:
//! the document against the official OAS 3.1 schema (`tests/openapi/oas-3.1-schema.json`,
//! the OpenAPI Initiative's of 2022-10-07), each of its schemas against JSON Schema
//! 2020-12; then every answer the API tests get (`api::Running` checks each one here)
//! against the schema the document gives for its route and status, and every
//! documented operation is called at least once.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use jsonschema::Draft;
use serde_json::{json, Value};

use crate::api::{Running, PARTNER, SHOP};
use crate::on_both_backends;
use crate::support::*;

const OAS_3_1_SCHEMA: &str = include_str!("../openapi/oas-3.1-schema.json");

/// The checked-in document.
pub fn document() -> &'static Value {
    static DOCUMENT: OnceLock<Value> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| serde_json::from_str(couponsd::api::OPENAPI).expect("openapi.json is JSON"))
}

/// The OAS 3.1 schema's refusals of `doc`, one line each.
fn oas_errors(doc: &Value) -> Vec<String> {
    let oas: Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
    let validator = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .build(&oas)
        .expect("the OAS 3.1 schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = document();
    let errors = oas_errors(doc);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
            panic!("components.schemas.{name} is not a JSON Schema 2020-12 schema: {e}");
        }
    }
    // The validator does refuse: a document without `info`, with a response without
    // its description, with an unknown version.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("info");
    broken["paths"]["/v1/triggers"]["post"]["responses"]["202"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    broken["openapi"] = json!("3.0.3");
    let errors = oas_errors(&broken);
    assert!(errors.len() >= 3, "{errors:?}");
}

/// The documented operations: `METHOD /path/{template}`.
pub fn operations() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for (path, item) in document()["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            all.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    all
}

/// The path template `path` (without its query) falls under.
fn template(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    document()["paths"]
        .as_object()
        .unwrap()
        .keys()
        .find_map(|t| {
            let parts: Vec<&str> = t.split('/').collect();
            let fits = parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s);
            fits.then_some(t.as_str())
        })
}

/// Checks one real answer against the document: its route and status are documented,
/// and its body is valid against the schema given for them. Returns the operation.
pub fn assert_conforms(method: &str, path: &str, status: u16, body: &Value) -> String {
    conformance(method, path, status, body).unwrap_or_else(|e| panic!("{e}"))
}

/// The operation of an answer that conforms to the document, or why it does not.
fn conformance(method: &str, path: &str, status: u16, body: &Value) -> Result<String, String> {
    let template = template(path).ok_or(format!("{path} is not a documented path"))?;
    let operation = &document()["paths"][template][method.to_lowercase()];
    if !operation.is_object() {
        return Err(format!("{method} {template} is not documented"));
    }
    let response = &operation["responses"][status.to_string()];
    if !response.is_object() {
        return Err(format!(
            "{method} {template} answered {status}, which the document does not list: {body}"
        ));
    }
    let schema = &response["content"]["application/json"]["schema"];
    // The document's components beside the response's schema, so that its `$ref`s
    // resolve; formats (`date-time`) asserted.
    let root = json!({ "components": document()["components"], "allOf": [schema] });
    let validator = jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("the schema of {method} {template} {status} does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if !errors.is_empty() {
        return Err(format!(
            "{method} {path} {status} does not conform to the document:\n{}\n{body}",
            errors.join("\n")
        ));
    }
    Ok(format!("{} {template}", method.to_uppercase()))
}

#[test]
fn answers_unlike_the_document_are_caught() {
    let queued = json!({ "id": 1, "status": "queued" });
    assert!(conformance("POST", "/v1/triggers", 202, &queued).is_ok());
    for (status, body) in [
        (202, json!({ "id": 1, "status": "queued", "extra": true })),
        (202, json!({ "id": "1", "status": "queued" })),
        (202, json!({ "id": 1, "status": "done" })),
        (418, queued.clone()),
        (422, json!({ "message": "no" })),
    ] {
        assert!(
            conformance("POST", "/v1/triggers", status, &body).is_err(),
            "{status} {body}"
        );
    }
    let grant =
        json!({ "coupon": "C", "code": null, "expires_at": "not a time", "state": "granted" });
    let state = json!({ "id": 1, "request_key": "k", "status": "done", "outcome": "granted", "detail": null, "error": null, "grant": grant });
    assert!(
        conformance("GET", "/v1/triggers/k?wait=1s", 200, &state).is_err(),
        "formats are asserted"
    );
    let batch =
        json!({ "results": [{ "code": 202, "id": 1, "status": "queued", "request_key": "k" }] });
    assert!(conformance("POST", "/v1/triggers/batch", 200, &batch).is_err());
    assert!(conformance("DELETE", "/v1/triggers", 200, &queued).is_err());
    assert!(conformance("POST", "/v2/triggers", 202, &queued).is_err());
}

async fn every_documented_operation_answers_as_documented(db: TestDb) {
    let api = Running::start(db).await;
    let (_, queued) = api
        .post(
            "/v1/triggers",
            SHOP,
            json!({ "request_key": "o-1", "user_id": "u1", "event": "app_open" }),
        )
        .await;
    assert!(queued["id"].is_i64());
    api.post(
        "/v1/triggers/batch",
        SHOP,
        json!({ "triggers": [{ "request_key": "o-2", "user_id": "u2", "event": "app_open" }] }),
    )
    .await;
    let (_, decided) = api.get("/v1/triggers/o-1?wait=10s", Some(SHOP)).await;
    let code = decided["grant"]["code"].as_str().unwrap().to_owned();
    for action in ["redeem", "unredeem", "revoke"] {
        let (status, _) = api
            .post(
                &format!("/v1/grants/{code}/{action}"),
                PARTNER,
                json!({ "update_key": format!("o-{action}") }),
            )
            .await;
        assert_eq!(status, 200);
    }
    api.get("/v1/openapi.json", None).await;
    let missing: Vec<String> = operations().difference(&api.called()).cloned().collect();
    assert!(
        missing.is_empty(),
        "documented but never called: {missing:?}"
    );
    // The served document is the checked-in one.
    assert_eq!(&api.get("/v1/openapi.json", None).await.1, document());
}
on_both_backends!(
    every_operation,
    every_documented_operation_answers_as_documented
);
