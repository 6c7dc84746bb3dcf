//! The portal's security over plain HTTP, without a browser (the browser
//! suite in tests/browser covers the pages themselves): signed out, pages
//! lead to the sign-in form; sign-in and signed-in form posts without their
//! CSRF token are 403; cookie flags; every page carries a Content-Security-
//! Policy without unsafe-inline and has no inline script or style; the roles
//! see only their pages.

use crate::support;

use reqwest::blocking::{Client, Response};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use support::TestServer;

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn set_cookies(r: &Response) -> Vec<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_value(cookies: &[String], name: &str) -> Option<String> {
    cookies.iter().find_map(|c| {
        c.strip_prefix(&format!("{name}="))
            .map(|rest| rest.split(';').next().unwrap().to_string())
    })
}

fn hidden_csrf(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

fn assert_page_is_clean(path: &str, r: Response) -> String {
    let csp = r
        .headers()
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{path}: no CSP"))
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
    let html = r.text().unwrap();
    for (i, _) in html.match_indices("<script") {
        let tag = &html[i..i + html[i..].find('>').unwrap()];
        assert!(tag.contains("src="), "{path}: inline script {tag}");
    }
    assert!(!html.contains(" style="), "{path}: a style attribute");
    assert!(!html.contains("<style"), "{path}: a style element");
    html
}

/// Signs in through the form; returns the session cookie header value.
fn sign_in(server: &TestServer, login: &str, password: &str) -> (u16, Vec<String>) {
    let c = client();
    let page = c.get(format!("{}/signin", server.url)).send().unwrap();
    let pre = cookie_value(&set_cookies(&page), "kw_signin_csrf").unwrap();
    let csrf = hidden_csrf(&page.text().unwrap());
    let r = c
        .post(format!("{}/signin", server.url))
        .header(COOKIE, format!("kw_signin_csrf={pre}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("login", login),
            ("password", password),
        ])
        .send()
        .unwrap();
    (r.status().as_u16(), set_cookies(&r))
}

#[test]
fn sign_in_needs_its_csrf_token_and_sets_strict_http_only_cookies() {
    let server = TestServer::start();
    let otp = server
        .first_admin_password
        .clone()
        .expect("bootstrap password");
    let c = client();

    // Signed out: / and every page lead to the sign-in form.
    for path in ["/", "/users", "/admin/settings", "/me"] {
        let r = c.get(format!("{}{path}", server.url)).send().unwrap();
        assert_eq!(r.status().as_u16(), 303, "{path}");
        assert_eq!(r.headers()[LOCATION], "/signin", "{path}");
    }
    let page = c.get(format!("{}/signin", server.url)).send().unwrap();
    let pre_cookie = set_cookies(&page)
        .into_iter()
        .find(|c| c.starts_with("kw_signin_csrf="))
        .expect("pre-session CSRF cookie");
    assert!(pre_cookie.contains("HttpOnly"), "{pre_cookie}");
    assert!(pre_cookie.contains("SameSite=Strict"), "{pre_cookie}");
    let html = assert_page_is_clean("/signin", page);
    assert!(html.contains(r#"<form method="post" action="/signin""#));

    // Forged: no token, a token without its cookie, a cookie with another token.
    let pre = pre_cookie
        .strip_prefix("kw_signin_csrf=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let attempts: [(Option<&str>, Option<&str>); 3] = [
        (None, None),
        (Some(pre.as_str()), None),
        (Some("someone-elses-token"), Some(pre.as_str())),
    ];
    for (field, cookie) in attempts {
        let mut form = vec![("login", "admin"), ("password", otp.as_str())];
        if let Some(f) = field {
            form.push(("csrf", f));
        }
        let mut req = c.post(format!("{}/signin", server.url)).form(&form);
        if let Some(k) = cookie {
            req = req.header(COOKIE, format!("kw_signin_csrf={k}"));
        }
        let r = req.send().unwrap();
        assert_eq!(r.status().as_u16(), 403, "{field:?} {cookie:?}");
        assert!(cookie_value(&set_cookies(&r), "kw_session").is_none());
    }

    // Wrong password: the form again (401), no session.
    let (status, cookies) = sign_in(&server, "admin", "not-the-password");
    assert_eq!(status, 401);
    assert!(cookie_value(&cookies, "kw_session").is_none());

    // The right one: a session cookie, HttpOnly, SameSite=Strict (no TLS: not Secure).
    let (status, cookies) = sign_in(&server, "admin", &otp);
    assert_eq!(status, 303);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("kw_session="))
        .expect("session cookie");
    assert!(session.contains("HttpOnly") && session.contains("SameSite=Strict"));
    assert!(!session.contains("Secure"));
    let sid = cookie_value(&cookies, "kw_session").unwrap();

    // A one-time password: every page leads to the password change first.
    let r = c
        .get(format!("{}/users", server.url))
        .header(COOKIE, format!("kw_session={sid}"))
        .send()
        .unwrap();
    assert_eq!(r.headers()[LOCATION], "/password");
    let page = c
        .get(format!("{}/password", server.url))
        .header(COOKIE, format!("kw_session={sid}"))
        .send()
        .unwrap();
    let csrf = hidden_csrf(&assert_page_is_clean("/password", page));
    let change = |token: Option<&str>| {
        let mut form = vec![
            ("current_password", otp.as_str()),
            ("new_password", "admin-password-1"),
            ("confirm_password", "admin-password-1"),
        ];
        if let Some(t) = token {
            form.push(("csrf", t));
        }
        c.post(format!("{}/password", server.url))
            .header(COOKIE, format!("kw_session={sid}"))
            .form(&form)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(change(None), 403, "a signed-in form post without its token");
    assert_eq!(change(Some("forged")), 403);
    assert_eq!(change(Some(&csrf)), 200);

    // Every administrator page: CSP, no inline script or style.
    for path in [
        "/users",
        "/users/nobody",
        "/devices",
        "/agents",
        "/admin/policies",
        "/admin/settings",
        "/admin/passkey-services",
        "/admin/operators",
        "/admin/audit",
        "/password",
    ] {
        let r = c
            .get(format!("{}{path}", server.url))
            .header(COOKIE, format!("kw_session={sid}"))
            .send()
            .unwrap();
        let status = r.status().as_u16();
        assert!(
            status == 200 || (path == "/users/nobody" && status == 404),
            "{path}: {status}"
        );
        assert_page_is_clean(path, r);
    }
    // The static files the pages use are served with their types.
    for (file, mime) in [
        ("app.css", "text/css"),
        ("add_device.js", "text/javascript"),
    ] {
        let r = c
            .get(format!("{}/static/{file}", server.url))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with(mime));
    }
    // Sign-out without its token is refused and the session lives on.
    let r = c
        .post(format!("{}/signout", server.url))
        .header(COOKIE, format!("kw_session={sid}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = c
        .get(format!("{}/users", server.url))
        .header(COOKIE, format!("kw_session={sid}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[test]
fn each_role_sees_only_its_pages() {
    let server = TestServer::start();
    let (s, v) = server.call(
        "POST",
        "/users",
        Some(serde_json::json!({ "login": "alice", "display_name": "Alice Archer" })),
    );
    assert_eq!(s, 201, "{v}");
    let c = client();
    let mut seen = Vec::new();
    for (login, role, user) in [
        ("hd", "help_desk", None),
        ("op", "issuance_operator", None),
        ("alice", "user", Some("alice")),
    ] {
        let (s, v) = server.call(
            "POST",
            "/operators",
            Some(serde_json::json!({ "login": login, "role": role, "user_login": user })),
        );
        assert_eq!(s, 201, "{v}");
        let otp = v["one_time_password"].as_str().unwrap().to_string();
        let (status, cookies) = sign_in(&server, login, &otp);
        assert_eq!(status, 303);
        let sid = cookie_value(&cookies, "kw_session").unwrap();
        let page = c
            .get(format!("{}/password", server.url))
            .header(COOKIE, format!("kw_session={sid}"))
            .send()
            .unwrap();
        let csrf = hidden_csrf(&page.text().unwrap());
        let new = format!("{login}-password-1");
        let r = c
            .post(format!("{}/password", server.url))
            .header(COOKIE, format!("kw_session={sid}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("current_password", otp.as_str()),
                ("new_password", new.as_str()),
                ("confirm_password", new.as_str()),
            ])
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let status_of = |path: &str| {
            c.get(format!("{}{path}", server.url))
                .header(COOKIE, format!("kw_session={sid}"))
                .send()
                .unwrap()
                .status()
                .as_u16()
        };
        let pages = [
            "/users",
            "/users/alice/add-device",
            "/devices",
            "/agents",
            "/admin/policies",
            "/admin/settings",
            "/admin/passkey-services",
            "/admin/operators",
            "/admin/audit",
            "/me",
        ];
        let open: Vec<&str> = pages
            .iter()
            .copied()
            .filter(|p| status_of(p) == 200)
            .collect();
        for p in pages {
            assert!(
                open.contains(&p) || status_of(p) == 403,
                "{login} {p}: {}",
                status_of(p)
            );
        }
        seen.push((login, open));
    }
    assert_eq!(
        seen,
        vec![
            // The help desk replaces and recycles devices at its agents.
            ("hd", vec!["/users", "/devices", "/agents"]),
            (
                "op",
                vec!["/users", "/users/alice/add-device", "/devices", "/agents"]
            ),
            ("alice", vec!["/agents", "/me"]),
        ]
    );
}
