//! Security Settings, User Portal configuration and Device parameters, as one set of
//! key/value settings (`keyward admin settings set KEY VALUE`).

use crate::canonical_enum;
use crate::error::{ValidationError, ValidationResult};
use crate::names::{parse_bool, DisplayMode, WhoCanBind};
use serde::{Deserialize, Serialize};
use std::fmt;

canonical_enum! {
    /// Canonical settings keys; `label` is the product's wording.
    pub enum SettingKey (field = "key") {
        InitialPinDisplayMode = "initial_pin_display_mode", "Device initial PIN display mode";
        ChangePinDuringIssuance = "change_pin_during_issuance", "Change PIN during issuance";
        WhoCanBind = "who_can_bind", "Who can bind the device to the user?";
        EnableIssuanceRetryForUser = "enable_issuance_retry_for_user", "Enable issuance retry for user";
        AutoImportUnknownDevices = "auto_import_unknown_devices", "Enable Automatic Import of Unknown Cards";
        UnlockRequestMinutes = "unlock_request_minutes", "Unlock request validity (minutes)";
    }
}

impl SettingKey {
    /// The settings page the key belongs to in the product.
    pub const fn section(self) -> &'static str {
        match self {
            SettingKey::InitialPinDisplayMode => "Security Settings",
            SettingKey::ChangePinDuringIssuance
            | SettingKey::WhoCanBind
            | SettingKey::EnableIssuanceRetryForUser => "User Portal configuration",
            SettingKey::AutoImportUnknownDevices => "Device parameters",
            SettingKey::UnlockRequestMinutes => "Security Settings",
        }
    }

    /// Parses a value for this key from its string form.
    pub fn parse_value(self, s: &str) -> Result<SettingValue, ValidationError> {
        let field = self.as_str();
        Ok(match self {
            SettingKey::InitialPinDisplayMode => {
                SettingValue::DisplayMode(DisplayMode::parse_field(s.trim(), field)?)
            }
            SettingKey::WhoCanBind => {
                SettingValue::WhoCanBind(WhoCanBind::parse_field(s.trim(), field)?)
            }
            SettingKey::ChangePinDuringIssuance
            | SettingKey::EnableIssuanceRetryForUser
            | SettingKey::AutoImportUnknownDevices => SettingValue::Bool(parse_bool(field, s)?),
            SettingKey::UnlockRequestMinutes => SettingValue::Minutes(parse_minutes(field, s)?),
        })
    }
}

/// Longest validity of an unlock request: a day.
pub const MAX_UNLOCK_REQUEST_MINUTES: u16 = 1440;

fn parse_minutes(field: &str, s: &str) -> Result<u16, ValidationError> {
    s.trim()
        .parse::<u16>()
        .ok()
        .filter(|m| (1..=MAX_UNLOCK_REQUEST_MINUTES).contains(m))
        .ok_or_else(|| {
            ValidationError::new(
                "setting_value_invalid",
                field,
                format!("{field} is a number of minutes from 1 to {MAX_UNLOCK_REQUEST_MINUTES}"),
            )
        })
}

/// One setting's value. Displays as its canonical string (`true`, `not_displayed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Bool(bool),
    DisplayMode(DisplayMode),
    WhoCanBind(WhoCanBind),
    Minutes(u16),
}

impl SettingValue {
    /// The product's wording ("Yes", "Not Displayed").
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            SettingValue::Bool(true) => "Yes".into(),
            SettingValue::Bool(false) => "No".into(),
            SettingValue::DisplayMode(m) => m.label().into(),
            SettingValue::WhoCanBind(w) => w.label().into(),
            SettingValue::Minutes(m) => format!("{m} minutes").into(),
        }
    }
}

impl fmt::Display for SettingValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingValue::Bool(b) => write!(f, "{b}"),
            SettingValue::DisplayMode(m) => write!(f, "{m}"),
            SettingValue::WhoCanBind(w) => write!(f, "{w}"),
            SettingValue::Minutes(m) => write!(f, "{m}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Security Settings: "Device initial PIN display mode".
    pub initial_pin_display_mode: DisplayMode,
    /// User Portal configuration: "Change PIN during issuance".
    pub change_pin_during_issuance: bool,
    /// User Portal configuration: "Who can bind the device to the user?".
    pub who_can_bind: WhoCanBind,
    /// User Portal configuration: "Enable issuance retry for user".
    pub enable_issuance_retry_for_user: bool,
    /// Device parameters: "Enable Automatic Import of Unknown Cards".
    pub auto_import_unknown_devices: bool,
    /// Security Settings: how long the help desk's unlock request stays
    /// valid (minutes).
    #[serde(default = "default_unlock_request_minutes")]
    pub unlock_request_minutes: u16,
}

fn default_unlock_request_minutes() -> u16 {
    10
}

impl Default for Settings {
    /// Conservative defaults: the initial PIN is not shown, the user changes it.
    fn default() -> Self {
        Self {
            initial_pin_display_mode: DisplayMode::NotDisplayed,
            change_pin_during_issuance: true,
            who_can_bind: WhoCanBind::IssuanceOperator,
            enable_issuance_retry_for_user: false,
            auto_import_unknown_devices: false,
            unlock_request_minutes: default_unlock_request_minutes(),
        }
    }
}

impl Settings {
    pub fn get(&self, key: SettingKey) -> SettingValue {
        match key {
            SettingKey::InitialPinDisplayMode => {
                SettingValue::DisplayMode(self.initial_pin_display_mode)
            }
            SettingKey::ChangePinDuringIssuance => {
                SettingValue::Bool(self.change_pin_during_issuance)
            }
            SettingKey::WhoCanBind => SettingValue::WhoCanBind(self.who_can_bind),
            SettingKey::EnableIssuanceRetryForUser => {
                SettingValue::Bool(self.enable_issuance_retry_for_user)
            }
            SettingKey::AutoImportUnknownDevices => {
                SettingValue::Bool(self.auto_import_unknown_devices)
            }
            SettingKey::UnlockRequestMinutes => SettingValue::Minutes(self.unlock_request_minutes),
        }
    }

    /// Sets one value; a value of the wrong kind names the key.
    pub fn set(&mut self, key: SettingKey, value: SettingValue) -> ValidationResult {
        let wrong = || {
            ValidationError::new(
                "setting_value_invalid",
                key.as_str(),
                format!("{value} is not a value for {key}"),
            )
        };
        match (key, value) {
            (SettingKey::InitialPinDisplayMode, SettingValue::DisplayMode(m)) => {
                self.initial_pin_display_mode = m
            }
            (SettingKey::ChangePinDuringIssuance, SettingValue::Bool(b)) => {
                self.change_pin_during_issuance = b
            }
            (SettingKey::WhoCanBind, SettingValue::WhoCanBind(w)) => self.who_can_bind = w,
            (SettingKey::EnableIssuanceRetryForUser, SettingValue::Bool(b)) => {
                self.enable_issuance_retry_for_user = b
            }
            (SettingKey::AutoImportUnknownDevices, SettingValue::Bool(b)) => {
                self.auto_import_unknown_devices = b
            }
            (SettingKey::UnlockRequestMinutes, SettingValue::Minutes(m))
                if (1..=MAX_UNLOCK_REQUEST_MINUTES).contains(&m) =>
            {
                self.unlock_request_minutes = m
            }
            _ => return Err(wrong()),
        }
        Ok(())
    }

    /// Parses and sets `key` from strings (the CLI's `settings set KEY VALUE`).
    pub fn set_str(&mut self, key: &str, value: &str) -> ValidationResult {
        let key: SettingKey = key.parse()?;
        let v = key.parse_value(value)?;
        self.set(key, v)
    }

    /// Every key with its canonical string value (what the store keeps).
    pub fn to_pairs(&self) -> Vec<(SettingKey, String)> {
        SettingKey::ALL
            .iter()
            .map(|k| (*k, self.get(*k).to_string()))
            .collect()
    }

    /// Defaults overlaid with stored pairs; unknown keys and bad values are errors.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ValidationError> {
        let mut s = Settings::default();
        for (k, v) in pairs {
            s.set_str(k, v)?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_canonical() {
        assert_eq!(
            SettingKey::NAMES,
            [
                "initial_pin_display_mode",
                "change_pin_during_issuance",
                "who_can_bind",
                "enable_issuance_retry_for_user",
                "auto_import_unknown_devices",
                "unlock_request_minutes"
            ]
        );
    }

    #[test]
    fn set_and_round_trip() {
        let mut s = Settings::default();
        s.set_str("initial_pin_display_mode", "displayed").unwrap();
        s.set_str("change_pin_during_issuance", "no").unwrap();
        s.set_str("auto_import_unknown_devices", "yes").unwrap();
        s.set_str("who_can_bind", "user").unwrap();
        let pairs = s.to_pairs();
        let back =
            Settings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
        assert_eq!(back, s);
        assert_eq!(
            s.get(SettingKey::InitialPinDisplayMode).label(),
            "Displayed"
        );
        assert_eq!(s.get(SettingKey::ChangePinDuringIssuance).label(), "No");
        let e = s.set_str("initial_pin_display_mode", "hidden").unwrap_err();
        assert_eq!(e.field, "initial_pin_display_mode");
        assert!(e.message.contains("not_displayed"));
        assert_eq!(s.set_str("colour", "red").unwrap_err().field, "key");
        assert_eq!(
            s.set(SettingKey::WhoCanBind, SettingValue::Bool(true))
                .unwrap_err()
                .code,
            "setting_value_invalid"
        );
    }
}
