//! Device firmware versions (`5.4.3`), ordered numerically.

use crate::error::ValidationError;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FirmwareVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl FirmwareVersion {
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses `major[.minor[.patch]]`; missing parts are 0.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let bad = || {
            ValidationError::new(
                "invalid_firmware_version",
                "firmware_version",
                "firmware version must look like 5.4.3 (up to three numbers separated by dots)",
            )
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad());
        }
        let mut parts = [0u16; 3];
        for (n, part) in s.split('.').enumerate() {
            if n == 3 || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            parts[n] = part.parse().map_err(|_| bad())?;
        }
        Ok(Self::new(parts[0], parts[1], parts[2]))
    }
}

impl fmt::Display for FirmwareVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for FirmwareVersion {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for FirmwareVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FirmwareVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders_numerically() {
        let v = |s: &str| FirmwareVersion::parse(s).unwrap();
        assert_eq!(v("5.4.3"), FirmwareVersion::new(5, 4, 3));
        assert_eq!(v("5"), FirmwareVersion::new(5, 0, 0));
        assert!(v("5.10.0") > v("5.9.9"));
        assert!(v("5.3") >= v("5.3.0"));
        assert!(v("5.2.7") < v("5.3"));
        for bad in ["", "5.", ".5", "5.a", "1.2.3.4", "-1", "70000"] {
            assert!(FirmwareVersion::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(v("5.7.1").to_string(), "5.7.1");
    }
}
