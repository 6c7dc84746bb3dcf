//! The Operator Portal and the self-service User Portal: server-rendered
//! pages (askama templates compiled into the binary), one module per page,
//! and a little plain JavaScript of our own under `/static`. Pages read the
//! store directly; what changes state in the browser goes through the same
//! REST API as every other client (`/api/v1`, with the session's CSRF token
//! in `X-CSRF-Token`), so the API's permission checks and audit apply.
//!
//! Security: every page response carries a Content-Security-Policy without
//! `unsafe-inline` (no inline script or style; static files only) and
//! forbids framing; forms post with a CSRF token (sign-in included, through
//! a pre-session token cookie); PINs travel only in POST bodies.

use askama::Template;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use keyward_domain::{Permission, Role};
use subtle::ConstantTimeEq;

use crate::app::AppState;
use crate::auth::Caller;

pub mod add_device;
pub mod admin_policies;
pub mod admin_settings;
pub mod agents;
pub mod audit;
pub mod devices;
pub mod me;
pub mod operators;
pub mod passkey_services;
pub mod recycle;
pub mod requests;
pub mod signin;
pub mod static_files;
pub mod user;
pub mod users;

/// The policy every portal response carries: scripts, styles, fetches and
/// form posts only from this origin; no inline code; no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .merge(signin::routes())
        .merge(users::routes())
        .merge(user::routes())
        .merge(add_device::routes())
        .merge(devices::routes())
        .merge(recycle::routes())
        .merge(requests::routes())
        .merge(agents::routes())
        .merge(admin_policies::routes())
        .merge(admin_settings::routes())
        .merge(passkey_services::routes())
        .merge(operators::routes())
        .merge(audit::routes())
        .merge(me::routes())
        .merge(static_files::routes())
        .layer(middleware::from_fn(security_headers))
}

async fn security_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// `/`: signed out, the sign-in page; signed in, the page of one's role.
async fn home(user: Option<WebUser>) -> Redirect {
    match user {
        None => Redirect::to("/signin"),
        Some(u) if u.caller.role == Role::User => Redirect::to("/me"),
        Some(u) if u.caller.role.allows(Permission::UsersRead) => Redirect::to("/users"),
        Some(_) => Redirect::to("/devices"),
    }
}

/// The signed-in person behind a portal request, with the session's CSRF
/// token (put in each page for forms and `fetch`). Signed out, a page
/// request is redirected to the sign-in page.
#[derive(Debug, Clone)]
pub struct WebUser {
    pub caller: Caller,
    pub csrf: String,
    pub must_change_password: bool,
}

impl WebUser {
    pub fn can(&self, p: Permission) -> bool {
        self.caller.role.allows(p)
    }

    /// The page for this permission, or a 403 page.
    // The error is the whole answer of the request, built once: no need to box it.
    #[allow(clippy::result_large_err)]
    pub fn require(&self, p: Permission) -> Result<(), Response> {
        if self.can(p) {
            Ok(())
        } else {
            Err(error_page(
                self,
                StatusCode::FORBIDDEN,
                "Not allowed",
                &format!("Your role does not allow this: {}.", p.label()),
            ))
        }
    }

    /// A form post's CSRF token must be the session's.
    #[allow(clippy::result_large_err)]
    pub fn check_csrf(&self, sent: &str) -> Result<(), Response> {
        if csrf_matches(sent, &self.csrf) {
            Ok(())
        } else {
            Err(csrf_refused())
        }
    }

    /// Operators who work with devices at a workstation agent: they issue,
    /// replace or recycle devices.
    pub fn works_with_agents(&self) -> bool {
        [
            Permission::DevicesIssue,
            Permission::DevicesReplace,
            Permission::DevicesRecycle,
        ]
        .into_iter()
        .any(|p| self.can(p))
    }

    pub fn nav(&self, active: &str) -> Nav {
        let agents = self.works_with_agents();
        let mut items = Vec::new();
        let mut add = |href: &'static str, label: &'static str, p: Permission| {
            if self.can(p) {
                items.push(NavItem {
                    href,
                    label,
                    active: href == active,
                });
            }
        };
        add("/users", "Users", Permission::UsersRead);
        add("/devices", "Devices", Permission::DevicesRead);
        if self.caller.role.is_operator() {
            add("/requests", "Requests", Permission::DevicesRead);
        }
        // Agents: operators who issue, replace or recycle (DevicesRead
        // stands for "an operator" here; the check is `agents`).
        if agents && self.caller.role.is_operator() {
            add("/agents", "Agents", Permission::DevicesRead);
        }
        add("/me", "My devices", Permission::SelfService);
        add("/agents", "My agents", Permission::SelfService);
        // Administration pages: only roles that may change the configuration.
        add(
            "/admin/policies",
            "Device policies",
            Permission::PoliciesWrite,
        );
        add("/admin/settings", "Settings", Permission::SettingsWrite);
        add(
            "/admin/passkey-services",
            "Passkey-Enabled Services",
            Permission::PasskeyServicesWrite,
        );
        add("/admin/operators", "Operators", Permission::OperatorsManage);
        add("/admin/audit", "Audit trail", Permission::AuditRead);
        Nav {
            items,
            login: self.caller.login.clone(),
            role: self.caller.role.label().to_string(),
            csrf: self.csrf.clone(),
        }
    }
}

pub fn csrf_matches(sent: &str, expected: &str) -> bool {
    !sent.is_empty()
        && !expected.is_empty()
        && bool::from(sent.as_bytes().ct_eq(expected.as_bytes()))
}

pub fn csrf_refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        Html("<!doctype html><title>Refused</title><p>Refused: this form was not sent with its CSRF token. Reload the page and try again.</p>"),
    )
        .into_response()
}

/// The navigation bar of the signed-in layout.
pub struct Nav {
    pub items: Vec<NavItem>,
    pub login: String,
    pub role: String,
    pub csrf: String,
}

pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub active: bool,
}

/// Paths a session with a one-time password may still open.
const BEFORE_PASSWORD_CHANGE: &[&str] = &["/password", "/signout"];

impl FromRequestParts<AppState> for WebUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_signin = || Redirect::to("/signin").into_response();
        let session = match crate::auth::cookie_session(state, &parts.headers).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(to_signin()),
            Err(e) => return Err(e.into_response()),
        };
        if session.must_change_password && !BEFORE_PASSWORD_CHANGE.contains(&parts.uri.path()) {
            return Err(Redirect::to("/password").into_response());
        }
        Ok(WebUser {
            caller: session.caller,
            csrf: session.csrf_token,
            must_change_password: session.must_change_password,
        })
    }
}

impl axum::extract::OptionalFromRequestParts<AppState> for WebUser {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, Response> {
        match <WebUser as FromRequestParts<AppState>>::from_request_parts(parts, state).await {
            Ok(u) => Ok(Some(u)),
            Err(r) if r.status().is_redirection() => Ok(None),
            Err(r) => Err(r),
        }
    }
}

/// A store failure: logged with its context, shown without detail.
pub fn internal(context: &str, e: impl std::fmt::Display) -> Response {
    tracing::error!(context, error = %e, "portal page failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Html(format!(
            "<!doctype html><title>Error</title><p>Something went wrong while {}.</p>",
            escape(context)
        )),
    )
        .into_response()
}

/// Renders a template into a page response.
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => internal("rendering the page", e),
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    nav: Nav,
    title: &'a str,
    message: &'a str,
}

pub fn error_page(user: &WebUser, status: StatusCode, title: &str, message: &str) -> Response {
    let mut res = render(&ErrorPage {
        nav: user.nav(""),
        title,
        message,
    });
    *res.status_mut() = status;
    res
}

/// HTML-escapes text put into hand-written HTML (templates escape on their own).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The server's URL as the person reached it, for the `keyward agent
/// --server URL` hints: the configured public URL, else the scheme and the
/// request's Host (the listen address may be 0.0.0.0 or port 0).
pub fn server_url(state: &AppState, headers: &axum::http::HeaderMap) -> String {
    if state.config.public_url.is_some() {
        return state.config.public_url();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        });
    match host {
        Some(h) => format!(
            "{}://{h}",
            if state.config.tls.is_some() {
                "https"
            } else {
                "http"
            }
        ),
        None => state.config.public_url(),
    }
}

/// A time as pages show it (UTC, to the minute).
pub fn when(t: time::OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_match_only_when_equal_and_present() {
        assert!(csrf_matches("abc", "abc"));
        assert!(!csrf_matches("abd", "abc"));
        assert!(!csrf_matches("", ""));
        assert!(!csrf_matches("abc", ""));
        assert!(!csrf_matches("", "abc"));
        assert!(!csrf_matches("abcd", "abc"));
    }

    #[test]
    fn the_policy_forbids_inline_code_and_framing() {
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-eval"));
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(CONTENT_SECURITY_POLICY.contains("form-action 'self'"));
    }

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
