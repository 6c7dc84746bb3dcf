//! Passkey-Enabled Services (Entra ID): where FIDO applications register passkeys.

use crate::error::{ValidationError, ValidationResult};
use crate::validate;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use uuid::Uuid;

pub const DEFAULT_AUTHORITY_URL: &str = "https://login.microsoftonline.com";
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// The token scope is its own setting: national clouds and test stand-ins differ, and
/// it is never derived from the Graph URL.
pub const DEFAULT_TOKEN_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Graph API versions: v1.0 fixes the challenge timeout at 5 minutes, beta
/// takes 5 to 43,200.
pub const API_VERSIONS: &[&str] = &["v1.0", "beta"];
pub const DEFAULT_API_VERSION: &str = "v1.0";
pub const DEFAULT_CHALLENGE_TIMEOUT_MINUTES: u32 = 5;
pub const MAX_CHALLENGE_TIMEOUT_MINUTES: u32 = 43_200;

/// A secret sealed by the server (AEAD ciphertext, or a reference to it). The domain
/// never sees the plaintext; Debug does not print the bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SealedSecret(pub Vec<u8>);

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret(<{} bytes>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyService {
    pub id: Uuid,
    pub name: String,
    /// Directory (tenant) ID: a GUID or a verified domain (contoso.onmicrosoft.com).
    pub tenant_id: String,
    /// Application (client) ID: a GUID.
    pub client_id: String,
    /// The sealed client credential: the client secret, or, with a
    /// certificate credential, the certificate's private key (PEM).
    pub client_secret: SealedSecret,
    /// The certificate credential (PEM, public): when set, the service signs
    /// client assertions with the key sealed in `client_secret` instead of
    /// sending a secret.
    pub client_certificate_pem: Option<String>,
    pub authority_url: String,
    pub graph_url: String,
    pub token_scope: String,
    /// `v1.0` or `beta` (a longer challenge timeout).
    pub api_version: String,
    /// How long a creationOptions challenge lives (v1.0: 5 minutes).
    pub challenge_timeout_minutes: u32,
    /// How users are matched in Entra ID: None, by UPN; Some(NAME), by the
    /// Entra object ID kept in the user attribute NAME.
    pub user_id_attribute: Option<String>,
}

/// The service as the API shows it: no secret, only whether one is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasskeyServiceView {
    pub id: Uuid,
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret_set: bool,
    /// `secret` or `certificate`.
    pub credential_kind: String,
    /// The certificate credential's SHA-256 thumbprint (hex), filled in by
    /// the server, which parses certificates (the domain does not).
    pub certificate_thumbprint_sha256: Option<String>,
    pub authority_url: String,
    pub graph_url: String,
    pub token_scope: String,
    pub api_version: String,
    pub challenge_timeout_minutes: u32,
    pub user_id_attribute: Option<String>,
}

impl PasskeyService {
    pub fn view(&self) -> PasskeyServiceView {
        PasskeyServiceView {
            id: self.id,
            name: self.name.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret_set: !self.client_secret.0.is_empty(),
            credential_kind: self.credential_kind().into(),
            certificate_thumbprint_sha256: None,
            authority_url: self.authority_url.clone(),
            graph_url: self.graph_url.clone(),
            token_scope: self.token_scope.clone(),
            api_version: self.api_version.clone(),
            challenge_timeout_minutes: self.challenge_timeout_minutes,
            user_id_attribute: self.user_id_attribute.clone(),
        }
    }

    /// `certificate` when a certificate credential is configured, else `secret`.
    pub fn credential_kind(&self) -> &'static str {
        if self.client_certificate_pem.is_some() {
            "certificate"
        } else {
            "secret"
        }
    }

    /// The user as Entra ID knows them: the object ID attribute when the
    /// service matches by it, else the UPN (else the login).
    pub fn entra_user(&self, user: &crate::User) -> Option<String> {
        match &self.user_id_attribute {
            Some(attr) => user.attributes.get(attr).cloned(),
            None => Some(user.upn.clone().unwrap_or_else(|| user.login.clone())),
        }
    }

    pub fn validate(&self) -> ValidationResult {
        validate::name("name", &self.name)?;
        if Uuid::parse_str(&self.tenant_id).is_err()
            && !(validate::dns_name_ok(&self.tenant_id) && self.tenant_id.contains('.'))
        {
            return Err(ValidationError::new(
                "tenant_id_invalid",
                "tenant_id",
                "tenant ID must be a GUID or a domain name such as contoso.onmicrosoft.com",
            ));
        }
        if Uuid::parse_str(&self.client_id).is_err() {
            return Err(ValidationError::new(
                "client_id_invalid",
                "client_id",
                "client ID must be a GUID",
            ));
        }
        if self.client_secret.0.is_empty() {
            return Err(ValidationError::new(
                "client_secret_missing",
                "client_secret",
                "a client secret is required",
            ));
        }
        validate_service_url("authority_url", &self.authority_url)?;
        validate_service_url("graph_url", &self.graph_url)?;
        validate_scope("token_scope", &self.token_scope)?;
        if !API_VERSIONS.contains(&self.api_version.as_str()) {
            return Err(ValidationError::unknown_value(
                "api_version",
                &self.api_version,
                API_VERSIONS,
            ));
        }
        let t = self.challenge_timeout_minutes;
        if !(DEFAULT_CHALLENGE_TIMEOUT_MINUTES..=MAX_CHALLENGE_TIMEOUT_MINUTES).contains(&t)
            || (self.api_version == "v1.0" && t != DEFAULT_CHALLENGE_TIMEOUT_MINUTES)
        {
            return Err(ValidationError::new(
                "challenge_timeout_invalid",
                "challenge_timeout_minutes",
                "the challenge timeout is 5 minutes with Graph v1.0, 5 to 43200 with beta",
            ));
        }
        if let Some(a) = &self.user_id_attribute {
            validate::attribute_key("user_id_attribute", a)?;
        }
        Ok(())
    }
}

/// The parts of an absolute http(s) URL that the rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub path: &'a str,
}

/// Splits `scheme://host[:port][/path]` (IPv6 hosts in brackets). No userinfo, query
/// or fragment: service base URLs have none.
pub fn parse_url<'a>(field: &str, url: &'a str) -> Result<UrlParts<'a>, ValidationError> {
    let bad = |why: &str| {
        ValidationError::new(
            "url_invalid",
            field,
            format!("{field} is not a valid URL: {why}"),
        )
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
    let scheme_ok = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
    if !scheme_ok {
        return Err(ValidationError::new(
            "url_scheme_not_allowed",
            field,
            format!("{field} must use https"),
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || rest.contains(['?', '#', '@']) {
        return Err(bad("no spaces, query, fragment or user info allowed"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = if let Some(r) = authority.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        h.parse::<Ipv6Addr>().map_err(|_| bad("bad IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("bad port"))?),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("bad port"))?,
        ),
    };
    if host.is_empty()
        || (host.parse::<IpAddr>().is_err()
            && !authority.starts_with('[')
            && !validate::dns_name_ok(host))
    {
        return Err(bad("bad host"));
    }
    Ok(UrlParts {
        scheme,
        host,
        port,
        path,
    })
}

/// Loopback: 127.0.0.0/8, ::1 and `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => a.octets()[0] == 127,
        Ok(IpAddr::V6(a)) => {
            a == Ipv6Addr::LOCALHOST
                || a.to_ipv4_mapped()
                    .is_some_and(|v: Ipv4Addr| v.octets()[0] == 127)
        }
        Err(_) => false,
    }
}

/// https, or plain http to a loopback host (test stand-ins).
pub fn validate_service_url(field: &str, url: &str) -> ValidationResult {
    let u = parse_url(field, url)?;
    if u.scheme.eq_ignore_ascii_case("http") && !is_loopback_host(u.host) {
        return Err(ValidationError::new(
            "url_scheme_not_allowed",
            field,
            format!("{field} must use https (plain http only for loopback addresses)"),
        ));
    }
    Ok(())
}

/// A token scope: an http(s)/api URI, no whitespace (`https://graph.microsoft.com/.default`).
pub fn validate_scope(field: &str, s: &str) -> ValidationResult {
    if s.is_empty()
        || s.len() > 512
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
        || !s.contains("://")
    {
        return Err(ValidationError::new(
            "scope_invalid",
            field,
            "token scope must be one URI such as https://graph.microsoft.com/.default",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn svc() -> PasskeyService {
        PasskeyService {
            id: Uuid::new_v4(),
            name: "Contoso".into(),
            tenant_id: "contoso.onmicrosoft.com".into(),
            client_id: Uuid::new_v4().to_string(),
            client_secret: SealedSecret(vec![1, 2, 3]),
            client_certificate_pem: None,
            authority_url: DEFAULT_AUTHORITY_URL.into(),
            graph_url: DEFAULT_GRAPH_URL.into(),
            token_scope: DEFAULT_TOKEN_SCOPE.into(),
            api_version: DEFAULT_API_VERSION.into(),
            challenge_timeout_minutes: DEFAULT_CHALLENGE_TIMEOUT_MINUTES,
            user_id_attribute: None,
        }
    }

    #[test]
    fn urls() {
        assert!(svc().validate().is_ok());
        for ok in [
            "https://login.microsoftonline.us",
            "http://127.0.0.1:8080/entra",
            "http://[::1]:9/",
            "http://localhost:3000",
            "http://127.9.9.9",
        ] {
            assert!(validate_service_url("graph_url", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://graph.microsoft.com",
            "http://10.0.0.1",
            "ftp://x",
            "https://",
            "graph.microsoft.com",
            "https://a b",
            "https://x:0",
            "http://localhost.evil.com",
            "https://u@host",
        ] {
            let e = validate_service_url("graph_url", bad).unwrap_err();
            assert_eq!(e.field, "graph_url", "{bad}");
        }
        let mut s = svc();
        s.client_id = "nope".into();
        assert_eq!(s.validate().unwrap_err().field, "client_id");
        let mut s = svc();
        s.authority_url = "http://login.example".into();
        assert_eq!(s.validate().unwrap_err().code, "url_scheme_not_allowed");
        assert!(!format!("{:?}", svc()).contains("[1, 2, 3]"));
        assert!(svc().view().client_secret_set);
        let mut s = svc();
        s.challenge_timeout_minutes = 60;
        assert_eq!(
            s.validate().unwrap_err().field,
            "challenge_timeout_minutes",
            "v1.0 fixes 5 minutes"
        );
        s.api_version = "beta".into();
        assert!(s.validate().is_ok());
        s.challenge_timeout_minutes = 43_201;
        assert!(s.validate().is_err());
        s.api_version = "v2".into();
        assert_eq!(s.validate().unwrap_err().field, "api_version");
    }

    proptest! {
        #[test]
        fn http_only_for_loopback(a in 0u8..=255, b in 0u8..=255, port in 1u16..) {
            let url = format!("http://{a}.{b}.0.1:{port}/x");
            prop_assert_eq!(validate_service_url("u", &url).is_ok(), a == 127);
            let https = format!("https://{a}.{b}.0.1:{port}/x");
            prop_assert!(validate_service_url("u", &https).is_ok());
        }

        #[test]
        fn url_parser_never_panics(s in ".*") {
            let _ = validate_service_url("u", &s);
        }
    }
}
