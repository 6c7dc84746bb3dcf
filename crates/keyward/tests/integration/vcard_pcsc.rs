//! Third-party verification of the virtual PIV card: `keyward vcard` on
//! pcscd's vpcd reader, driven by tools nobody here wrote (OpenSC's
//! opensc-tool and PKCS#11 module, yubico-piv-tool, openssl).
//!
//! Needs: pcscd, vsmartcard-vpcd, opensc, yubico-piv-tool, openssl, iproute2
//! (ss). A missing tool fails the test. The tests take a cross-process lock,
//! since vpcd has one slot for them.
//!
//! Debian's yubico-piv-tool 2.2.0 cannot make certificates with OpenSSL 3
//! (`selfsign-certificate` and `request-certificate` wrap the key in an
//! OpenSSL 1.1 method that OpenSSL 3 ignores for RSA and whose EC callback
//! reports success as failure), whatever the device. So the self-signed
//! certificate is made here with the card's own signature through OpenSC's
//! PKCS#11 module, and yubico-piv-tool imports it.

use crate::common::pcsc;

use pcsc::{run, run_ok, Vcard, OPENSC_PKCS11};
use std::path::Path;

const YK_FW: &str = "5.4.3";
const NEW_MGMT_KEY: &str = "00112233445566778899AABBCCDDEEFF0011223344556677";

fn yubico(args: &[&str]) -> String {
    let mut all = vec!["-r", "Virtual"];
    all.extend_from_slice(args);
    run_ok("yubico-piv-tool", &all)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Minimal DER: the header length and content length of the TLV at `der`.
fn der_header(der: &[u8]) -> (usize, usize) {
    let first = der[1];
    if first < 0x80 {
        return (2, first as usize);
    }
    let n = (first & 0x7F) as usize;
    let len = der[2..2 + n]
        .iter()
        .fold(0usize, |a, b| (a << 8) | *b as usize);
    (2 + n, len)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else if len < 0x100 {
        out.extend_from_slice(&[0x81, len as u8]);
    } else {
        out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
    }
    out.extend_from_slice(content);
    out
}

#[test]
fn opensc_names_a_piv_card_and_yubico_piv_tool_shows_firmware_and_serial() {
    let _lock = pcsc::lock();
    {
        let _card = Vcard::spawn(&[
            "--profile",
            "yubikey5",
            "--firmware",
            YK_FW,
            "--serial",
            "12345678",
        ]);
        let name = run_ok("opensc-tool", &["-n"]);
        assert!(
            name.contains("Personal Identity Verification Card"),
            "{name}"
        );
        let status = yubico(&["-a", "status"]);
        assert!(status.contains("Version:\t5.4.3"), "{status}");
        assert!(status.contains("Serial Number:\t12345678"), "{status}");
        let atr = run_ok("opensc-tool", &["-a"]);
        assert!(
            atr.to_lowercase().contains("59:75:62:69:4b:65:79")
                || atr.contains("59:75:62:69:4B:65:79"),
            "{atr}"
        );
    }
    let _card = Vcard::spawn(&["--profile", "c4000", "--serial", "4000123"]);
    let name = run_ok("opensc-tool", &["-n"]);
    assert!(
        name.contains("Personal Identity Verification Card"),
        "{name}"
    );
    // The card manager answers CPLC; the IC serial number is the device serial (4000123 = 0x003D097B).
    let cplc = run_ok("opensc-tool", &["-s", "80 CA 9F 7F 00"]);
    assert!(cplc.to_uppercase().contains("3D 09 7B 00 01"), "{cplc}");
}

#[test]
fn management_key_generation_certificate_and_pkcs11_signature() {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        YK_FW,
        "--serial",
        "555",
    ]);
    let key_arg = format!("--key={NEW_MGMT_KEY}");

    // Change the management key (authenticating with the factory key).
    yubico(&["-a", "set-mgm-key", "-n", NEW_MGMT_KEY]);
    // The factory key no longer works.
    let out = run(
        "yubico-piv-tool",
        &[
            "-r", "Virtual", "-a", "generate", "-s", "9a", "-A", "ECCP256",
        ],
    );
    assert!(
        !out.status.success(),
        "the old management key was still accepted"
    );

    // Generate P-256 in 9a with the new management key.
    let pub_pem = card.path("9a.pub.pem");
    yubico(&[
        &key_arg,
        "-a",
        "generate",
        "-s",
        "9a",
        "-A",
        "ECCP256",
        "-o",
        p(&pub_pem),
    ]);

    // A provisional self-issued certificate for the card's key (signed by a
    // throwaway key), so OpenSC's PKCS#11 module lists the key.
    let throw = card.path("throwaway.key");
    run_ok(
        "openssl",
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            p(&throw),
        ],
    );
    let prov = card.path("prov.der");
    run_ok(
        "openssl",
        &[
            "x509",
            "-new",
            "-key",
            p(&throw),
            "-force_pubkey",
            p(&pub_pem),
            "-subj",
            "/CN=Keyward vcard self-signed",
            "-days",
            "30",
            "-outform",
            "DER",
            "-out",
            p(&prov),
        ],
    );
    yubico(&[
        &key_arg,
        "-a",
        "import-certificate",
        "-s",
        "9a",
        "-K",
        "DER",
        "-i",
        p(&prov),
    ]);

    // Self-sign: the card signs the TBSCertificate through PKCS#11.
    let der = std::fs::read(&prov).unwrap();
    let (outer_hdr, _) = der_header(&der);
    let (tbs_hdr, tbs_len) = der_header(&der[outer_hdr..]);
    let tbs = &der[outer_hdr..outer_hdr + tbs_hdr + tbs_len];
    let tbs_file = card.path("tbs.der");
    std::fs::write(&tbs_file, tbs).unwrap();
    let sig_file = card.path("tbs.sig");
    run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "123456",
            "--sign",
            "--id",
            "01",
            "--mechanism",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "-i",
            p(&tbs_file),
            "-o",
            p(&sig_file),
        ],
    );
    let sig = std::fs::read(&sig_file).unwrap();
    let ecdsa_with_sha256 = [
        0x30, 0x0A, 0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(&sig);
    let mut body = tbs.to_vec();
    body.extend_from_slice(&ecdsa_with_sha256);
    body.extend(der_tlv(0x03, &bits));
    let cert = der_tlv(0x30, &body);
    let cert_der = card.path("self.der");
    std::fs::write(&cert_der, &cert).unwrap();
    let cert_pem = card.path("self.pem");
    run_ok(
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            p(&cert_der),
            "-out",
            p(&cert_pem),
        ],
    );
    // openssl checks the self-signature.
    let verify = run_ok(
        "openssl",
        &[
            "verify",
            "-check_ss_sig",
            "-CAfile",
            p(&cert_pem),
            p(&cert_pem),
        ],
    );
    assert!(verify.contains("OK"), "{verify}");
    yubico(&[
        &key_arg,
        "-a",
        "import-certificate",
        "-s",
        "9a",
        "-i",
        p(&cert_pem),
    ]);
    let read_back = card.path("read.pem");
    yubico(&["-a", "read-certificate", "-s", "9a", "-o", p(&read_back)]);
    assert_eq!(
        run_ok(
            "openssl",
            &["x509", "-in", p(&read_back), "-noout", "-fingerprint"]
        ),
        run_ok(
            "openssl",
            &["x509", "-in", p(&cert_pem), "-noout", "-fingerprint"]
        )
    );

    // PKCS#11: log in with the PIN and sign; openssl verifies with the certificate.
    let msg = card.path("message.txt");
    std::fs::write(&msg, b"signed by a virtual card, checked by openssl\n").unwrap();
    let msg_sig = card.path("message.sig");
    run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "123456",
            "--sign",
            "--id",
            "01",
            "--mechanism",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "-i",
            p(&msg),
            "-o",
            p(&msg_sig),
        ],
    );
    let cert_pub = card.path("cert.pub.pem");
    let pubkey = run_ok(
        "openssl",
        &["x509", "-in", p(&cert_pem), "-noout", "-pubkey"],
    );
    std::fs::write(&cert_pub, pubkey).unwrap();
    let ok = run_ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            p(&cert_pub),
            "-signature",
            p(&msg_sig),
            p(&msg),
        ],
    );
    assert!(ok.contains("Verified OK"), "{ok}");
    // A wrong PIN does not sign.
    let out = run(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "654321",
            "--sign",
            "--id",
            "01",
            "--mechanism",
            "ECDSA-SHA256",
            "-i",
            p(&msg),
            "-o",
            p(&msg_sig),
        ],
    );
    assert!(!out.status.success(), "signed with a wrong PIN");

    // RSA 2048 in 9c (digital signature: the PIN before every use, which
    // OpenSC's context-specific login gives): generate, certificate, PKCS#11
    // RSA signature verified by openssl.
    let rsa_pub = card.path("9c.pub.pem");
    yubico(&[
        &key_arg,
        "-a",
        "generate",
        "-s",
        "9c",
        "-A",
        "RSA2048",
        "-o",
        p(&rsa_pub),
    ]);
    let throw_rsa = card.path("throwaway-rsa.key");
    run_ok("openssl", &["genrsa", "-out", p(&throw_rsa), "2048"]);
    let rsa_cert = card.path("9c.pem");
    run_ok(
        "openssl",
        &[
            "x509",
            "-new",
            "-key",
            p(&throw_rsa),
            "-force_pubkey",
            p(&rsa_pub),
            "-subj",
            "/CN=Keyward vcard RSA",
            "-days",
            "30",
            "-out",
            p(&rsa_cert),
        ],
    );
    yubico(&[
        &key_arg,
        "-a",
        "import-certificate",
        "-s",
        "9c",
        "-i",
        p(&rsa_cert),
    ]);
    let rsa_sig = card.path("message.rsa.sig");
    run_ok(
        "pkcs11-tool",
        &[
            "--module",
            OPENSC_PKCS11,
            "--login",
            "--pin",
            "123456",
            "--sign",
            "--id",
            "02",
            "--mechanism",
            "SHA256-RSA-PKCS",
            "-i",
            p(&msg),
            "-o",
            p(&rsa_sig),
        ],
    );
    let ok = run_ok(
        "openssl",
        &[
            "dgst",
            "-sha256",
            "-verify",
            p(&rsa_pub),
            "-signature",
            p(&rsa_sig),
            p(&msg),
        ],
    );
    assert!(ok.contains("Verified OK"), "{ok}");
}

#[test]
fn wrong_pins_count_down_and_block_and_the_puk_unblocks() {
    let _lock = pcsc::lock();
    let _card = Vcard::spawn(&["--profile", "yubikey5", "--firmware", YK_FW]);
    for left in [2, 1] {
        let out = run(
            "yubico-piv-tool",
            &["-r", "Virtual", "-a", "verify-pin", "-P", "000000"],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("{left} tries left")), "{err}");
    }
    let out = run(
        "yubico-piv-tool",
        &["-r", "Virtual", "-a", "verify-pin", "-P", "000000"],
    );
    assert!(!out.status.success());
    let status = yubico(&["-a", "status"]);
    assert!(status.contains("PIN tries left:\t0"), "{status}");
    // Blocked: even the right PIN fails now.
    let out = run(
        "yubico-piv-tool",
        &["-r", "Virtual", "-a", "verify-pin", "-P", "123456"],
    );
    assert!(!out.status.success(), "a blocked PIN verified");
    // A wrong PUK counts down the PUK.
    let out = run(
        "yubico-piv-tool",
        &[
            "-r",
            "Virtual",
            "-a",
            "unblock-pin",
            "-P",
            "87654321",
            "-N",
            "654321",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 tries left"));
    // The PUK unblocks and sets a new PIN.
    yubico(&["-a", "unblock-pin", "-P", "12345678", "-N", "654321"]);
    yubico(&["-a", "verify-pin", "-P", "654321"]);
    let status = yubico(&["-a", "status"]);
    assert!(status.contains("PIN tries left:\t3"), "{status}");
}

#[test]
fn attestation_verifies_against_the_virtual_manufacturer_ca() {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        YK_FW,
        "--serial",
        "7654321",
    ]);
    yubico(&[
        "-a",
        "generate",
        "-s",
        "9a",
        "-A",
        "ECCP256",
        "-o",
        p(&card.path("pub.pem")),
    ]);
    let attest = card.path("attest.pem");
    yubico(&["-a", "attest", "-s", "9a", "-o", p(&attest)]);
    let f9 = card.path("f9.pem");
    yubico(&["-a", "read-certificate", "-s", "f9", "-o", p(&f9)]);
    let root = card.ca_cert_file();
    let root_text = run_ok("openssl", &["x509", "-in", p(&root), "-noout", "-subject"]);
    assert!(
        root_text.contains("NOT A REAL DEVICE VENDOR"),
        "{root_text}"
    );
    let verify = run_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            p(&root),
            "-untrusted",
            p(&f9),
            p(&attest),
        ],
    );
    assert!(verify.contains(": OK"), "{verify}");
    // The attested key is the slot's key; serial and firmware extensions are there.
    let text = run_ok(
        "openssl",
        &["x509", "-in", p(&attest), "-noout", "-text", "-pubkey"],
    );
    assert!(text.contains("1.3.6.1.4.1.41482.3.3"), "{text}");
    assert!(text.contains("1.3.6.1.4.1.41482.3.7"), "{text}");
    let slot_pub = std::fs::read_to_string(card.path("pub.pem")).unwrap();
    assert!(
        text.contains(slot_pub.trim()),
        "attested key differs from the slot key"
    );
    let der = run_ok(
        "openssl",
        &[
            "x509",
            "-in",
            p(&attest),
            "-noout",
            "-ext",
            "1.3.6.1.4.1.41482.3.3",
        ],
    );
    assert!(!der.is_empty());
    // A slot without a key cannot be attested.
    let out = run(
        "yubico-piv-tool",
        &["-r", "Virtual", "-a", "attest", "-s", "9c"],
    );
    assert!(!out.status.success());
}

#[test]
fn state_file_keeps_pins_and_keys_across_restarts() {
    let _lock = pcsc::lock();
    let card = Vcard::spawn(&[
        "--profile",
        "yubikey5",
        "--firmware",
        YK_FW,
        "--serial",
        "3141592",
        "--state",
        "{dir}/card.json",
    ]);
    yubico(&["-a", "change-pin", "-P", "123456", "-N", "11223344"]);
    let pub_pem = card.path("pub.pem");
    yubico(&[
        "-a",
        "generate",
        "-s",
        "9e",
        "-A",
        "ECCP256",
        "-o",
        p(&pub_pem),
    ]);
    let first = std::fs::read_to_string(&pub_pem).unwrap();
    let dir = card.stop();
    // Restarted without --serial: the identity comes from the state file.
    let card = Vcard::spawn_in(dir, &["--state", "{dir}/card.json"]);
    let status = yubico(&["-a", "status"]);
    assert!(status.contains("Serial Number:\t3141592"), "{status}");
    assert!(status.contains("Version:\t5.4.3"), "{status}");
    yubico(&["-a", "verify-pin", "-P", "11223344"]);
    // The key survived: attesting it shows the same public key.
    let attest = card.path("attest.pem");
    yubico(&["-a", "attest", "-s", "9e", "-o", p(&attest)]);
    let text = run_ok("openssl", &["x509", "-in", p(&attest), "-noout", "-pubkey"]);
    assert_eq!(text.trim(), first.trim());
}

#[test]
fn hid_socket_closes_on_remove_and_reopens_on_insert() {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    // No PC/SC here: --vpcd none.
    let card = Vcard::spawn(&["--vpcd", "none", "--hid-socket", "{dir}/hid"]);
    let hid = card.path("hid");
    let mut s = UnixStream::connect(&hid).expect("HID socket");
    assert_eq!(card.control("remove"), "ok");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    // Closed at once: end of file (or a reset, when the connection was still
    // waiting to be accepted); a read that times out means it stayed open.
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the HID socket stays open after remove: {other:?}"),
    }
    assert!(
        UnixStream::connect(&hid).is_err(),
        "the device is unplugged"
    );
    assert_eq!(card.control("insert"), "ok");
    let start = std::time::Instant::now();
    while UnixStream::connect(&hid).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "HID socket not back after insert"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
