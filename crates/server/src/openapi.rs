//! The OpenAPI document, generated from the route handlers' annotations
//! (utoipa) and served at `/api/v1/openapi.json`.

use axum::extract::State;
use axum::response::IntoResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::AppState;
use crate::error::{ErrorBody, ErrorDetail};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keyward API",
        description = "Credential management: users, devices, device policies, settings, \
                       Passkey-Enabled Services, operators, API tokens and the audit trail. \
                       Errors always have the shape {\"error\":{\"code\",\"message\",\"field\"}}.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
    security(("bearer" = []), ("session" = []))
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "API token (kw_…) created with `keyward admin token create`",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "Browser session from POST /api/v1/auth/session; state-changing requests also need X-CSRF-Token",
            ))),
        );
    }
}

pub async fn serve(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.openapi_json.clone(),
    )
}

/// The whole document: the annotations of every route under `/api/v1`.
pub fn document() -> utoipa::openapi::OpenApi {
    let (_, api) = crate::api::router().split_for_parts();
    let mut doc = ApiDoc::openapi();
    // Paths are annotated relative to /api/v1; publish them absolute.
    let mut paths = utoipa::openapi::path::Paths::new();
    for (path, item) in api.paths.paths {
        paths.paths.insert(format!("/api/v1{path}"), item);
    }
    doc.paths = paths;
    if let Some(c) = api.components {
        let target = doc.components.get_or_insert_with(Default::default);
        target.schemas.extend(c.schemas);
    }
    doc
}

#[cfg(test)]
mod tests {
    /// Client generators name their methods after operationIds: each
    /// operation has its own (openapi-spec-validator refuses duplicates; the
    /// whole document is validated by it in crates/keyward/tests/api_roles.rs).
    #[test]
    fn every_operation_has_its_own_operation_id() {
        let doc = super::document();
        let mut seen = std::collections::BTreeMap::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
                ("patch", &item.patch),
            ] {
                let Some(op) = op else { continue };
                let id = op
                    .operation_id
                    .clone()
                    .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                seen.entry(id)
                    .or_insert_with(Vec::new)
                    .push(format!("{method} {path}"));
            }
        }
        let dup: Vec<_> = seen.iter().filter(|(_, v)| v.len() > 1).collect();
        assert!(dup.is_empty(), "operationIds used twice: {dup:#?}");
        assert!(seen.len() >= 59, "{} operations", seen.len());
    }
}
