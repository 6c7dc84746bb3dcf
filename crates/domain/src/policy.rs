//! Device policies: what a device gets when it is issued, and the rules that say which
//! device types a policy may target.

use crate::device::Device;
use crate::device_type::EntraPasskeySupport;
use crate::error::{ValidationError, ValidationResult};
use crate::names::{
    ApprovalAction, CharacterSet, DeviceType, ExtendedKeyUsage, KeyAlgorithm, KeyUsage,
    ManagementKeyMode, PivSlot, RenewalMode, SanSource,
};
use crate::pin::PinApplication;
use crate::user::User;
use crate::validate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePolicy {
    /// Assigned by Keyward; a policy file may leave it out.
    #[serde(default = "Uuid::nil")]
    pub id: Uuid,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub device_types: Vec<DeviceType>,
    #[serde(default)]
    pub pin_application: PinApplication,
    #[serde(default = "keep")]
    pub management_key: ManagementKeyMode,
    #[serde(default)]
    pub pki_applications: Vec<PkiApplication>,
    #[serde(default)]
    pub fido_application: Option<FidoApplication>,
    /// "Require device attestation": a key the device cannot prove it
    /// generated is not certified. Unset: on for device types that attest
    /// (YubiKey 5); a policy turns it off only by saying `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_device_attestation: Option<bool>,
    /// How long a temporary device (issued while the original is
    /// forgotten) lasts, in days: its certificates expire then and the job
    /// runner terminates it.
    #[serde(default = "default_temporary_days")]
    pub temporary_validity_days: u32,
    /// What needs a second person's approval before it is carried out
    /// (`issuance`, `replacement`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approval_required_for: Vec<ApprovalAction>,
}

/// The longest a temporary device may last.
pub const MAX_TEMPORARY_DAYS: u32 = 90;

fn default_temporary_days() -> u32 {
    7
}

fn keep() -> ManagementKeyMode {
    ManagementKeyMode::Keep
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiApplication {
    /// Friendly name ("PIV Authentication").
    pub name: String,
    pub slot: PivSlot,
    pub algorithm: KeyAlgorithm,
    /// Name of the certificate authority that signs the certificate.
    pub certificate_authority: String,
    pub template: CertificateTemplate,
    /// A certificate this many days from its end is renewed (the daily
    /// scan requests the device's update). Unset: 42 days, or half the
    /// validity when that is shorter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_window_days: Option<u32>,
    /// How it is renewed; unset: `same_key` for Key Management (9D: a key
    /// that decrypts mail is never destroyed), else `rekey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<RenewalMode>,
}

/// MyID's default renewal window.
pub const DEFAULT_RENEWAL_WINDOW_DAYS: u32 = 42;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateTemplate {
    /// Subject DN with placeholders: `CN={display_name},O=Example`.
    /// Placeholders: {login} {upn} {mail} {display_name} {attr:NAME}.
    pub subject_dn: String,
    #[serde(default)]
    pub subject_alt_names: Vec<SanSource>,
    pub validity_days: u32,
    #[serde(default)]
    pub key_usage: Vec<KeyUsage>,
    #[serde(default)]
    pub extended_key_usage: Vec<ExtendedKeyUsage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidoApplication {
    /// The Passkey-Enabled Service the passkey is registered with.
    pub passkey_service_id: Uuid,
    /// Its name, for display (the id is authoritative).
    #[serde(default)]
    pub passkey_service_name: String,
    /// "Share the device PIN between PKI and Passkey applications"
    #[serde(default)]
    pub share_device_pin: bool,
    /// CTAP credProtect level 1-3 (above 1 breaks Windows logon).
    #[serde(default = "one")]
    pub cred_protect: u8,
    /// Passkey display name: `{display_name} ({device_type} {serial})`.
    /// Placeholders: the user ones plus {device_type} {serial}.
    #[serde(default = "default_passkey_name")]
    pub display_name_template: String,
}

fn one() -> u8 {
    1
}

fn default_passkey_name() -> String {
    "{device_type} {serial}".into()
}

/// The longest validity a certificate template may ask for (10 years).
pub const MAX_VALIDITY_DAYS: u32 = 3653;

const USER_PLACEHOLDERS: &[&str] = &["login", "upn", "mail", "display_name"];
const DEVICE_PLACEHOLDERS: &[&str] = &["device_type", "serial"];

/// Checks `{placeholder}` syntax against the known names (`attr:NAME` always allowed).
fn check_template(field: &str, t: &str, extra: &[&str]) -> ValidationResult {
    for_each_placeholder(field, t, |name| {
        if USER_PLACEHOLDERS.contains(&name)
            || extra.contains(&name)
            || name
                .strip_prefix("attr:")
                .is_some_and(|a| validate::attribute_key(field, a).is_ok())
        {
            Ok(String::new())
        } else {
            Err(ValidationError::new(
                "template_placeholder_unknown",
                field,
                format!(
                    "unknown placeholder {{{name}}}; allowed: {}, attr:NAME",
                    USER_PLACEHOLDERS
                        .iter()
                        .chain(extra)
                        .map(|p| format!("{{{p}}}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            ))
        }
    })
    .map(|_| ())
}

/// Walks `t`, replacing each `{name}` by `f(name)`. `{{` and `}}` are literal braces.
fn for_each_placeholder(
    field: &str,
    t: &str,
    mut f: impl FnMut(&str) -> Result<String, ValidationError>,
) -> Result<String, ValidationError> {
    let mut out = String::with_capacity(t.len());
    let mut chars = t.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|p| p.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|p| p.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let rest = &t[i + 1..];
                let end = rest.find('}').ok_or_else(|| {
                    ValidationError::new("template_invalid", field, "unclosed '{' in template")
                })?;
                let name = &rest[..end];
                out.push_str(&f(name)?);
                for _ in 0..=name.chars().count() {
                    chars.next();
                }
            }
            '}' => {
                return Err(ValidationError::new(
                    "template_invalid",
                    field,
                    "unmatched '}' in template",
                ));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Fills a user template ({login} {upn} {mail} {display_name} {attr:NAME}) and, when
/// given, the device placeholders. A placeholder the user lacks is an error naming it.
pub fn render_template(
    field: &str,
    template: &str,
    user: &User,
    device: Option<&Device>,
) -> Result<String, ValidationError> {
    for_each_placeholder(field, template, |name| {
        let missing = || {
            ValidationError::new(
                "user_attribute_missing",
                field,
                format!("user {} has no value for {{{name}}}", user.login),
            )
        };
        match name {
            "login" => Ok(user.login.clone()),
            "display_name" => Ok(user.display_name.clone()),
            "upn" => user.upn.clone().ok_or_else(missing),
            "mail" => user.email.clone().ok_or_else(missing),
            "device_type" => device
                .map(|d| d.device_type.label().to_string())
                .ok_or_else(missing),
            "serial" => device.map(|d| d.serial.to_string()).ok_or_else(missing),
            other => match other.strip_prefix("attr:") {
                Some(a) => user.attributes.get(a).cloned().ok_or_else(missing),
                None => Err(ValidationError::new(
                    "template_placeholder_unknown",
                    field,
                    format!("unknown placeholder {{{other}}}"),
                )),
            },
        }
    })
}

impl PkiApplication {
    pub fn validate(&self) -> ValidationResult {
        validate::name("name", &self.name)?;
        validate::name("certificate_authority", &self.certificate_authority)?;
        let t = &self.template;
        if t.subject_dn.trim().is_empty() {
            return Err(ValidationError::new(
                "subject_dn_empty",
                "template.subject_dn",
                "subject DN template must not be empty",
            ));
        }
        check_template("template.subject_dn", &t.subject_dn, &[])?;
        if t.validity_days == 0 || t.validity_days > MAX_VALIDITY_DAYS {
            return Err(ValidationError::new(
                "validity_invalid",
                "template.validity_days",
                format!("validity must be 1 to {MAX_VALIDITY_DAYS} days"),
            ));
        }
        if self
            .renewal_window_days
            .is_some_and(|w| w == 0 || w >= t.validity_days)
        {
            return Err(ValidationError::new(
                "renewal_window_invalid",
                "renewal_window_days",
                format!(
                    "the renewal window is 1 day to less than the validity ({} days)",
                    t.validity_days
                ),
            ));
        }
        Ok(())
    }

    /// The renewal window in days (always shorter than the validity).
    pub fn renewal_window(&self) -> u32 {
        self.renewal_window_days
            .unwrap_or(DEFAULT_RENEWAL_WINDOW_DAYS.min(self.template.validity_days / 2))
    }

    /// How this application's certificate is renewed.
    pub fn renewal_mode(&self) -> RenewalMode {
        self.renewal.unwrap_or(match self.slot {
            PivSlot::KeyManagement => RenewalMode::SameKey,
            _ => RenewalMode::Rekey,
        })
    }
}

impl FidoApplication {
    pub fn validate(&self) -> ValidationResult {
        if !(1..=3).contains(&self.cred_protect) {
            return Err(ValidationError::new(
                "cred_protect_invalid",
                "cred_protect",
                "credProtect level must be 1, 2 or 3",
            ));
        }
        validate::name("display_name_template", &self.display_name_template)?;
        check_template(
            "display_name_template",
            &self.display_name_template,
            DEVICE_PLACEHOLDERS,
        )
    }
}

impl DevicePolicy {
    /// Whether `action` waits for a second person's approval.
    pub fn requires_approval(&self, action: ApprovalAction) -> bool {
        self.approval_required_for.contains(&action)
    }

    /// Whether a key generated on a device of type `t` must be attested.
    pub fn requires_attestation(&self, t: DeviceType) -> bool {
        self.require_device_attestation.unwrap_or(t.attests())
    }

    /// Everything about the policy, including every rule against each targeted type.
    pub fn validate(&self) -> ValidationResult {
        validate::name("name", &self.name)?;
        validate::description("description", &self.description)?;
        if self.device_types.is_empty() {
            return Err(ValidationError::new(
                "device_types_empty",
                "device_types",
                "a device policy targets at least one device type",
            ));
        }
        for (i, t) in self.device_types.iter().enumerate() {
            if self.device_types[..i].contains(t) {
                return Err(ValidationError::new(
                    "duplicate_value",
                    format!("device_types[{i}]"),
                    format!("{t} is listed twice"),
                ));
            }
        }
        self.pin_application
            .validate()
            .map_err(|e| e.within("pin_application"))?;
        for (i, app) in self.pki_applications.iter().enumerate() {
            let prefix = format!("pki_applications[{i}]");
            app.validate().map_err(|e| e.within(&prefix))?;
            if self.pki_applications[..i]
                .iter()
                .any(|a| a.slot == app.slot)
            {
                return Err(ValidationError::new(
                    "duplicate_slot",
                    format!("{prefix}.slot"),
                    format!("slot {} is used twice", app.slot),
                ));
            }
        }
        if let Some(f) = &self.fido_application {
            f.validate().map_err(|e| e.within("fido_application"))?;
        }
        if !(1..=MAX_TEMPORARY_DAYS).contains(&self.temporary_validity_days) {
            return Err(ValidationError::new(
                "temporary_validity_days_invalid",
                "temporary_validity_days",
                format!("a temporary device lasts 1 to {MAX_TEMPORARY_DAYS} days"),
            ));
        }
        if let Some(e) = self.device_type_problems().into_iter().next() {
            return Err(e);
        }
        Ok(())
    }

    /// Every policy-versus-device-type rule broken, for every targeted type.
    pub fn device_type_problems(&self) -> Vec<ValidationError> {
        let mut out = Vec::new();
        for (i, t) in self.device_types.iter().enumerate() {
            out.extend(self.check_device_type(*t).into_iter().map(|mut e| {
                e.message = format!("device_types[{i}] = {t}: {}", e.message);
                e
            }));
        }
        out
    }

    /// The rules that say whether this policy can target device type `t`.
    pub fn check_device_type(&self, t: DeviceType) -> Vec<ValidationError> {
        let cap = t.capabilities();
        let mut out = Vec::new();
        let pin = &self.pin_application;
        if pin.min_length < cap.pin_min_length {
            out.push(ValidationError::new(
                "pin_length_outside_device_limits",
                "pin_application.min_length",
                format!(
                    "{} PINs are at least {} characters",
                    t.label(),
                    cap.pin_min_length
                ),
            ));
        }
        if pin.max_length > cap.pin_max_length {
            out.push(ValidationError::new(
                "pin_length_outside_device_limits",
                "pin_application.max_length",
                format!(
                    "{} PINs are at most {} characters",
                    t.label(),
                    cap.pin_max_length
                ),
            ));
        }
        if !cap.pin_character_sets.contains(&pin.character_set) {
            out.push(ValidationError::new(
                "pin_character_set_not_supported",
                "pin_application.character_set",
                format!(
                    "{} PINs allow: {}",
                    t.label(),
                    cap.pin_character_sets
                        .iter()
                        .map(|c| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        for (v, field) in [
            (pin.pin_retry_count, "pin_application.pin_retry_count"),
            (pin.puk_retry_count, "pin_application.puk_retry_count"),
        ] {
            let Some(n) = v else { continue };
            // A device that cannot change its retry counters (a generic PIV
            // card) keeps the ones it has: the policy's counts apply to the
            // types that can set them. Issue 5's "PIV Standard" targets piv
            // cards with retries 3, so this is not an error.
            if cap.can_change_retry_counts && n > cap.max_retry_count {
                out.push(ValidationError::new(
                    "retry_count_outside_device_limits",
                    field,
                    format!(
                        "{} retry counts are at most {}",
                        t.label(),
                        cap.max_retry_count
                    ),
                ));
            }
        }
        if self.management_key != ManagementKeyMode::Keep && !cap.can_change_management_key {
            out.push(ValidationError::new(
                "management_key_change_not_supported",
                "management_key",
                format!("the management key cannot be changed on a {}", t.label()),
            ));
        }
        for (i, app) in self.pki_applications.iter().enumerate() {
            if cap.algorithm(app.algorithm).is_none() {
                out.push(ValidationError::new(
                    "algorithm_not_supported",
                    format!("pki_applications[{i}].algorithm"),
                    format!("{} does not support {}", t.label(), app.algorithm),
                ));
            }
        }
        if let Some(f) = &self.fido_application {
            if !cap.supports_fido() {
                out.push(ValidationError::new(
                    "fido_not_supported",
                    "fido_application",
                    format!("{} has no FIDO application", t.label()),
                ));
            } else {
                if f.share_device_pin && !cap.can_share_pin {
                    out.push(ValidationError::new(
                        "shared_pin_not_supported",
                        "fido_application.share_device_pin",
                        format!("{} cannot share one PIN between PIV and FIDO", t.label()),
                    ));
                }
                if cap.entra_passkey == EntraPasskeySupport::NotSupported {
                    out.push(ValidationError::new(
                        "passkey_not_supported",
                        "fido_application",
                        format!("{} cannot hold an Entra passkey", t.label()),
                    ));
                }
            }
            // A shared PIN is also the FIDO PIN: FIDO needs at least 4 characters, which
            // every PIV limit already exceeds, so nothing further to check here.
            if f.share_device_pin && pin.character_set == CharacterSet::Printable {
                out.push(ValidationError::new(
                    "pin_character_set_not_supported",
                    "pin_application.character_set",
                    "a PIN shared with FIDO must be numeric or alphanumeric",
                ));
            }
        }
        out
    }

    /// The rules that need the actual device: its type is targeted, its firmware is
    /// new enough for the Entra passkey and for each algorithm.
    pub fn check_device(&self, device: &Device) -> ValidationResult {
        let t = device.device_type;
        if !self.device_types.contains(&t) {
            return Err(ValidationError::new(
                "device_type_not_in_policy",
                "device_policy",
                format!("device policy {} does not target {}", self.name, t.label()),
            ));
        }
        if let Some(e) = self.check_device_type(t).into_iter().next() {
            return Err(e);
        }
        let cap = t.capabilities();
        let firmware_needed = |min: crate::firmware::FirmwareVersion, field: String, what: &str| {
            match device.firmware_version {
            Some(v) if v >= min => Ok(()),
            Some(v) => Err(ValidationError::new(
                "firmware_too_old",
                field,
                format!("{what} needs {} firmware {min} or higher; the device has {v}", t.label()),
            )),
            None => Err(ValidationError::new(
                "firmware_unknown",
                field,
                format!("{what} needs {} firmware {min} or higher; the device's firmware is unknown", t.label()),
            )),
        }
        };
        if self.fido_application.is_some() {
            if let EntraPasskeySupport::FromFirmware(min) = cap.entra_passkey {
                firmware_needed(min, "fido_application".into(), "an Entra passkey")?;
            }
        }
        for (i, app) in self.pki_applications.iter().enumerate() {
            if let Some(min) = cap.algorithm(app.algorithm).and_then(|a| a.min_firmware) {
                firmware_needed(
                    min,
                    format!("pki_applications[{i}].algorithm"),
                    app.algorithm.label(),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{NewDevice, Serial};
    use crate::firmware::FirmwareVersion;
    use std::collections::BTreeMap;

    fn pki() -> PkiApplication {
        PkiApplication {
            name: "PIV Authentication".into(),
            slot: PivSlot::Authentication,
            algorithm: KeyAlgorithm::EccP256,
            certificate_authority: "Keyward Demo CA".into(),
            template: CertificateTemplate {
                subject_dn: "CN={display_name},UID={login},O=Example".into(),
                subject_alt_names: vec![SanSource::Upn, SanSource::Mail],
                validity_days: 365,
                key_usage: vec![KeyUsage::DigitalSignature],
                extended_key_usage: vec![
                    ExtendedKeyUsage::ClientAuth,
                    ExtendedKeyUsage::SmartcardLogon,
                ],
            },
            renewal_window_days: None,
            renewal: None,
        }
    }

    #[test]
    fn renewal_defaults_and_refusals() {
        let mut app = pki();
        assert_eq!(app.renewal_mode(), RenewalMode::Rekey);
        assert_eq!(app.renewal_window(), DEFAULT_RENEWAL_WINDOW_DAYS);
        app.template.validity_days = 30;
        assert_eq!(
            app.renewal_window(),
            15,
            "half a validity shorter than 84 days"
        );
        app.renewal_window_days = Some(30);
        assert_eq!(app.validate().unwrap_err().code, "renewal_window_invalid");
        app.renewal_window_days = Some(10);
        assert!(app.validate().is_ok());
        app.slot = PivSlot::KeyManagement;
        assert_eq!(app.renewal_mode(), RenewalMode::SameKey, "9D keeps its key");
        // A 9D rekey is a policy's choice; a device that cannot keep the old
        // key in a retired slot refuses it when updated (domain::update).
        app.renewal = Some(RenewalMode::Rekey);
        assert!(app.validate().is_ok());
        app.renewal = Some(RenewalMode::SameKey);
        assert!(app.validate().is_ok());
    }

    fn policy(types: &[DeviceType], share: Option<bool>) -> DevicePolicy {
        DevicePolicy {
            id: Uuid::nil(),
            name: "PIV + Passkey".into(),
            description: String::new(),
            device_types: types.to_vec(),
            pin_application: PinApplication::default(),
            management_key: ManagementKeyMode::Keep,
            pki_applications: vec![pki()],
            fido_application: share.map(|s| FidoApplication {
                passkey_service_id: Uuid::new_v4(),
                passkey_service_name: "Contoso".into(),
                share_device_pin: s,
                cred_protect: 1,
                display_name_template: "{device_type} {serial}".into(),
            }),
            require_device_attestation: None,
            temporary_validity_days: 7,
            approval_required_for: vec![],
        }
    }

    fn codes(p: &DevicePolicy, t: DeviceType) -> Vec<(String, String)> {
        p.check_device_type(t)
            .into_iter()
            .map(|e| (e.code, e.field))
            .collect()
    }

    #[test]
    fn shared_pin_cannot_target_yubikey() {
        assert!(policy(&[DeviceType::C4000], Some(true)).validate().is_ok());
        assert!(policy(&[DeviceType::YubiKey5], Some(false))
            .validate()
            .is_ok());
        let e = policy(&[DeviceType::C4000, DeviceType::YubiKey5], Some(true))
            .validate()
            .unwrap_err();
        assert_eq!(e.code, "shared_pin_not_supported");
        assert_eq!(e.field, "fido_application.share_device_pin");
        assert!(e.message.contains("device_types[1]"), "{}", e.message);
    }

    /// Issue 15, item 1: one switch, on by default where the device attests.
    #[test]
    fn attestation_is_required_unless_a_policy_says_no() {
        let mut p = policy(&[DeviceType::YubiKey5, DeviceType::C4000], None);
        assert!(p.requires_attestation(DeviceType::YubiKey5));
        assert!(
            !p.requires_attestation(DeviceType::C4000),
            "a C4000 cannot attest"
        );
        p.require_device_attestation = Some(false);
        assert!(!p.requires_attestation(DeviceType::YubiKey5));
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json["require_device_attestation"], false,
            "an explicit no stays explicit"
        );
        p.require_device_attestation = None;
        let json = serde_json::to_value(&p).unwrap();
        assert!(json.get("require_device_attestation").is_none());
    }

    #[test]
    fn pin_rules_must_fit_device_limits() {
        let mut p = policy(&[DeviceType::Piv], None);
        p.pin_application.min_length = 4;
        p.pin_application.character_set = CharacterSet::Alphanumeric;
        assert_eq!(
            codes(&p, DeviceType::Piv),
            [
                (
                    "pin_length_outside_device_limits".to_string(),
                    "pin_application.min_length".to_string()
                ),
                (
                    "pin_character_set_not_supported".into(),
                    "pin_application.character_set".into()
                ),
            ]
        );
        p.pin_application.min_length = 6;
        assert_eq!(codes(&p, DeviceType::C4000), []);
        p.pin_application.max_length = 12;
        assert_eq!(
            codes(&p, DeviceType::C4000)[0].1,
            "pin_application.max_length"
        );
    }

    #[test]
    fn generic_piv_keeps_management_key_and_retries() {
        let mut p = policy(&[DeviceType::Piv], None);
        assert!(p.validate().is_ok());
        p.management_key = ManagementKeyMode::Random;
        assert_eq!(
            p.validate().unwrap_err().code,
            "management_key_change_not_supported"
        );
        p.management_key = ManagementKeyMode::Keep;
        // Retry counts are applied where the device can set them; a generic
        // PIV card keeps its own, so the policy stays valid.
        p.pin_application.pin_retry_count = Some(5);
        assert!(p.validate().is_ok());
        p.device_types = vec![DeviceType::YubiKey5];
        p.management_key = ManagementKeyMode::Random;
        assert!(p.validate().is_ok());
    }

    #[test]
    fn algorithms_and_fido_per_type() {
        let mut p = policy(&[DeviceType::Piv], Some(false));
        assert!(codes(&p, DeviceType::Piv)
            .iter()
            .any(|c| c.0 == "fido_not_supported"));
        p.fido_application = None;
        p.pki_applications[0].algorithm = KeyAlgorithm::EccP384;
        assert_eq!(
            codes(&p, DeviceType::Piv)[0],
            (
                "algorithm_not_supported".to_string(),
                "pki_applications[0].algorithm".to_string()
            )
        );
    }

    #[test]
    fn entra_passkey_needs_yubikey_5_3() {
        let p = policy(&[DeviceType::YubiKey5, DeviceType::C4000], Some(false));
        let dev = |t, fw: Option<&str>| {
            NewDevice {
                device_type: t,
                serial: Serial(1),
                firmware_version: fw.map(|f| f.parse().unwrap()),
                atr: None,
            }
            .into_device()
        };
        assert!(p
            .check_device(&dev(DeviceType::YubiKey5, Some("5.3.0")))
            .is_ok());
        let e = p
            .check_device(&dev(DeviceType::YubiKey5, Some("5.2.7")))
            .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_str()),
            ("firmware_too_old", "fido_application")
        );
        assert_eq!(
            p.check_device(&dev(DeviceType::YubiKey5, None))
                .unwrap_err()
                .code,
            "firmware_unknown"
        );
        assert!(p.check_device(&dev(DeviceType::C4000, None)).is_ok());
        assert_eq!(
            p.check_device(&dev(DeviceType::Piv, None))
                .unwrap_err()
                .code,
            "device_type_not_in_policy"
        );
        let mut p = policy(&[DeviceType::YubiKey5], None);
        p.pki_applications[0].algorithm = KeyAlgorithm::Rsa4096;
        assert!(p
            .check_device(&dev(DeviceType::YubiKey5, Some("5.7.0")))
            .is_ok());
        assert_eq!(
            p.check_device(&dev(DeviceType::YubiKey5, Some("5.4.3")))
                .unwrap_err()
                .code,
            "firmware_too_old"
        );
        let _ = FirmwareVersion::new(5, 3, 0);
    }

    #[test]
    fn self_consistency_errors_are_nested() {
        let mut p = policy(&[DeviceType::C4000], Some(true));
        p.fido_application.as_mut().unwrap().cred_protect = 4;
        assert_eq!(
            p.validate().unwrap_err().field,
            "fido_application.cred_protect"
        );
        let mut p = policy(&[DeviceType::C4000], None);
        p.pki_applications.push(pki());
        assert_eq!(p.validate().unwrap_err().field, "pki_applications[1].slot");
        let mut p = policy(&[DeviceType::C4000], None);
        p.pki_applications[0].template.subject_dn = "CN={nope}".into();
        let e = p.validate().unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_str()),
            (
                "template_placeholder_unknown",
                "pki_applications[0].template.subject_dn"
            )
        );
        let mut p = policy(&[DeviceType::C4000], None);
        p.pin_application.max_length = 5;
        assert_eq!(
            p.validate().unwrap_err().field,
            "pin_application.max_length"
        );
    }

    #[test]
    fn templates_render_user_attributes() {
        let u = User {
            id: Uuid::nil(),
            login: "alice".into(),
            upn: Some("alice@example.com".into()),
            display_name: "Alice Example".into(),
            email: None,
            attributes: BTreeMap::from([("objectSid".into(), "S-1-5-21".into())]),
            status: crate::names::UserStatus::Active,
        };
        assert_eq!(
            render_template(
                "t",
                "CN={display_name}, {{x}} {attr:objectSid} {upn}",
                &u,
                None
            )
            .unwrap(),
            "CN=Alice Example, {x} S-1-5-21 alice@example.com"
        );
        assert_eq!(
            render_template("t", "{mail}", &u, None).unwrap_err().code,
            "user_attribute_missing"
        );
        assert_eq!(
            render_template("t", "{mail", &u, None).unwrap_err().code,
            "template_invalid"
        );
    }

    #[test]
    fn policy_json_rejects_unknown_fields_and_values() {
        let ok = r#"{"name":"PIV Standard","device_types":["piv","c4000"]}"#;
        let p: DevicePolicy = serde_json::from_str(ok).unwrap();
        assert!(p.validate().is_ok());
        assert!(serde_json::from_str::<DevicePolicy>(
            r#"{"name":"x","device_types":["piv"],"colour":1}"#
        )
        .is_err());
        let e = serde_json::from_str::<DevicePolicy>(r#"{"name":"x","device_types":["yubikey4"]}"#)
            .unwrap_err();
        assert!(e.to_string().contains("c4000, yubikey5, piv"), "{e}");
    }
}
