//! From a device policy's PKI application and a user to the contents of a
//! certificate: subject, subject alternative names, SID extension, key usage,
//! extended key usage and validity.

use std::str::FromStr;

use const_oid::ObjectIdentifier;
use der::asn1::Ia5String;
use der::Decode;
use flagset::FlagSet;
use keyward_domain::policy::render_template;
use keyward_domain::{
    Device, ExtendedKeyUsage, KeyUsage, PkiApplication, SanSource, User, ValidationError,
};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::KeyUsages;
use x509_cert::name::Name;

use crate::ext::{upn_other_name, OID_DOCUMENT_SIGNING, OID_SMARTCARD_LOGON};
use crate::PkiError;

/// Everything a CA needs to certify a device-generated key.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    pub spki: SubjectPublicKeyInfoOwned,
    pub subject: Name,
    pub subject_alt_names: Vec<GeneralName>,
    /// The user's objectSid, for the SID extension.
    pub sid: Option<String>,
    pub key_usage: FlagSet<KeyUsages>,
    /// Empty set: no key usage extension.
    pub key_usage_empty: bool,
    pub extended_key_usage: Vec<ObjectIdentifier>,
    pub validity_days: u32,
}

/// The directory attribute holding the user's SID.
pub const SID_ATTRIBUTE: &str = "objectSid";

impl LeafRequest {
    /// Builds the request for `app` (a PKI application of a device policy)
    /// for `user`, on `device`, certifying `spki_der` (the key the device
    /// generated, as a DER SubjectPublicKeyInfo).
    pub fn from_template(
        app: &PkiApplication,
        user: &User,
        device: Option<&Device>,
        spki_der: &[u8],
    ) -> Result<LeafRequest, PkiError> {
        let spki = SubjectPublicKeyInfoOwned::from_der(spki_der)
            .map_err(|e| PkiError::PublicKey(e.to_string()))?;
        let t = &app.template;
        let subject = subject_name(&t.subject_dn, user, device)?;
        let mut sans = Vec::new();
        for source in &t.subject_alt_names {
            match source {
                SanSource::Upn => {
                    let upn = user.upn.as_deref().ok_or_else(|| {
                        ValidationError::new(
                            "user_attribute_missing",
                            "template.subject_alt_names",
                            format!(
                                "user {} has no UPN for the UPN subject alternative name",
                                user.login
                            ),
                        )
                    })?;
                    sans.push(upn_other_name(upn).map_err(crate::build_err)?);
                }
                SanSource::Mail => {
                    let mail = user.email.as_deref().ok_or_else(|| {
                        ValidationError::new(
                            "user_attribute_missing",
                            "template.subject_alt_names",
                            format!("user {} has no email for the rfc822Name", user.login),
                        )
                    })?;
                    sans.push(GeneralName::Rfc822Name(
                        Ia5String::new(mail).map_err(crate::build_err)?,
                    ));
                }
            }
        }
        let mut ku: FlagSet<KeyUsages> = KeyUsages::DigitalSignature.into();
        let mut first = true;
        for u in &t.key_usage {
            let bit = match u {
                KeyUsage::DigitalSignature => KeyUsages::DigitalSignature,
                KeyUsage::NonRepudiation => KeyUsages::NonRepudiation,
                KeyUsage::KeyEncipherment => KeyUsages::KeyEncipherment,
                KeyUsage::DataEncipherment => KeyUsages::DataEncipherment,
                KeyUsage::KeyAgreement => KeyUsages::KeyAgreement,
            };
            if first {
                ku = bit.into();
                first = false;
            } else {
                ku |= bit;
            }
        }
        let eku = t
            .extended_key_usage
            .iter()
            .map(|e| match e {
                ExtendedKeyUsage::ClientAuth => const_oid::db::rfc5280::ID_KP_CLIENT_AUTH,
                ExtendedKeyUsage::SmartcardLogon => OID_SMARTCARD_LOGON,
                ExtendedKeyUsage::EmailProtection => const_oid::db::rfc5280::ID_KP_EMAIL_PROTECTION,
                ExtendedKeyUsage::CodeSigning => const_oid::db::rfc5280::ID_KP_CODE_SIGNING,
                ExtendedKeyUsage::DocumentSigning => OID_DOCUMENT_SIGNING,
            })
            .collect();
        Ok(LeafRequest {
            spki,
            subject,
            subject_alt_names: sans,
            sid: user.attributes.get(SID_ATTRIBUTE).cloned(),
            key_usage: ku,
            key_usage_empty: t.key_usage.is_empty(),
            extended_key_usage: eku,
            validity_days: t.validity_days,
        })
    }
}

/// Renders a subject DN template (`CN={display_name},UID={login}`): each
/// attribute value is rendered on its own and escaped (RFC 4514), so a user
/// value containing `,` or `+` cannot add attributes.
pub fn subject_name(
    template: &str,
    user: &User,
    device: Option<&Device>,
) -> Result<Name, PkiError> {
    let mut parts = Vec::new();
    for rdn in split_unescaped(template, ',') {
        let (attr, value_template) = rdn.split_once('=').ok_or_else(|| {
            ValidationError::new(
                "subject_dn_invalid",
                "template.subject_dn",
                format!("'{rdn}' is not TYPE=VALUE"),
            )
        })?;
        let value = render_template("template.subject_dn", value_template, user, device)?;
        parts.push(format!("{}={}", attr.trim(), escape_rfc4514(&value)));
    }
    Name::from_str(&parts.join(",")).map_err(|e| {
        PkiError::Template(ValidationError::new(
            "subject_dn_invalid",
            "template.subject_dn",
            format!("not a valid distinguished name: {e}"),
        ))
    })
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            cur.push(c);
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur);
    }
    out
}

/// Escapes an attribute value per RFC 4514 section 2.4.
pub fn escape_rfc4514(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            id: uuid::Uuid::new_v4(),
            login: "alice".into(),
            upn: Some("alice@example.com".into()),
            display_name: name.into(),
            email: Some("alice@example.com".into()),
            attributes: Default::default(),
            status: keyward_domain::UserStatus::Active,
        }
    }

    #[test]
    fn user_values_cannot_inject_attributes() {
        let n = subject_name(
            "CN={display_name},UID={login}",
            &user("Archer, Alice+O=Evil"),
            None,
        )
        .unwrap();
        let s = n.to_string();
        // One CN, one UID: the comma and plus stayed inside the CN value.
        assert_eq!(n.0.len(), 2, "{s}");
        assert!(s.contains("Archer\\, Alice\\+O"), "{s}");
    }

    #[test]
    fn missing_attribute_names_the_field() {
        let mut u = user("Alice");
        u.upn = None;
        let e = subject_name("CN={upn}", &u, None).unwrap_err();
        assert!(e.to_string().contains("template.subject_dn"), "{e}");
    }
}
