//! Certificate credentials end to end over real HTTP: the production Graph
//! client signs a client assertion (PS256, x5t#S256) and the simulated
//! tenant's token endpoint verifies it as Entra does, refusing another key,
//! a reused jti and a wrong audience. Needs the `openssl` CLI (test keys).

use std::path::PathBuf;
use std::process::Command;

use keyward_entra_standin::{StandinConfig, StandinHandle, StandinUser};
use keyward_graph::assertion::JWT_BEARER;
use keyward_graph::{ClientCertificate, GraphClient, GraphConfig, GraphError};

const TENANT: &str = "contoso.onmicrosoft.com";
const CLIENT: &str = "00000000-0000-0000-0000-0000000c11e1";
const UPN: &str = "alice@contoso.com";

/// A self-signed RSA certificate and its key (PEM), made by openssl.
fn rsa_certificate(tag: &str) -> (String, String) {
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "keyward-cert-cred-{}-{tag}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=keyward-test-client"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let out = (
        std::fs::read_to_string(&cert).unwrap(),
        std::fs::read_to_string(&key).unwrap(),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

fn trust_root() -> String {
    use x509_cert::der::{Decode, EncodePem};
    let (_, _, root) = keyward_vcard::fido::attestation::test_ca().unwrap();
    x509_cert::Certificate::from_der(&root)
        .unwrap()
        .to_pem(x509_cert::der::pem::LineEnding::LF)
        .unwrap()
}

async fn standin(cert_pem: &str) -> StandinHandle {
    let mut cfg = StandinConfig::new(TENANT, CLIENT, "unused-secret", vec![trust_root()]);
    cfg.client_certificate_pem = Some(cert_pem.into());
    cfg.users.push(StandinUser::new(UPN, "Alice Example"));
    keyward_entra_standin::serve(cfg).await.unwrap()
}

fn client(s: &StandinHandle, cert: &str, key: &str) -> GraphClient {
    let cfg = GraphConfig::new(
        &s.authority_url(),
        TENANT,
        CLIENT,
        "",
        "https://graph.microsoft.com/.default",
        &s.graph_url(),
    )
    .with_certificate(cert, key)
    .unwrap();
    GraphClient::new(cfg).unwrap()
}

fn token_url(s: &StandinHandle) -> String {
    format!("{}/{TENANT}/oauth2/v2.0/token", s.authority_url())
}

async fn post_assertion(s: &StandinHandle, assertion: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(token_url(s))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("scope", "https://graph.microsoft.com/.default"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
        ])
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_certificate_credential_gets_a_token_and_another_key_is_refused() {
    let (cert, key) = rsa_certificate("good");
    let s = standin(&cert).await;

    // The production client: assertion instead of secret, then a Graph call.
    let methods = client(&s, &cert, &key).list(UPN).await.unwrap();
    assert!(methods.is_empty());

    // Another key presenting the registered certificate's thumbprint cannot
    // be built (the key must match its certificate) ...
    let (other_cert, other_key) = rsa_certificate("other");
    let e = ClientCertificate::from_pem(&cert, &other_key).unwrap_err();
    assert!(e.to_string().contains("does not match"), "{e}");
    // ... and a certificate the application does not have is refused by the tenant.
    let e = client(&s, &other_cert, &other_key)
        .list(UPN)
        .await
        .unwrap_err();
    assert!(matches!(e, GraphError::Token { status: 401, .. }), "{e}");
    assert!(e.to_string().contains("AADSTS700027"), "{e}");

    // An assertion is single use (jti).
    let good = ClientCertificate::from_pem(&cert, &key).unwrap();
    let a = good.assertion(CLIENT, &token_url(&s)).unwrap();
    let (status, body) = post_assertion(&s, &a).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_assertion(&s, &a).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].as_str().unwrap().contains("jti"));

    // The audience must be this token endpoint; iss/sub the client ID.
    let a = good
        .assertion(
            CLIENT,
            "https://login.microsoftonline.com/other/oauth2/v2.0/token",
        )
        .unwrap();
    let (status, body) = post_assertion(&s, &a).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error_description"]
        .as_str()
        .unwrap()
        .contains("audience"));
    let a = good
        .assertion("11111111-1111-1111-1111-111111111111", &token_url(&s))
        .unwrap();
    let (status, body) = post_assertion(&s, &a).await;
    assert_eq!(status, 401, "{body}");

    // A tampered signature is refused.
    let mut a = good.assertion(CLIENT, &token_url(&s)).unwrap();
    let last = a.pop().unwrap();
    a.push(if last == 'A' { 'B' } else { 'A' });
    let (status, body) = post_assertion(&s, &a).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_client");
    s.shutdown().await;
}
