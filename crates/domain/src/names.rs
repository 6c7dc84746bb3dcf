//! Canonical names: one spelling for the API, the CLI, configuration files and docs
//! (serde, Display and FromStr all agree), plus the product's UI wording via `label()`.

use crate::error::ValidationError;

/// Declares a fieldless enum whose canonical names are used everywhere.
/// `field` names the input field in the error for an unknown value.
/// (Exported: the engine's failure codes are such names too.)
#[macro_export]
macro_rules! canonical_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident (field = $field:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $canon:literal, $label:literal ; )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];
            /// Every canonical name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[ $( $canon, )+ ];
            /// The input field this enum is read from, for error messages.
            pub const FIELD: &'static str = $field;

            /// The canonical name (`in_production`).
            pub const fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $canon, )+ }
            }

            /// The product's wording for people (`In Production`).
            pub const fn label(self) -> &'static str {
                match self { $( $name::$variant => $label, )+ }
            }

            /// Parses the canonical name; the error names `field` and the allowed values.
            pub fn parse_field(s: &str, field: &str) -> Result<Self, $crate::error::ValidationError> {
                match s {
                    $( $canon => Ok($name::$variant), )+
                    other => Err($crate::error::ValidationError::unknown_value(field, other, Self::NAMES)),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::error::ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse_field(s, $field)
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> ::serde::de::Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        write!(f, "one of: {}", $name::NAMES.join(", "))
                    }
                    fn visit_str<E: ::serde::de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse::<$name>().map_err(|e| E::custom(e.message))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

canonical_enum! {
    /// The kinds of device Keyward manages.
    pub enum DeviceType (field = "device_type") {
        C4000 = "c4000", "Crescendo C4000";
        YubiKey5 = "yubikey5", "YubiKey 5";
        Piv = "piv", "PIV Card";
    }
}

canonical_enum! {
    /// Physical device states (HID CMS wording in `label`).
    pub enum DeviceState (field = "state") {
        Available = "available", "Available";
        Assigned = "assigned", "Assigned";
        InProduction = "in_production", "In Production";
        Produced = "produced", "Produced";
        Issued = "issued", "Issued";
        Invalid = "invalid", "Invalid";
        Terminated = "terminated", "Terminated";
    }
}

canonical_enum! {
    /// The reason carried with a device state (Available+Recycled, Invalid+Lost, ...).
    pub enum StateReason (field = "reason") {
        Recycled = "recycled", "Recycled";
        Failed = "failed", "Failed";
        Unassigned = "unassigned", "Unassigned";
        Lost = "lost", "Lost";
        Stolen = "stolen", "Stolen";
        Damaged = "damaged", "Damaged";
        Forgotten = "forgotten", "Forgotten";
        Expired = "expired", "Expired";
    }
}

canonical_enum! {
    /// Security Settings: "Device initial PIN display mode".
    pub enum DisplayMode (field = "initial_pin_display_mode") {
        Displayed = "displayed", "Displayed";
        Disguised = "disguised", "Disguised";
        NotDisplayed = "not_displayed", "Not Displayed";
    }
}

canonical_enum! {
    /// User Portal configuration: "Who can bind the device to the user?".
    pub enum WhoCanBind (field = "who_can_bind") {
        IssuanceOperator = "issuance_operator", "Issuance Operator";
        User = "user", "User";
    }
}

canonical_enum! {
    /// Roles of accounts (operators, self-service users, API tokens).
    pub enum Role (field = "role") {
        Administrator = "administrator", "Administrator";
        IssuanceOperator = "issuance_operator", "Issuance Operator";
        HelpDesk = "help_desk", "Help Desk";
        User = "user", "User";
    }
}

canonical_enum! {
    /// How the server reaches a device.
    pub enum Transport (field = "transport") {
        Pcsc = "pcsc", "PC/SC";
        Hid = "hid", "HID";
        InProcess = "in_process", "In Process";
    }
}

canonical_enum! {
    /// Applications (applets) on a device.
    pub enum Applet (field = "applet") {
        Piv = "piv", "PIV";
        Fido = "fido", "FIDO";
    }
}

canonical_enum! {
    /// Whether a user may sign in and receive devices.
    pub enum UserStatus (field = "status") {
        Active = "active", "Active";
        Disabled = "disabled", "Disabled";
    }
}

canonical_enum! {
    /// Characters a PIN may contain.
    pub enum CharacterSet (field = "character_set") {
        /// Digits 0-9 (what SP 800-73-4 requires).
        Numeric = "numeric", "Numeric";
        /// Digits and ASCII letters.
        Alphanumeric = "alphanumeric", "Alphanumeric";
        /// Any printable ASCII character (YubiKeys accept any bytes).
        Printable = "printable", "Printable ASCII";
    }
}

canonical_enum! {
    /// PIV key slots (SP 800-73-4).
    pub enum PivSlot (field = "slot") {
        Authentication = "9a", "PIV Authentication (9A)";
        Signature = "9c", "Digital Signature (9C)";
        KeyManagement = "9d", "Key Management (9D)";
        CardAuthentication = "9e", "Card Authentication (9E)";
    }
}

canonical_enum! {
    /// What a device policy may require a second person's approval for.
    pub enum ApprovalAction (field = "approval_required_for") {
        Issuance = "issuance", "Issuance";
        Replacement = "replacement", "Replacement";
    }
}

canonical_enum! {
    /// Where a request stands (issue 18): it waits for approval, is approved
    /// (ready to be carried out), denied or cancelled, or used by the
    /// session that carried it out (once).
    pub enum RequestState (field = "state") {
        Pending = "pending", "Waiting for approval";
        Approved = "approved", "Approved";
        Denied = "denied", "Denied";
        Cancelled = "cancelled", "Cancelled";
        Used = "used", "Carried out";
    }
}

canonical_enum! {
    /// How a certificate is renewed: a new key generated on the device
    /// (the old certificate revoked `superseded`), or a new certificate for
    /// the key the device holds (the old one left to expire).
    pub enum RenewalMode (field = "renewal") {
        Rekey = "rekey", "New key";
        SameKey = "same_key", "Same key";
    }
}

canonical_enum! {
    /// Asymmetric key algorithms (SP 800-78 names as YubiKey tools spell them).
    pub enum KeyAlgorithm (field = "algorithm") {
        Rsa2048 = "rsa2048", "RSA 2048";
        Rsa3072 = "rsa3072", "RSA 3072";
        Rsa4096 = "rsa4096", "RSA 4096";
        EccP256 = "eccp256", "ECC P-256";
        EccP384 = "eccp384", "ECC P-384";
    }
}

canonical_enum! {
    /// What a device policy does with the PIV management key.
    pub enum ManagementKeyMode (field = "management_key") {
        /// Leave the device's management key as it is.
        Keep = "keep", "Keep";
        /// Set a random per-device management key (stored encrypted).
        Random = "random", "Random per device";
    }
}

canonical_enum! {
    /// Certificate key usage bits.
    pub enum KeyUsage (field = "key_usage") {
        DigitalSignature = "digital_signature", "Digital Signature";
        NonRepudiation = "non_repudiation", "Non-Repudiation";
        KeyEncipherment = "key_encipherment", "Key Encipherment";
        DataEncipherment = "data_encipherment", "Data Encipherment";
        KeyAgreement = "key_agreement", "Key Agreement";
    }
}

canonical_enum! {
    /// Certificate extended key usages.
    pub enum ExtendedKeyUsage (field = "extended_key_usage") {
        ClientAuth = "client_auth", "Client Authentication";
        SmartcardLogon = "smartcard_logon", "Smart Card Logon";
        EmailProtection = "email_protection", "Secure Email";
        CodeSigning = "code_signing", "Code Signing";
        DocumentSigning = "document_signing", "Document Signing";
    }
}

canonical_enum! {
    /// User attributes a certificate subject alternative name can come from.
    pub enum SanSource (field = "subject_alt_names") {
        /// Microsoft UPN otherName.
        Upn = "upn", "User Principal Name";
        /// rfc822Name from the user's email.
        Mail = "mail", "Email";
    }
}

canonical_enum! {
    /// Outcome of an audited action.
    pub enum AuditOutcome (field = "outcome") {
        Success = "success", "Success";
        Failure = "failure", "Failure";
        Denied = "denied", "Denied";
    }
}

/// Parses a yes/no value the way the CLI and configuration accept it.
pub fn parse_bool(field: &str, s: &str) -> Result<bool, ValidationError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        other => Err(ValidationError::unknown_value(
            field,
            other,
            &["true", "false", "yes", "no"],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T>(all: &[T])
    where
        T: Copy
            + std::fmt::Display
            + std::str::FromStr
            + serde::Serialize
            + serde::de::DeserializeOwned
            + PartialEq
            + std::fmt::Debug,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        for v in all {
            let s = v.to_string();
            assert_eq!(s.parse::<T>().unwrap(), *v);
            let j = serde_json::to_string(v).unwrap();
            assert_eq!(j, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<T>(&j).unwrap(), *v);
        }
    }

    #[test]
    fn canonical_names_match_issue_2() {
        assert_eq!(DeviceType::NAMES, ["c4000", "yubikey5", "piv"]);
        assert_eq!(
            DeviceState::NAMES,
            [
                "available",
                "assigned",
                "in_production",
                "produced",
                "issued",
                "invalid",
                "terminated"
            ]
        );
        assert_eq!(
            StateReason::NAMES,
            [
                "recycled",
                "failed",
                "unassigned",
                "lost",
                "stolen",
                "damaged",
                "forgotten",
                "expired"
            ]
        );
        assert_eq!(
            DisplayMode::NAMES,
            ["displayed", "disguised", "not_displayed"]
        );
        assert_eq!(
            Role::NAMES,
            ["administrator", "issuance_operator", "help_desk", "user"]
        );
        assert_eq!(Transport::NAMES, ["pcsc", "hid", "in_process"]);
        assert_eq!(Applet::NAMES, ["piv", "fido"]);
        round_trip(DeviceType::ALL);
        round_trip(DeviceState::ALL);
        round_trip(StateReason::ALL);
        round_trip(DisplayMode::ALL);
        round_trip(Role::ALL);
        round_trip(Transport::ALL);
        round_trip(Applet::ALL);
        round_trip(KeyAlgorithm::ALL);
        round_trip(PivSlot::ALL);
    }

    #[test]
    fn labels_use_product_wording() {
        assert_eq!(DeviceState::Issued.label(), "Issued");
        assert_eq!(DisplayMode::NotDisplayed.label(), "Not Displayed");
        assert_eq!(Role::HelpDesk.label(), "Help Desk");
    }

    #[test]
    fn unknown_value_names_field_and_allowed_values() {
        let e = "yubikey4".parse::<DeviceType>().unwrap_err();
        assert_eq!(e.code, "unknown_value");
        assert_eq!(e.field, "device_type");
        assert!(e.message.contains("c4000, yubikey5, piv"), "{}", e.message);
        let e = serde_json::from_str::<Role>("\"root\"").unwrap_err();
        assert!(e.to_string().contains("administrator"), "{e}");
        // Canonical names are case-sensitive: one spelling everywhere.
        assert!("Issued".parse::<DeviceState>().is_err());
    }

    #[test]
    fn bools_accept_yes_no() {
        assert!(parse_bool("x", "Yes").unwrap());
        assert!(!parse_bool("x", "false").unwrap());
        assert_eq!(parse_bool("x", "maybe").unwrap_err().field, "x");
    }
}

canonical_enum! {
    /// Where a device session stands (issuance, Recycle, Change PIN). The
    /// names are the wire's (`status` of a session, `state` of a batch).
    pub enum SessionStatus (field = "status") {
        Running = "running", "Running";
        Issued = "issued", "Issued";
        Assigned = "assigned", "Assigned";
        Failed = "failed", "Failed";
        Cancelled = "cancelled", "Cancelled";
        Recycled = "recycled", "Recycled";
        PinChanged = "pin_changed", "PIN changed";
        PinChangeFailed = "pin_change_failed", "PIN change failed";
        Unlocked = "unlocked", "Unlocked";
        UnlockFailed = "unlock_failed", "Unlock failed";
        Updated = "updated", "Updated";
        UpdateFailed = "update_failed", "Update failed";
    }
}

impl SessionStatus {
    /// Whether the session still goes on (it may be waiting for a person).
    pub const fn is_running(self) -> bool {
        matches!(self, SessionStatus::Running)
    }
}

canonical_enum! {
    /// What a device session does.
    pub enum SessionAction (field = "action") {
        Issue = "issue", "Issue Device";
        Assign = "assign", "Assign Device";
        Recycle = "recycle", "Recycle";
        ChangePin = "change_pin", "Change PIN";
        Unlock = "unlock", "Unlock";
        Update = "update", "Update";
    }
}
