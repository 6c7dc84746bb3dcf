//! People who receive devices.

use crate::error::{ValidationError, ValidationResult};
use crate::names::UserStatus;
use crate::validate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A user as Keyward stores it. Directory attributes are free key/value pairs
/// (e.g. `objectSid` for the SID certificate extension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: Uuid,
    pub login: String,
    #[serde(default)]
    pub upn: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default = "active")]
    pub status: UserStatus,
}

fn active() -> UserStatus {
    UserStatus::Active
}

/// The fields a caller supplies to create a user (the id is assigned by Keyward).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub login: String,
    #[serde(default)]
    pub upn: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default = "active")]
    pub status: UserStatus,
}

impl NewUser {
    pub fn validate(&self) -> ValidationResult {
        validate_fields(
            &self.login,
            self.upn.as_deref(),
            &self.display_name,
            self.email.as_deref(),
            &self.attributes,
        )
    }

    /// A validated user with a fresh id.
    pub fn into_user(self) -> Result<User, ValidationError> {
        self.validate()?;
        Ok(User {
            id: Uuid::new_v4(),
            login: self.login,
            upn: self.upn,
            display_name: self.display_name,
            email: self.email,
            attributes: self.attributes,
            status: self.status,
        })
    }
}

impl User {
    pub fn validate(&self) -> ValidationResult {
        validate_fields(
            &self.login,
            self.upn.as_deref(),
            &self.display_name,
            self.email.as_deref(),
            &self.attributes,
        )
    }
}

fn validate_fields(
    login: &str,
    upn: Option<&str>,
    display_name: &str,
    email: Option<&str>,
    attributes: &BTreeMap<String, String>,
) -> ValidationResult {
    validate::login("login", login)?;
    if let Some(u) = upn {
        validate::upn("upn", u)?;
    }
    validate::name("display_name", display_name)?;
    if let Some(e) = email {
        validate::email("email", e)?;
    }
    if attributes.len() > validate::ATTRIBUTES_MAX {
        return Err(ValidationError::new(
            "too_many_attributes",
            "attributes",
            format!("at most {} attributes", validate::ATTRIBUTES_MAX),
        ));
    }
    for (k, v) in attributes {
        validate::attribute_key("attributes", k)?;
        validate::attribute_value(&format!("attributes.{k}"), v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> NewUser {
        NewUser {
            login: "alice".into(),
            upn: Some("alice@example.com".into()),
            display_name: "Alice Example".into(),
            email: Some("alice@example.com".into()),
            attributes: BTreeMap::from([("objectSid".into(), "S-1-5-21-1-2-3-1001".into())]),
            status: UserStatus::Active,
        }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(alice().into_user().is_ok());
        let mut u = alice();
        u.email = Some("nope".into());
        assert_eq!(u.validate().unwrap_err().field, "email");
        let mut u = alice();
        u.attributes.insert("ok".into(), "bad\u{0}".into());
        assert_eq!(u.validate().unwrap_err().field, "attributes.ok");
    }

    #[test]
    fn unknown_json_fields_rejected() {
        let e = serde_json::from_str::<NewUser>(r#"{"login":"a","display_name":"A","admin":true}"#)
            .unwrap_err();
        assert!(e.to_string().contains("admin"));
        let u: NewUser = serde_json::from_str(r#"{"login":"a","display_name":"A"}"#).unwrap();
        assert_eq!(u.status, UserStatus::Active);
    }
}
