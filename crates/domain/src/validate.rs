//! Syntax rules for the inputs people and directories send. Each function names the
//! field it was given in its error.

use crate::error::{ValidationError, ValidationResult};

pub const LOGIN_MAX: usize = 64;
pub const NAME_MAX: usize = 256;
pub const UPN_MAX: usize = 256;
pub const EMAIL_MAX: usize = 254;
pub const ATTRIBUTE_KEY_MAX: usize = 64;
pub const ATTRIBUTE_VALUE_MAX: usize = 4096;
pub const ATTRIBUTES_MAX: usize = 64;
pub const DESCRIPTION_MAX: usize = 4096;

/// A login: 1 to 64 of `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
pub fn login(field: &str, s: &str) -> ValidationResult {
    if s.is_empty() {
        return Err(ValidationError::new(
            "login_empty",
            field,
            "login must not be empty",
        ));
    }
    if s.len() > LOGIN_MAX {
        return Err(ValidationError::new(
            "login_too_long",
            field,
            format!("login must be at most {LOGIN_MAX} characters"),
        ));
    }
    let first = s.as_bytes()[0];
    if !first.is_ascii_alphanumeric()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(ValidationError::new(
            "login_invalid",
            field,
            "login may contain only letters, digits, '.', '_' and '-', and must start with a letter or digit",
        ));
    }
    Ok(())
}

/// A human-readable name (display name, policy name, service name): non-blank,
/// no control characters, no surrounding whitespace.
pub fn name(field: &str, s: &str) -> ValidationResult {
    if s.trim().is_empty() {
        return Err(ValidationError::new(
            "name_empty",
            field,
            format!("{field} must not be empty"),
        ));
    }
    if s.chars().count() > NAME_MAX {
        return Err(ValidationError::new(
            "name_too_long",
            field,
            format!("{field} must be at most {NAME_MAX} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name_invalid",
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    if s.trim() != s {
        return Err(ValidationError::new(
            "name_invalid",
            field,
            format!("{field} must not start or end with whitespace"),
        ));
    }
    Ok(())
}

/// Free text (descriptions): may be empty, bounded, no control characters but newlines/tabs.
pub fn description(field: &str, s: &str) -> ValidationResult {
    if s.chars().count() > DESCRIPTION_MAX {
        return Err(ValidationError::new(
            "description_too_long",
            field,
            format!("{field} must be at most {DESCRIPTION_MAX} characters"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(ValidationError::new(
            "description_invalid",
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~-".contains(&b)
}

/// The local part of an address: dot-atoms (no leading, trailing or double dots).
fn local_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// A DNS name: labels of letters, digits and hyphens, not starting or ending with a hyphen.
pub fn dns_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn address(
    field: &str,
    s: &str,
    max: usize,
    need_dot: bool,
    what: &str,
    code: &str,
) -> ValidationResult {
    let bad = || {
        ValidationError::new(
            code,
            field,
            format!("{what} must look like name@domain.example (at most {max} characters)"),
        )
    };
    if s.len() > max {
        return Err(bad());
    }
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    if !local_part_ok(local) || !dns_name_ok(domain) || (need_dot && !domain.contains('.')) {
        return Err(bad());
    }
    Ok(())
}

/// A user principal name, `alice@example.com` (the suffix may be a single label).
pub fn upn(field: &str, s: &str) -> ValidationResult {
    address(field, s, UPN_MAX, false, "UPN", "upn_invalid")
}

/// An email address (addr-spec with a dot-atom local part and a DNS domain).
pub fn email(field: &str, s: &str) -> ValidationResult {
    address(field, s, EMAIL_MAX, true, "email", "email_invalid")
}

/// A directory attribute name (`objectSid`, `employeeNumber`).
pub fn attribute_key(field: &str, s: &str) -> ValidationResult {
    if s.is_empty()
        || s.len() > ATTRIBUTE_KEY_MAX
        || !s.as_bytes()[0].is_ascii_alphabetic()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(ValidationError::new(
            "attribute_key_invalid",
            field,
            format!(
                "attribute names are 1 to {ATTRIBUTE_KEY_MAX} letters, digits, '_', '-' or '.', starting with a letter"
            ),
        ));
    }
    Ok(())
}

pub fn attribute_value(field: &str, s: &str) -> ValidationResult {
    if s.len() > ATTRIBUTE_VALUE_MAX || s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "attribute_value_invalid",
            field,
            format!("attribute values are at most {ATTRIBUTE_VALUE_MAX} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A hex string of bytes (ATR): even length, hex digits only, at most `max` bytes.
pub fn hex_bytes(field: &str, s: &str, max: usize) -> Result<Vec<u8>, ValidationError> {
    let s: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    let bad = || {
        ValidationError::new(
            "hex_invalid",
            field,
            format!("{field} must be hex bytes (at most {max})"),
        )
    };
    if s.len() / 2 > max {
        return Err(bad());
    }
    hex::decode(&s).map_err(|_| bad())
}

pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        assert!(login("login", "alice").is_ok());
        assert!(login("login", "j.doe-2_x").is_ok());
        assert_eq!(login("login", "").unwrap_err().code, "login_empty");
        assert_eq!(login("login", ".alice").unwrap_err().code, "login_invalid");
        assert_eq!(login("login", "al ice").unwrap_err().field, "login");
        assert!(upn("upn", "alice@example.com").is_ok());
        assert!(upn("upn", "alice@corp").is_ok());
        assert!(upn("upn", "alice@@example.com").is_err());
        assert!(upn("upn", "a..b@example.com").is_err());
        assert!(email("email", "alice@example.com").is_ok());
        assert!(email("email", "alice@localhost").is_err());
        assert!(email("email", "alice@-x.com").is_err());
        assert!(name("display_name", "Alice Example").is_ok());
        assert_eq!(name("display_name", "  ").unwrap_err().code, "name_empty");
        assert!(name("display_name", "a\u{7}").is_err());
        assert!(attribute_key("attributes", "objectSid").is_ok());
        assert!(attribute_key("attributes", "1x").is_err());
        assert_eq!(
            hex_bytes("atr", "3B:8F 80", 33).unwrap(),
            vec![0x3b, 0x8f, 0x80]
        );
        assert!(hex_bytes("atr", "3", 33).is_err());
        assert_eq!(to_hex(&[0x3b, 0x0f]), "3b0f");
    }

    proptest! {
        #[test]
        fn valid_logins_accepted(s in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}") {
            prop_assert!(login("login", &s).is_ok());
        }

        #[test]
        fn logins_with_other_bytes_rejected(a in "[a-z]{0,5}", c in "[^a-zA-Z0-9._-]", b in "[a-z]{0,5}") {
            let s = format!("{a}{c}{b}");
            let e = login("login", &s).unwrap_err();
            prop_assert_eq!(e.field, "login");
        }

        #[test]
        fn overlong_logins_rejected(s in "[a-z]{65,100}") {
            prop_assert_eq!(login("login", &s).unwrap_err().code, "login_too_long");
        }

        #[test]
        fn login_never_panics(s in ".*") {
            let _ = login("login", &s);
            let _ = upn("upn", &s);
            let _ = email("email", &s);
            let _ = name("name", &s);
            let _ = hex_bytes("atr", &s, 33);
        }

        #[test]
        fn valid_upns_accepted(l in "[a-z0-9]{1,20}(\\.[a-z0-9]{1,10}){0,2}", d in "[a-z0-9]{1,10}(\\.[a-z]{2,6}){1,2}") {
            let s = format!("{l}@{d}");
            prop_assert!(upn("upn", &s).is_ok());
            prop_assert!(email("email", &s).is_ok());
        }

        #[test]
        fn addresses_without_at_rejected(s in "[a-z0-9.]{0,40}") {
            prop_assert_eq!(upn("upn", &s).unwrap_err().field, "upn");
            prop_assert_eq!(email("mail", &s).unwrap_err().field, "mail");
        }

        #[test]
        fn hex_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..33)) {
            prop_assert_eq!(hex_bytes("atr", &to_hex(&bytes), 33).unwrap(), bytes);
        }
    }
}
