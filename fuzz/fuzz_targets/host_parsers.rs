//! What a device (or an agent lying about one) sends back that the server
//! parses: a GENERATE response's public key template, a GENERAL
//! AUTHENTICATE response, a certificate object, a CHUID, a discovery
//! object, a CTAPHID INIT response, and a relay result's JSON. None may
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = keyward_card::piv::PublicKeyTemplate::parse(data);
    let _ = keyward_card::piv::parse_general_authenticate_response(data, 0x82);
    let _ = keyward_card::piv::parse_cert_container(data);
    let _ = keyward_card::piv::parse_discovery_object(data);
    let _ = keyward_card::piv::parse_key_history(data);
    let _ = keyward_pki::attestation::certificate_from_object(data);
    if data.len() >= 8 {
        let nonce: [u8; 8] = data[..8].try_into().expect("8 bytes");
        let _ = keyward_transport::ctaphid::parse_init_response(&nonce, &data[8..]);
    }
    if let Ok(r) = serde_json::from_slice::<keyward_proto::RelayResult>(data) {
        let _ = r.parsed_responses();
    }
});
