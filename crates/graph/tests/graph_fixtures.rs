//! The Graph client over real HTTP against a scripted server whose answers
//! are the request and response examples of Microsoft's Graph documentation
//! (fido2AuthenticationMethod: creationOptions, Create and List
//! fido2AuthenticationMethod), and the identity platform's token response.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keyward_graph::model::{AttestationResponse, PublicKeyCredential};
use keyward_graph::{
    ApiVersion, GraphClient, GraphConfig, GraphError, NewFido2Method, RetryPolicy,
};

const SECRET: &str = "s3cr3t~Value.With_Chars";

/// creationOptions, v1.0 example.
const CREATION_OPTIONS: &str = r##"{
  "@odata.type": "#microsoft.graph.webauthnCredentialCreationOptions",
  "challengeTimeoutDateTime": "2026-04-20T10:05:00Z",
  "publicKey": {
    "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialCreationOptions",
    "rp": {
      "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialRpEntity",
      "id": "login.microsoftonline.com",
      "name": "Microsoft"
    },
    "user": {
      "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialUserEntity",
      "id": "ZGF2aWRAY29udG9zby5jb20",
      "displayName": "David Smith",
      "name": "david@contoso.com"
    },
    "challenge": "QTU1MzNDNzAtNkM3Ni00NTRDLUJDQ0YtRTREMDZCNTBFRTRE",
    "pubKeyCredParams": [
      {
        "@odata.type": "#microsoft.graph.webauthnPublicKeyCredentialParameters",
        "type": "public-key",
        "alg": -7
      }
    ],
    "timeout": 60000,
    "excludeCredentials": [],
    "authenticatorSelection": {
      "@odata.type": "#microsoft.graph.webauthnAuthenticatorSelectionCriteria",
      "authenticatorAttachment": "platform",
      "requireResidentKey": true,
      "userVerification": "required"
    },
    "attestation": "direct",
    "extensions": {
      "@odata.type": "#microsoft.graph.webauthnAuthenticationExtensionsClientInputs"
    }
  }
}"##;

/// Create fido2AuthenticationMethod: the documented request body.
const CREATE_REQUEST: &str = r##"{
  "@odata.type": "#microsoft.graph.fido2AuthenticationMethod",
  "displayName": "Red Key",
  "publicKeyCredential": {
    "id": "pgIfj2fnom8rJdb4_h1gKqDkq-gxHFksI-m2aR5T-PNNycBfENAM4ksEBvoXky6d",
    "response": {
      "clientDataJSON": "VGhpcyBpcyB0aGUgY2xpZW50RGF0YUpTT04gZW5jb2RlZCB0byBiZSB3ZWJzYWZlIHdoaWNoIHdpbGwgYmUgc2VudCB0byBFbnRyYSBJRA",
      "attestationObject": "VGhpcyBpcyB0aGUgYXR0ZXN0YXRpb25PYmplY3QgZW5jb2RlZCB0byBiZSB3ZWJzYWZlIHdoaWNoIHdpbGwgYmUgc2VudCB0byBFbnRyYSBJRA"
    }
  }
}"##;

/// ... and its documented 201 answer.
const CREATE_RESPONSE: &str = r##"{
  "@odata.type": "#microsoft.graph.fido2AuthenticationMethod",
  "id": "73ecec75-b546-cd6a-d74d-8bb81e58d4a7",
  "displayName": "Red Key",
  "createdDateTime": "2020-08-10T06:44:09Z",
  "aaGuid": "2fc0579f-8113-47ea-b116-555a8db9202a",
  "model": "NFC Key",
  "attestationCertificates": [
    "dbe793efdf1945e2df25d93653a1e8a3268a9075"
  ],
  "attestationLevel": "attested"
}"##;

/// List fido2AuthenticationMethods, v1.0 example.
const LIST_RESPONSE: &str = r##"{
  "value": [
    {
      "id": "-2_GRUg2-HYz6_1YG4YRAQ2",
      "displayName": "Red key",
      "creationDateTime": "2020-08-10T06:44:09Z",
      "aaGuid": "2fc0579f-8113-47ea-b116-555a8db9202a",
      "model": "NFC key",
      "attestationCertificates": [
          "dbe793efdf1945e2df25d93653a1e8a3268a9075"
      ],
      "attestationLevel": "attested"
    },
    {
      "id": "_jpuR-TGZgk6aQCLF3BQjA2",
      "displayName": "Blue key",
      "creationDateTime": "2020-08-10T06:25:38Z",
      "aaGuid": "c5ef55ff-ad9a-4b9f-b580-ababafe026d0",
      "model": "USB key",
      "attestationCertificates": [
          "b479e7652167f574296e76bfa76731b8ccd22ed7"
      ],
      "attestationLevel": "attested"
    }
  ]
}"##;

const TOKEN_RESPONSE: &str = r#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fixture"}"#;

fn graph_error(code: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "message": message,
        "innerError": { "date": "2026-04-20T10:00:00", "request-id": "b1d4c2a0-0000-0000-0000-000000000000", "client-request-id": "b1d4c2a0-0000-0000-0000-000000000000" } } })
    .to_string()
}

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: String,
    body: String,
}

#[derive(Default)]
struct Script {
    /// Answers to Graph calls, in order: (status, Retry-After, body).
    graph: VecDeque<(u16, Option<&'static str>, String)>,
    /// Answers of the token endpoint (default: the fixture).
    token: VecDeque<(u16, String)>,
    token_requests: Vec<String>,
    seen: Vec<Seen>,
}

type Shared = Arc<Mutex<Script>>;

async fn handler(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = s.lock().unwrap();
    let body = String::from_utf8_lossy(&body).to_string();
    if uri.path().ends_with("/oauth2/v2.0/token") {
        s.token_requests.push(body);
        let (status, answer) = s
            .token
            .pop_front()
            .unwrap_or((200, TOKEN_RESPONSE.to_string()));
        return (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            answer,
        )
            .into_response();
    }
    s.seen.push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body,
    });
    let Some((status, retry, answer)) = s.graph.pop_front() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "script ran out").into_response();
    };
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        answer,
    )
        .into_response();
    if let Some(v) = retry {
        r.headers_mut().insert("retry-after", v.parse().unwrap());
    }
    r
}

async fn server() -> (String, Shared) {
    let shared: Shared = Arc::default();
    let app = axum::Router::new()
        .fallback(handler)
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, shared)
}

fn client(url: &str, version: ApiVersion) -> GraphClient {
    let mut cfg = GraphConfig::new(
        &format!("{url}/authority"),
        "contoso.onmicrosoft.com",
        "00000000-0000-0000-0000-00000000c11e",
        SECRET,
        "https://graph.microsoft.com/.default",
        &format!("{url}/graph"),
    );
    cfg.api_version = version;
    cfg.retry = RetryPolicy {
        max_retries: 2,
        max_wait: Duration::from_millis(200),
        default_wait: Duration::from_millis(10),
    };
    GraphClient::new(cfg).unwrap()
}

#[tokio::test]
async fn creation_options_v1_with_cached_token() {
    let (url, s) = server().await;
    {
        let mut g = s.lock().unwrap();
        g.graph.push_back((200, None, CREATION_OPTIONS.into()));
        g.graph.push_back((200, None, CREATION_OPTIONS.into()));
    }
    let c = client(&url, ApiVersion::V1);
    let user = "99a1915f-70a7-4b67-9dca-64095b41be73";
    let o = c.creation_options(user, Some(10)).await.unwrap();
    assert_eq!(o.challenge_timeout_date_time, "2026-04-20T10:05:00Z");
    assert_eq!(o.public_key.rp.id, "login.microsoftonline.com");
    assert_eq!(o.public_key.origin(), "https://login.microsoftonline.com");
    assert_eq!(o.public_key.user_id_bytes().unwrap(), b"david@contoso.com");
    assert_eq!(
        o.public_key.challenge_bytes().unwrap(),
        b"A5533C70-6C76-454C-BCCF-E4D06B50EE4D"
    );
    assert_eq!(o.public_key.pub_key_cred_params[0].alg, -7);
    let sel = o.public_key.authenticator_selection.as_ref().unwrap();
    assert_eq!(sel.user_verification.as_deref(), Some("required"));
    assert_eq!(sel.require_resident_key, Some(true));
    c.creation_options(user, None).await.unwrap();

    let g = s.lock().unwrap();
    // One token for both calls; v1.0 takes no challenge timeout.
    assert_eq!(g.token_requests.len(), 1);
    let form = &g.token_requests[0];
    assert!(form.contains("grant_type=client_credentials"), "{form}");
    assert!(form.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"));
    assert_eq!(
        g.seen[0].path,
        format!("/graph/v1.0/users/{user}/authentication/fido2Methods/creationOptions")
    );
    assert_eq!(g.seen[0].method, "GET");
    assert_eq!(
        g.seen[0].authorization,
        "Bearer eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fixture"
    );
}

#[tokio::test]
async fn creation_options_beta_with_timeout() {
    let (url, s) = server().await;
    // The beta page shows the options wrapped in "value".
    let wrapped = format!(r#"{{"value": {CREATION_OPTIONS}}}"#);
    s.lock().unwrap().graph.push_back((200, None, wrapped));
    let c = client(&url, ApiVersion::Beta);
    let o = c
        .creation_options("david@contoso.com", Some(10))
        .await
        .unwrap();
    assert_eq!(o.public_key.rp.name, "Microsoft");
    let g = s.lock().unwrap();
    assert_eq!(
        g.seen[0].path,
        "/graph/beta/users/david@contoso.com/authentication/fido2Methods/creationOptions(challengeTimeoutInMinutes=10)"
    );
}

#[tokio::test]
async fn register_sends_the_documented_body() {
    let (url, s) = server().await;
    s.lock()
        .unwrap()
        .graph
        .push_back((201, None, CREATE_RESPONSE.into()));
    let c = client(&url, ApiVersion::V1);
    let doc: serde_json::Value = serde_json::from_str(CREATE_REQUEST).unwrap();
    let cred = &doc["publicKeyCredential"];
    let method = NewFido2Method::new(
        "Red Key",
        PublicKeyCredential {
            id: cred["id"].as_str().unwrap().into(),
            response: AttestationResponse {
                client_data_json: cred["response"]["clientDataJSON"].as_str().unwrap().into(),
                attestation_object: cred["response"]["attestationObject"]
                    .as_str()
                    .unwrap()
                    .into(),
            },
            client_extension_results: None,
        },
    );
    let m = c.register("david@contoso.com", &method).await.unwrap();
    assert_eq!(m.id, "73ecec75-b546-cd6a-d74d-8bb81e58d4a7");
    assert_eq!(
        m.aa_guid.as_deref(),
        Some("2fc0579f-8113-47ea-b116-555a8db9202a")
    );
    assert_eq!(m.attestation_level.as_deref(), Some("attested"));
    assert_eq!(m.created_date_time.as_deref(), Some("2020-08-10T06:44:09Z"));
    let g = s.lock().unwrap();
    assert_eq!(g.seen[0].method, "POST");
    assert_eq!(
        g.seen[0].path,
        "/graph/v1.0/users/david@contoso.com/authentication/fido2Methods"
    );
    let sent: serde_json::Value = serde_json::from_str(&g.seen[0].body).unwrap();
    assert_eq!(sent, doc, "the body is the documented example");
}

#[tokio::test]
async fn list_and_delete() {
    let (url, s) = server().await;
    {
        let mut g = s.lock().unwrap();
        g.graph.push_back((200, None, LIST_RESPONSE.into()));
        g.graph.push_back((204, None, String::new()));
        g.graph.push_back((
            404,
            None,
            graph_error("itemNotFound", "The requested method was not found."),
        ));
    }
    let c = client(&url, ApiVersion::V1);
    let list = c.list("david@contoso.com").await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].model.as_deref(), Some("USB key"));
    assert_eq!(
        list[0].created_date_time.as_deref(),
        Some("2020-08-10T06:44:09Z")
    );
    assert!(c.delete("david@contoso.com", &list[0].id).await.unwrap());
    assert!(!c.delete("david@contoso.com", &list[0].id).await.unwrap());
    let g = s.lock().unwrap();
    assert_eq!(g.seen[1].method, "DELETE");
    assert_eq!(
        g.seen[1].path,
        "/graph/v1.0/users/david@contoso.com/authentication/fido2Methods/-2_GRUg2-HYz6_1YG4YRAQ2"
    );
}

#[tokio::test]
async fn throttling_is_retried_after_retry_after() {
    let (url, s) = server().await;
    {
        let mut g = s.lock().unwrap();
        let busy = graph_error("TooManyRequests", "Too many requests.");
        g.graph.push_back((429, Some("0"), busy.clone()));
        g.graph.push_back((503, None, busy.clone()));
        g.graph.push_back((200, None, LIST_RESPONSE.into()));
        // Then always busy: bounded retries.
        for _ in 0..3 {
            g.graph.push_back((429, Some("1"), busy.clone()));
        }
    }
    let c = client(&url, ApiVersion::V1);
    assert_eq!(c.list("u@contoso.com").await.unwrap().len(), 2);
    let started = std::time::Instant::now();
    let e = c.list("u@contoso.com").await.unwrap_err();
    assert_eq!(
        e,
        GraphError::Throttled {
            status: 429,
            attempts: 3
        }
    );
    // Retry-After 1 s is cut to the policy's 200 ms maximum.
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(s.lock().unwrap().seen.len(), 6);
}

#[tokio::test]
async fn errors_say_what_to_fix() {
    let (url, s) = server().await;
    {
        let mut g = s.lock().unwrap();
        g.graph.push_back((
            404,
            None,
            graph_error(
                "Request_ResourceNotFound",
                "Resource 'nobody@contoso.com' does not exist or one of its queried reference-property objects are not present.",
            ),
        ));
        g.graph.push_back((
            403,
            None,
            graph_error("accessDenied", "Request Authorization failed"),
        ));
        g.graph.push_back((
            403,
            None,
            graph_error(
                "accessDenied",
                "The FIDO2 authentication method policy does not allow self-service setup.",
            ),
        ));
        g.graph.push_back((
            400,
            None,
            graph_error(
                "invalidRequest",
                "The attestation of the authenticator could not be verified.",
            ),
        ));
    }
    let c = client(&url, ApiVersion::V1);
    let e = c.list("nobody@contoso.com").await.unwrap_err();
    assert!(matches!(e, GraphError::UserNotFound { .. }), "{e}");
    let e = c.creation_options("u@contoso.com", None).await.unwrap_err();
    assert!(matches!(e, GraphError::PermissionMissing { .. }), "{e}");
    assert!(e
        .to_string()
        .contains("UserAuthMethod-Passkey.ReadWrite.All"));
    assert!(e
        .to_string()
        .contains("UserAuthenticationMethod.ReadWrite.All"));
    let e = c.creation_options("u@contoso.com", None).await.unwrap_err();
    assert!(matches!(e, GraphError::SelfServiceNotAllowed { .. }), "{e}");
    let doc: NewFido2Method = serde_json::from_str(CREATE_REQUEST).unwrap();
    let e = c.register("u@contoso.com", &doc).await.unwrap_err();
    assert!(matches!(e, GraphError::RegistrationRefused { .. }), "{e}");
    assert!(e.to_string().contains("attestation"));
}

#[tokio::test]
async fn refused_credentials_and_a_revoked_token() {
    let (url, s) = server().await;
    {
        let mut g = s.lock().unwrap();
        g.token.push_back((
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: x","error_codes":[7000215]}"#.into(),
        ));
        // A token Graph refuses once: renewed and the call repeated.
        g.graph.push_back((
            401,
            None,
            graph_error("InvalidAuthenticationToken", "Access token has expired."),
        ));
        g.graph.push_back((200, None, LIST_RESPONSE.into()));
    }
    let c = client(&url, ApiVersion::V1);
    let e = c.list("u@contoso.com").await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, GraphError::Token { status: 401, .. }), "{msg}");
    assert!(msg.contains("AADSTS7000215") && !msg.contains("Trace ID"));
    assert!(!msg.contains(SECRET) && !format!("{e:?}").contains(SECRET));
    assert!(!format!("{c:?}").contains(SECRET));
    assert_eq!(c.list("u@contoso.com").await.unwrap().len(), 2);
    assert_eq!(s.lock().unwrap().token_requests.len(), 3);
}
