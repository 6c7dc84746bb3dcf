//! The embedded CA's certificates and CRL are served to relying parties and
//! check out with openssl.

use crate::support;

use support::TestServer;

#[test]
fn ca_certificates_and_crl_are_served_and_verify_with_openssl() {
    let server = TestServer::start();
    let http = server.client();
    let get = |path: &str| {
        let r = http.get(format!("{}{}", server.url, path)).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        r.bytes().unwrap().to_vec()
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), get("/pki/ca/root.pem")).unwrap();
    std::fs::write(dir.path().join("issuing.pem"), get("/pki/ca/issuing.pem")).unwrap();
    std::fs::write(dir.path().join("chain.pem"), get("/pki/ca/chain.pem")).unwrap();
    std::fs::write(dir.path().join("issuing.crl"), get("/pki/crl/issuing.crl")).unwrap();
    assert!(!get("/pki/ca/root.crt").is_empty());

    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, text) = openssl(&["verify", "-CAfile", "root.pem", "issuing.pem"]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "crl",
        "-inform",
        "DER",
        "-in",
        "issuing.crl",
        "-noout",
        "-CAfile",
        "chain.pem",
    ]);
    assert!(ok && text.contains("verify OK"), "{text}");
    let (_, text) = openssl(&["x509", "-in", "root.pem", "-noout", "-subject"]);
    assert!(text.contains("Keyward Root CA"), "{text}");

    // Unknown files are a clean 404; the CA's keys are nowhere in clear.
    let r = http
        .get(format!("{}/pki/ca/root.key", server.url))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // (The audit checkpoints' signing key is the one private key in clear,
    // 0600, on purpose: it must not depend on the KEK; see
    // docs/operations.md. It signs nothing of the CA's.)
    let audit_key = server.data_path().join("audit-signing-key.pem");
    assert!(audit_key.exists());
    let key = std::fs::read(&audit_key).unwrap();
    std::fs::remove_file(&audit_key).unwrap();
    let data = support::read_tree(&server.data_path());
    std::fs::write(&audit_key, key).unwrap();
    assert!(!support::contains(&data, b"PRIVATE KEY"));
}
