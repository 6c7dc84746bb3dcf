//! Reports over what Keyward issued. `bad-urls`: certificates whose CRL
//! distribution point or Authority Information Access names an address
//! relying parties cannot reach (issued before `public_url` was required:
//! a listen address such as `0.0.0.0`, loopback, port 0). They still work
//! where the relying party has the CRL another way; re-issue them to fix.

use axum::extract::State;
use axum::Json;
use der::Decode;
use keyward_proto::views::BadUrl;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::{AuthorityInfoAccessSyntax, CrlDistributionPoints};

use super::store_error;
use crate::app::AppState;
use crate::auth::{perm, Allowed};
use crate::error::{ApiResult, ErrorBody};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(bad_urls))
}

/// Certificates issued with an unusable revocation or issuer address.
#[utoipa::path(get, path = "/reports/bad-urls", operation_id = "reportBadUrls", tag = "reports",
    responses((status = 200, body = Vec<BadUrl>), (status = 403, body = ErrorBody)))]
async fn bad_urls(
    State(state): State<AppState>,
    Allowed(_caller, _): Allowed<perm::DevicesRead>,
) -> ApiResult<Json<Vec<BadUrl>>> {
    let certs = state
        .store
        .certificates_with_devices()
        .await
        .map_err(|e| store_error("reading the certificates", e))?;
    let mut out = Vec::new();
    for (c, device) in certs {
        let Some(der) = &c.der else { continue };
        for url in urls_of(der) {
            if let Some(problem) = problem(&url) {
                out.push(BadUrl {
                    device: device.to_string(),
                    slot: c.slot.clone(),
                    certificate: c.serial.clone(),
                    revoked: c.revoked_at.is_some(),
                    url,
                    problem: problem.into(),
                });
            }
        }
    }
    Ok(Json(out))
}

/// The URIs of a certificate's CRL distribution points and AIA.
fn urls_of(der: &[u8]) -> Vec<String> {
    use der::oid::AssociatedOid;
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return vec![];
    };
    let mut out = Vec::new();
    let uri = |n: &GeneralName| match n {
        GeneralName::UniformResourceIdentifier(u) => Some(u.to_string()),
        _ => None,
    };
    for e in cert.tbs_certificate.extensions.iter().flatten() {
        if e.extn_id == CrlDistributionPoints::OID {
            if let Ok(cdp) = CrlDistributionPoints::from_der(e.extn_value.as_bytes()) {
                for dp in cdp.0 {
                    if let Some(DistributionPointName::FullName(names)) = dp.distribution_point {
                        out.extend(names.iter().filter_map(uri));
                    }
                }
            }
        } else if e.extn_id == AuthorityInfoAccessSyntax::OID {
            if let Ok(aia) = AuthorityInfoAccessSyntax::from_der(e.extn_value.as_bytes()) {
                out.extend(aia.0.iter().filter_map(|a| uri(&a.access_location)));
            }
        }
    }
    out
}

/// Why relying parties cannot use `url`, if they cannot.
fn problem(url: &str) -> Option<&'static str> {
    let Ok(u) = reqwest::Url::parse(url) else {
        return Some("not a URL");
    };
    if u.host_str().is_none() {
        return Some("no host");
    }
    if !matches!(u.scheme(), "http" | "https") {
        return Some("not http or https");
    }
    if u.port() == Some(0) {
        return Some("port 0");
    }
    let host = u.host_str()?;
    let ip = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok();
    match ip {
        Some(ip) if ip.is_unspecified() => Some("unspecified address"),
        Some(ip) if ip.is_loopback() => Some("loopback"),
        None if host.eq_ignore_ascii_case("localhost") => Some("loopback"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn unusable_addresses_are_named() {
        assert_eq!(
            problem("http://0.0.0.0:8080/pki/crl/issuing.crl"),
            Some("unspecified address")
        );
        assert_eq!(problem("http://[::]:8080/x"), Some("unspecified address"));
        assert_eq!(problem("http://127.0.0.1:8080/x"), Some("loopback"));
        assert_eq!(problem("http://localhost/x"), Some("loopback"));
        assert_eq!(problem("http://cms.example.com:0/x"), Some("port 0"));
        assert_eq!(
            problem("ldap://dc.example.com/x"),
            Some("not http or https")
        );
        assert_eq!(problem("https://cms.example.com/pki/crl/issuing.crl"), None);
    }
}
