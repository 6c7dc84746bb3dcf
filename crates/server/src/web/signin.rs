//! Sign-in, sign-out and the change of a one-time password, as plain HTML
//! forms. Sign-in has no session yet, so its CSRF token is a double submit:
//! the page sets a random token in an HttpOnly, SameSite=Strict cookie and
//! in a hidden field; a post whose field does not match the cookie is 403.

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::{csrf_matches, csrf_refused, internal, render, Nav, WebUser};
use crate::api::session::{check_new_password, random_b64};
use crate::app::AppState;
use crate::auth::Via;

/// The pre-session CSRF cookie of the sign-in form.
const SIGNIN_CSRF_COOKIE: &str = "kw_signin_csrf";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/signin", get(page).post(sign_in))
        .route("/signout", post(sign_out))
        .route("/password", get(password_page).post(change_password))
}

#[derive(Template)]
#[template(path = "signin.html")]
struct SignInPage {
    csrf: String,
    error: Option<String>,
    login: String,
}

use crate::sign_in::secure_flag as secure;

fn signin_form(state: &AppState, error: Option<String>, login: String) -> Response {
    signin_form_status(state, error, login, None)
}

/// The sign-in form; `limited`: too many attempts, answered 429 with
/// `Retry-After`.
fn signin_form_status(
    state: &AppState,
    error: Option<String>,
    login: String,
    limited: Option<std::time::Duration>,
) -> Response {
    let csrf = random_b64(32);
    let cookie = format!(
        "{SIGNIN_CSRF_COOKIE}={csrf}; Path=/signin; HttpOnly; SameSite=Strict; Max-Age=3600{}",
        secure(state)
    );
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    let mut res = render(&SignInPage { csrf, error, login });
    *res.status_mut() = status;
    if let Some(wait) = limited {
        *res.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
    }
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("cookie is ASCII"),
    );
    res
}

async fn page(State(state): State<AppState>, user: Option<WebUser>) -> Response {
    if user.is_some() {
        return Redirect::to("/").into_response();
    }
    signin_form(&state, None, String::new())
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
}

use crate::sign_in::printable;

async fn sign_in(
    State(state): State<AppState>,
    crate::limits::ClientIp(ip): crate::limits::ClientIp,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let expected = crate::auth::cookie(&headers, SIGNIN_CSRF_COOKIE).unwrap_or_default();
    if !csrf_matches(&form.csrf, &expected) {
        return csrf_refused();
    }
    let login = form.login;
    let signed_in = match crate::sign_in::sign_in(
        &state,
        &login,
        form.password,
        crate::sign_in::Channel::Portal,
        ip,
    )
    .await
    {
        Ok(crate::sign_in::Outcome::SignedIn(s)) => s,
        Ok(crate::sign_in::Outcome::Refused) => {
            return signin_form(
                &state,
                Some("Unknown login or wrong password.".into()),
                printable(&login),
            )
        }
        Ok(crate::sign_in::Outcome::Limited(wait)) => {
            return signin_form_status(
                &state,
                Some(format!(
                    "Too many sign-in attempts. Try again in {} seconds.",
                    wait.as_secs() + 1
                )),
                printable(&login),
                Some(wait),
            )
        }
        Err((context, e)) => return internal(context, e),
    };
    let account = signed_in.account;
    let session_cookie = crate::sign_in::session_cookie(&state, &signed_in.session_id);
    let clear =
        format!("{SIGNIN_CSRF_COOKIE}=; Path=/signin; HttpOnly; SameSite=Strict; Max-Age=0");
    let mut res = Redirect::to(if account.must_change_password {
        "/password"
    } else {
        "/"
    })
    .into_response();
    let h = res.headers_mut();
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_str(&session_cookie).expect("cookie is ASCII"),
    );
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).expect("cookie is ASCII"),
    );
    res
}

/// The `csrf` field of a form body. Tokens are URL-safe base64, so the
/// value needs no decoding; any body (or none) without it is refused.
fn csrf_field(body: &[u8]) -> String {
    std::str::from_utf8(body)
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "csrf")
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

async fn sign_out(
    State(state): State<AppState>,
    user: WebUser,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = user.check_csrf(&csrf_field(&body)) {
        return r;
    }
    if let Via::Session { session_hash, .. } = &user.caller.via {
        let draft = crate::api::audit(
            &user.caller,
            "auth.sign_out",
            format!("account:{}", user.caller.login),
            serde_json::json!({ "via": "portal" }),
        );
        if let Err(e) = state.store.delete_session(session_hash, &draft).await {
            return internal("signing out", e);
        }
    }
    let clear = crate::sign_in::clear_session_cookie(&state);
    let mut res = Redirect::to("/signin").into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&clear).expect("cookie is ASCII"),
    );
    res
}

#[derive(Template)]
#[template(path = "password.html")]
struct PasswordPage {
    nav: Nav,
    must_change: bool,
    error: Option<String>,
    done: bool,
}

async fn password_page(user: WebUser) -> Response {
    render(&PasswordPage {
        nav: user.nav(""),
        must_change: user.must_change_password,
        error: None,
        done: false,
    })
}

#[derive(Deserialize)]
struct PasswordForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    confirm_password: String,
}

async fn change_password(
    State(state): State<AppState>,
    user: WebUser,
    Form(form): Form<PasswordForm>,
) -> Response {
    if let Err(r) = user.check_csrf(&form.csrf) {
        return r;
    }
    let again = |error: String| {
        let mut res = render(&PasswordPage {
            nav: user.nav(""),
            must_change: user.must_change_password,
            error: Some(error),
            done: false,
        });
        *res.status_mut() = StatusCode::BAD_REQUEST;
        res
    };
    let Some(account_id) = user.caller.account_id() else {
        return again("API tokens have no password.".into());
    };
    if let Err(e) = check_new_password(&form.new_password, "new_password") {
        return again(e.detail.message);
    }
    if form.new_password != form.confirm_password {
        return again("The new password and its confirmation differ.".into());
    }
    if form.new_password == form.current_password {
        return again("Choose a password different from the current one.".into());
    }
    let account = match state.store.get_account(account_id).await {
        Ok(a) => a,
        Err(e) => return internal("changing the password", e),
    };
    if !crate::sign_in::password_matches(
        &state,
        form.current_password,
        account.password_hash.clone(),
    )
    .await
    {
        return again("The current password is wrong.".into());
    }
    let phc = crate::secrets::hash_bounded(&state, form.new_password).await;
    let draft = crate::api::audit(
        &user.caller,
        "auth.password_change",
        format!("account:{}", user.caller.login),
        serde_json::json!({ "via": "portal" }),
    );
    let keep = match &user.caller.via {
        crate::auth::Via::Session { session_hash, .. } => Some(session_hash.as_slice()),
        _ => None,
    };
    if let Err(e) = state
        .store
        .change_own_password(account_id, &phc, keep, &draft)
        .await
    {
        return internal("changing the password", e);
    }
    render(&PasswordPage {
        nav: user.nav(""),
        must_change: false,
        error: None,
        done: true,
    })
}

#[cfg(test)]
mod tests {
    use super::csrf_field;

    #[test]
    fn the_csrf_field_is_read_from_a_form_body() {
        assert_eq!(csrf_field(b"a=1&csrf=tok-EN_1&b=2"), "tok-EN_1");
        assert_eq!(csrf_field(b"csrfx=1&xcsrf=2"), "");
        assert_eq!(csrf_field(b""), "");
        assert_eq!(csrf_field(&[0xff, 0xfe]), "");
    }
}
