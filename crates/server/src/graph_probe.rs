//! "Test connection" for a Passkey-Enabled Service: a token by OAuth2 client
//! credentials from the authority, then one user's fido2Methods from Graph
//! (which the passkey permission allows). Each failure says which step and
//! what Entra said; the secret and the token are never logged or returned.

use std::time::Duration;

use keyward_domain::PasskeyService;
use keyward_proto::PasskeyServiceTestReport;

fn report(verdict: &str, message: String, methods: Option<usize>) -> PasskeyServiceTestReport {
    PasskeyServiceTestReport {
        verdict: verdict.into(),
        message,
        fido2_methods: methods,
    }
}

pub async fn test_connection(
    service: &PasskeyService,
    client_secret: &str,
    user: &str,
) -> PasskeyServiceTestReport {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
    {
        Ok(c) => c,
        Err(e) => return report("token_failed", format!("HTTP client: {e}"), None),
    };
    let token_url = format!(
        "{}/{}/oauth2/v2.0/token",
        service.authority_url.trim_end_matches('/'),
        service.tenant_id
    );
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", service.client_id.as_str()),
        ("client_secret", client_secret),
        ("scope", service.token_scope.as_str()),
    ];
    let resp = match http.post(&token_url).form(&form).send().await {
        Ok(r) => r,
        Err(e) => {
            return report(
                "token_failed",
                format!(
                    "cannot reach the authority {}: {}",
                    service.authority_url,
                    without_url(&e)
                ),
                None,
            )
        }
    };
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    let Some(token) = body["access_token"]
        .as_str()
        .filter(|_| status.is_success())
    else {
        let why = body["error_description"]
            .as_str()
            .or(body["error"].as_str())
            .unwrap_or("no access_token in the answer");
        return report(
            "token_failed",
            format!(
                "the authority refused the client credentials (HTTP {}): {}",
                status.as_u16(),
                first_line(why)
            ),
            None,
        );
    };
    let url = format!(
        "{}/v1.0/users/{}/authentication/fido2Methods",
        service.graph_url.trim_end_matches('/'),
        encode_segment(user)
    );
    let resp = match http.get(&url).bearer_auth(token).send().await {
        Ok(r) => r,
        Err(e) => {
            return report(
                "graph_failed",
                format!(
                    "cannot reach Graph at {}: {}",
                    service.graph_url,
                    without_url(&e)
                ),
                None,
            )
        }
    };
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        let n = body["value"].as_array().map(|v| v.len()).unwrap_or(0);
        return report(
            "ok",
            format!("token obtained; user {user} has {n} passkey(s)"),
            Some(n),
        );
    }
    let code = body["error"]["code"].as_str().unwrap_or("");
    let hint = match (status.as_u16(), code) {
        (404, _) | (_, "Request_ResourceNotFound") => "user not found".to_string(),
        (403, _) => "permission missing: grant UserAuthenticationMethod.ReadWrite.All or UserAuthMethod-Passkey.ReadWrite.All (application) and admin consent".to_string(),
        (401, _) => "Graph refused the token (wrong token scope or audience?)".to_string(),
        _ => first_line(body["error"]["message"].as_str().unwrap_or("unexpected answer")).to_string(),
    };
    report(
        "graph_failed",
        format!("Graph answered HTTP {}: {hint}", status.as_u16()),
        None,
    )
}

/// reqwest errors include the URL; ours carry no secret, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
    let e = e.to_string();
    first_line(&e).to_string()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn encode_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'@' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
