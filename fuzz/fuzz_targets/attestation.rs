//! The attestation path of a YubiKey issuance: a device attestation
//! certificate and a key's attestation, both from the device (so from
//! whoever relays it), verified against a root. Half of the bytes go to
//! each; neither may panic the verifier.
#![no_main]

use keyward_pki::attestation::{verify_piv_attestations, AttestedKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (device, key) = data.split_at(data.len() / 2);
    let now = time::OffsetDateTime::from_unix_timestamp(1_796_000_000).expect("a time");
    let keys = [AttestedKey {
        attestation_der: key,
        expected_spki_der: key,
    }];
    let _ = verify_piv_attestations(device, &[], &[device.to_vec()], &keys, now);
});
