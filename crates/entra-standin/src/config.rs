//! What the simulated tenant is configured with.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A user of the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandinUser {
    /// Object ID.
    pub id: Uuid,
    pub user_principal_name: String,
    pub display_name: String,
}

impl StandinUser {
    pub fn new(upn: &str, display_name: &str) -> Self {
        StandinUser {
            id: Uuid::new_v4(),
            user_principal_name: upn.into(),
            display_name: display_name.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StandinConfig {
    pub bind: SocketAddr,
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    /// A certificate credential (PEM) of the client: when set, the token
    /// endpoint also takes client assertions signed with its key.
    pub client_certificate_pem: Option<String>,
    /// The only scope tokens are issued for.
    pub token_scope: String,
    pub token_lifetime: Duration,
    /// The relying party ID in creationOptions (Entra uses login.microsoft.com).
    pub rp_id: String,
    pub rp_name: String,
    /// PEM root certificates attestation must chain to (the trust store).
    pub trust_store_pem: Vec<String>,
    /// When set, only these AAGUIDs are accepted.
    pub aaguid_allow_list: Option<Vec<Uuid>>,
    /// The FIDO2 policy's "Allow self-service setup" (the provisioning API
    /// needs it).
    pub self_service_setup: bool,
    /// Unknown UPNs become users on first use (the demo's tenant).
    pub auto_create_users: bool,
    pub users: Vec<StandinUser>,
}

impl StandinConfig {
    /// A tenant on a free loopback port trusting `trust_store_pem`.
    pub fn new(
        tenant_id: &str,
        client_id: &str,
        client_secret: &str,
        trust_store_pem: Vec<String>,
    ) -> Self {
        StandinConfig {
            bind: "127.0.0.1:0".parse().expect("a socket address"),
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            client_certificate_pem: None,
            token_scope: "https://graph.microsoft.com/.default".into(),
            token_lifetime: Duration::from_secs(3600),
            rp_id: "login.microsoft.com".into(),
            rp_name: "Microsoft".into(),
            trust_store_pem,
            aaguid_allow_list: None,
            self_service_setup: true,
            auto_create_users: false,
            users: Vec::new(),
        }
    }
}
