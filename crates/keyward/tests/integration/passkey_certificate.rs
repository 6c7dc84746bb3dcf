//! A Passkey-Enabled Service with a certificate credential (issue 6): created
//! through the API (and the admin CLI) with an RSA certificate and its key,
//! shown with its credential kind and SHA-256 thumbprint but never its key,
//! the key absent from the data folder (SQLite file and -wal) in every
//! form, and "Test connection" obtaining a token from the simulated tenant
//! with a signed client assertion (verdict ok). Refusals: both kinds at
//! once, a half certificate credential, a key of another certificate.
//! Needs the `openssl` CLI (test keys).

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use keyward_entra_standin::{StandinConfig, StandinUser};
use serde_json::json;
use support::{contains, read_tree, TestServer};

const UPN: &str = "alice@example.com";
const CLIENT_ID: &str = "5b1a4c0e-6a55-4d7c-9a61-2f3c9d7e0a11";
const TENANT: &str = "contoso.onmicrosoft.com";

/// A self-signed RSA certificate and its key (PEM files in `dir`).
fn rsa_certificate(dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
    let (key, cert) = (
        dir.join(format!("{tag}.key")),
        dir.join(format!("{tag}.crt")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=keyward-passkey-service"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("the openssl CLI");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// The certificate's SHA-256 fingerprint as openssl computes it (hex, upper case).
fn openssl_sha256_fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .expect("the openssl CLI");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_uppercase()
}

#[test]
fn certificate_credential_service_is_sealed_and_connects() {
    let keys = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = rsa_certificate(keys.path(), "app");
    let (_, other_key_file) = rsa_certificate(keys.path(), "other");
    let cert = std::fs::read_to_string(&cert_file).unwrap();
    let key = std::fs::read_to_string(&key_file).unwrap();
    let other_key = std::fs::read_to_string(&other_key_file).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The trust store is irrelevant here (no registration): any certificate.
    let mut cfg = StandinConfig::new(TENANT, CLIENT_ID, "not-the-credential", vec![cert.clone()]);
    cfg.client_certificate_pem = Some(cert.clone());
    cfg.users.push(StandinUser::new(UPN, "Alice Archer"));
    let tenant = rt.block_on(keyward_entra_standin::serve(cfg)).unwrap();

    let server = TestServer::start();
    let base = json!({
        "name": "Simulated tenant", "tenant_id": TENANT, "client_id": CLIENT_ID,
        "authority_url": tenant.authority_url(), "graph_url": tenant.graph_url(),
        "scope": "https://graph.microsoft.com/.default",
    });
    let with = |extra: serde_json::Value| {
        let mut v = base.clone();
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };

    // Exactly one kind of credential, complete, and a key of its certificate.
    for (body, code) in [
        (with(json!({})), "client_credential_missing"),
        (
            with(
                json!({ "client_secret": "s", "client_certificate_pem": cert, "client_private_key_pem": key }),
            ),
            "client_credential_ambiguous",
        ),
        (
            with(json!({ "client_certificate_pem": cert })),
            "client_certificate_incomplete",
        ),
        (
            with(json!({ "client_certificate_pem": cert, "client_private_key_pem": other_key })),
            "client_certificate_invalid",
        ),
        (
            with(
                json!({ "client_certificate_pem": "not a certificate", "client_private_key_pem": key }),
            ),
            "client_certificate_invalid",
        ),
    ] {
        let (s, v) = server.call("POST", "/passkey-services", Some(body));
        assert_eq!(s, 400, "{v}");
        assert!(v.to_string().contains(code), "{code}: {v}");
        assert!(!v.to_string().contains(&pem_body(&key)[..40]), "{v}");
    }

    let (s, v) = server.call(
        "POST",
        "/passkey-services",
        Some(with(
            json!({ "client_certificate_pem": cert, "client_private_key_pem": key }),
        )),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["credential_kind"], "certificate", "{v}");
    assert_eq!(
        v["certificate_thumbprint_sha256"],
        openssl_sha256_fingerprint(&cert_file),
        "{v}"
    );
    let (s, shown) = server.call("GET", "/passkey-services/Simulated%20tenant", None);
    assert_eq!(s, 200, "{shown}");
    assert_eq!(shown["credential_kind"], "certificate");
    let (_, listed) = server.call("GET", "/passkey-services", None);

    // "Test connection": a token by signed client assertion, then Graph.
    let (s, v) = server.call(
        "POST",
        "/passkey-services/Simulated%20tenant/test",
        Some(json!({ "user": UPN })),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["verdict"], "ok", "{v}");
    assert_eq!(v["fido2_methods"], 0, "{v}");

    // The admin CLI takes the certificate credential from files.
    let out = server.admin(&[
        "passkey-service",
        "add",
        "--name",
        "Via CLI",
        "--tenant-id",
        TENANT,
        "--client-id",
        CLIENT_ID,
        "--client-certificate",
        cert_file.to_str().unwrap(),
        "--client-private-key",
        key_file.to_str().unwrap(),
        "--authority-url",
        &tenant.authority_url(),
        "--graph-url",
        &tenant.graph_url(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, v) = server.call(
        "POST",
        "/passkey-services/Via%20CLI/test",
        Some(json!({ "user": UPN })),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["verdict"], "ok", "{v}");

    // The key never leaves sealed storage: not in the views, not in the
    // data folder (the SQLite file and its -wal) in any form; the public
    // certificate is stored in clear, which proves the search works.
    let key_der = base64::engine::general_purpose::STANDARD
        .decode(pem_body(&key))
        .unwrap();
    let views = format!("{shown}{listed}");
    let data = read_tree(&server.data_path());
    assert!(contains(&data, pem_body(&cert)[..64].as_bytes()));
    for needle in [
        pem_body(&key)[64..128].as_bytes().to_vec(),
        key_der[40..80].to_vec(),
        hex::encode(&key_der[40..80]).into_bytes(),
    ] {
        assert!(!contains(views.as_bytes(), &needle));
        assert!(
            !contains(&data, &needle),
            "the private key is in the data folder"
        );
    }
    assert!(!server.output().contains(&pem_body(&key)[64..128]));
    rt.block_on(tenant.shutdown());
}
