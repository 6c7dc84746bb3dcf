//! Fuzz target `ctap_cbor`: see keyward_vcard::fido::fuzz::fuzz_ctap_cbor.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyward_vcard::fido::fuzz::fuzz_ctap_cbor(data);
});
