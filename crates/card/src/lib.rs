//! Pure codecs for the devices Keyward manages: ISO 7816-4 APDUs, BER-TLV,
//! PIV (NIST SP 800-73-4) commands and objects, CTAP2 CBOR and CTAPHID
//! framing. No I/O: both the virtual card and Keyward's own clients and
//! issuance engine use these.

pub mod apdu;
pub mod ctap;
pub mod ctaphid;
pub mod piv;
pub mod tlv;
