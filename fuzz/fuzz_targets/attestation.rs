//! The attestation paths of an issuance, from the device (so from whoever
//! relays it): a YubiKey's device attestation certificate and a key's
//! attestation verified against a root, and a makeCredential's packed
//! attestation object (FIDO). The first byte picks the path; the rest is
//! split between the inputs. Neither verifier may panic.
#![no_main]

use keyward_pki::attestation::{verify_piv_attestations, AttestedKey};
use keyward_pki::fido_attestation::verify_packed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let (first, second) = data.split_at(data.len() / 2);
    let now = time::OffsetDateTime::from_unix_timestamp(1_796_000_000).expect("a time");
    if pick & 1 == 0 {
        let keys = [AttestedKey {
            attestation_der: second,
            expected_spki_der: second,
        }];
        let _ = verify_piv_attestations(first, &[], &[first.to_vec()], &keys, now);
    } else {
        // The object, the client data, and the object's bytes as a root.
        let _ = verify_packed(first, second, &[], &[second.to_vec()], now);
    }
});
