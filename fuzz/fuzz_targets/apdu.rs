//! Fuzz target `apdu`: see keyward_vcard::fido::fuzz::fuzz_apdu.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    keyward_vcard::fido::fuzz::fuzz_apdu(data);
});
