//! Service names: the one rule for what a service may be called, and a type that can only hold a valid
//! name. A leaf module: the config, the API's paths and the registry's registrations all parse names here.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::Serialize;

/// Longest allowed service name (a DNS label, so names fit in hostnames and label values).
pub const MAX_SERVICE_NAME_LEN: usize = 63;

/// A valid service name: 1 to 63 characters of `a-z`, `0-9`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ServiceName(String);

/// A name that breaks the rule; its message quotes the name (cut to 80 characters) and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {shown:?}: use 1 to {MAX_SERVICE_NAME_LEN} characters of a-z, 0-9, _ and -")]
pub struct InvalidName {
    shown: String,
}

impl ServiceName {
    /// `name`, when it follows the rule.
    pub fn parse(name: impl Into<String>) -> Result<Self, InvalidName> {
        let name = name.into();
        if Self::is_valid(&name) {
            Ok(Self(name))
        } else {
            Err(InvalidName {
                shown: name.chars().take(80).collect(),
            })
        }
    }

    /// Whether `name` follows the rule.
    pub fn is_valid(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_SERVICE_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for ServiceName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ServiceName> for String {
    fn from(name: ServiceName) -> String {
        name.0
    }
}

impl PartialEq<str> for ServiceName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ServiceName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        for good in ["dao", "vpn_coordinator", "a-1", &"x".repeat(63)] {
            assert!(ServiceName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Dao", "a b", "ä", "../x", &"x".repeat(64)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad}");
        }
        let long = ServiceName::parse("X".repeat(200)).unwrap_err().to_string();
        assert!(
            long.contains(&"X".repeat(80)) && !long.contains(&"X".repeat(81)),
            "{long}"
        );
    }
}
