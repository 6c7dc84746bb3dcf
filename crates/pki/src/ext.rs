//! Certificate extensions the pkix types do not cover: Microsoft's SID
//! extension for strong certificate mapping, and helpers for otherNames.

use const_oid::ObjectIdentifier;
use der::asn1::{Any, OctetString, Utf8StringRef};
use der::{Encode, Tag};
use x509_cert::ext::pkix::name::{GeneralName, GeneralNames, OtherName};
use x509_cert::ext::AsExtension;
use x509_cert::name::Name;

/// Microsoft UPN otherName (szOID_NT_PRINCIPAL_NAME).
pub const OID_UPN: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.3");
/// szOID_NTDS_CA_SECURITY_EXT: the SID extension Windows domain controllers
/// want for strong certificate mapping (KB5014754).
pub const OID_NTDS_CA_SECURITY_EXT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.25.2");
/// szOID_NTDS_OBJECTSID: the otherName inside it carrying the SID string.
pub const OID_NTDS_OBJECTSID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.25.2.1");
/// Smart card logon EKU.
pub const OID_SMARTCARD_LOGON: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.20.2.2");
/// id-kp-documentSigning (RFC 9336).
pub const OID_DOCUMENT_SIGNING: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.36");

/// The UPN as a SAN otherName: `[0] EXPLICIT UTF8String`.
pub fn upn_other_name(upn: &str) -> Result<GeneralName, der::Error> {
    let value = Any::encode_from(&Utf8StringRef::new(upn)?)?;
    Ok(GeneralName::OtherName(OtherName {
        type_id: OID_UPN,
        value,
    }))
}

/// The SID extension: GeneralNames with one otherName
/// `1.3.6.1.4.1.311.25.2.1 [0] EXPLICIT OCTET STRING "S-1-5-…"`.
#[derive(Debug, Clone)]
pub struct SidExtension(pub GeneralNames);

impl SidExtension {
    pub fn new(sid: &str) -> Result<Self, der::Error> {
        let octets = OctetString::new(sid.as_bytes().to_vec())?;
        let value = Any::new(Tag::OctetString, octets.as_bytes())?;
        Ok(SidExtension(vec![GeneralName::OtherName(OtherName {
            type_id: OID_NTDS_OBJECTSID,
            value,
        })]))
    }
}

impl const_oid::AssociatedOid for SidExtension {
    const OID: ObjectIdentifier = OID_NTDS_CA_SECURITY_EXT;
}

impl Encode for SidExtension {
    fn encoded_len(&self) -> der::Result<der::Length> {
        self.0.encoded_len()
    }
    fn encode(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

impl AsExtension for SidExtension {
    fn critical(&self, _subject: &Name, _extensions: &[x509_cert::ext::Extension]) -> bool {
        false
    }
}
