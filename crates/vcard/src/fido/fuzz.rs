//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by
//! the ordinary test below that replays the committed seed corpus
//! (`fuzz/corpus/<target>/`), so every crash the fuzzer once found stays a
//! regression test on stable Rust without cargo-fuzz.
//!
//! Each entry point must never panic, whatever the input.

use std::sync::OnceLock;
use std::time::Instant;

use keyward_card::{ctap, ctaphid};

use crate::ctaphid_device::{Action, CtaphidDevice};
use crate::fido::{attestation, AlwaysPresent, FidoAuthenticator, FidoConfig, FidoState};

/// Target `apdu`: the card's ISO 7816 entry point
/// (`VirtualCard::transmit`). The input is a sequence of command APDUs,
/// each prefixed by its length byte; the first byte picks the profile.
pub fn fuzz_apdu(data: &[u8]) {
    use crate::card::{CardState, VirtualCard};
    use crate::config::{ProfileKind, Transport, VcardConfig};

    static TEMPLATES: OnceLock<Vec<(CardState, VcardConfig)>> = OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        let ca_dir = std::env::temp_dir().join("keyward-fuzz-vcard-ca");
        [
            VcardConfig::new(ProfileKind::C4000),
            VcardConfig::new(ProfileKind::Yubikey5).with_transport(Transport::Nfc),
            VcardConfig::new(ProfileKind::Yubikey5).with_firmware(crate::config::Firmware(5, 4, 3)),
        ]
        .into_iter()
        .map(|c| {
            let c = c.with_ca_dir(&ca_dir);
            let card = VirtualCard::new(c.clone()).expect("virtual card for fuzzing");
            (card.state(), c)
        })
        .collect()
    });
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let (state, config) = &templates[pick as usize % templates.len()];
    let mut card = VirtualCard::from_state(state.clone(), config.clone());
    card.power_on();
    while let Some((&len, tail)) = rest.split_first() {
        let n = (len as usize).min(tail.len());
        let response = card.transmit(&tail[..n]);
        assert!(
            response.len() >= 2,
            "every response ends with a status word"
        );
        rest = &tail[n..];
    }
}

/// Target `ctaphid`: the CTAPHID packet reader, both the pure reassembler
/// and the device state machine, fed 64-byte reports.
pub fn fuzz_ctaphid(data: &[u8]) {
    let mut device = CtaphidDevice::new((5, 7, 1));
    let mut reassembler = ctaphid::Reassembler::new();
    let now = Instant::now();
    for (i, chunk) in data.chunks(ctaphid::REPORT_SIZE).enumerate() {
        let _ = ctaphid::Packet::parse(chunk);
        let _ = reassembler.push(chunk);
        let mut report = [0u8; ctaphid::REPORT_SIZE];
        report[..chunk.len()].copy_from_slice(chunk);
        // Let the fuzzer reach allocated channels: every other report's
        // channel id is rewritten to the first allocated one.
        if i % 2 == 1 {
            report[..4].copy_from_slice(&1u32.to_be_bytes());
        }
        match device.receive(&report, now) {
            Action::Cbor { cid, request } => {
                let _ = device.response(cid, ctaphid::cmd::CBOR, &request);
                let _ = device.receive_while_busy(cid, &report, now);
            }
            Action::Send(reports) => assert!(!reports.is_empty()),
            Action::None => {}
        }
        let _ = device.poll_timeout(now + std::time::Duration::from_millis(i as u64 * 300));
    }
}

/// Target `ctap_cbor`: the CTAP CBOR decoder and typed decoders, then the
/// whole authenticator (`input` = command byte + CBOR).
pub fn fuzz_ctap_cbor(data: &[u8]) {
    if let Ok(value) = ctap::decode(data.get(1..).unwrap_or_default()) {
        let _ = ctap::MakeCredentialRequest::from_value(&value);
        let _ = ctap::GetAssertionRequest::from_value(&value);
        let _ = ctap::ClientPinRequest::from_value(&value);
        let _ = ctap::CredentialManagementRequest::from_value(&value);
        let _ = ctap::GetInfoResponse::from_value(&value);
        let _ = ctap::MakeCredentialResponse::from_value(&value);
        let _ = ctap::GetAssertionResponse::from_value(&value);
        let _ = ctap::ClientPinResponse::from_value(&value);
        let _ = ctap::CredentialManagementResponse::from_value(&value);
        // Re-encoding what was decoded is canonical and decodes again.
        let again = ctap::encode_canonical(&value);
        assert!(ctap::decode(&again).is_ok());
    }
    let _ = ctap::AuthenticatorData::parse(data);
    let mut authenticator = new_authenticator(data.first().copied().unwrap_or(0) & 1 == 0);
    let response = authenticator.handle(data, &mut AlwaysPresent);
    assert!(!response.is_empty());
    if response[0] == 0 && response.len() > 1 {
        let body = ctap::decode(&response[1..]).expect("the authenticator emits valid CBOR");
        assert!(
            ctap::is_canonical(&body),
            "the authenticator emits canonical CBOR"
        );
    }
}

fn new_authenticator(ctap21: bool) -> FidoAuthenticator {
    static SIGNER: OnceLock<attestation::SoftAttestationKey> = OnceLock::new();
    let signer = SIGNER.get_or_init(|| {
        let (key, name, _) = attestation::test_ca().expect("test CA");
        attestation::issue_attestation_key([0; 16], "Fuzz", 1, &key, &name, vec![])
            .expect("attestation key")
    });
    let config = if ctap21 {
        FidoConfig::yubikey5((5, 7, 1))
    } else {
        FidoConfig::yubikey5((5, 4, 3))
    };
    FidoAuthenticator::new(config, FidoState::default(), Box::new(signer.clone()))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "empty seed corpus {}", dir.display());
        files
            .into_iter()
            .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
            .collect()
    }

    #[test]
    fn replay_corpus_apdu() {
        for (path, data) in corpus("apdu") {
            eprintln!("{}", path.display());
            super::fuzz_apdu(&data);
        }
    }

    #[test]
    fn replay_corpus_ctaphid() {
        for (_, data) in corpus("ctaphid") {
            super::fuzz_ctaphid(&data);
        }
    }

    #[test]
    fn replay_corpus_ctap_cbor() {
        for (_, data) in corpus("ctap_cbor") {
            super::fuzz_ctap_cbor(&data);
        }
    }
}
