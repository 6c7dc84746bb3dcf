//! The demo's passkeys: a Passkey-Enabled Service named "simulated tenant"
//! (the in-process Entra ID stand-in `keyward demo` starts) and the policies
//! "PIV + Passkey (shared PIN)" (C4000) and "PIV + Passkey (unshared PIN)"
//! (C4000 and YubiKey 5): "PIV Standard" plus a FIDO application with
//! credProtect 1. The stand-in's URLs and secret change at each start, so
//! the service is updated every time; the policies are created once.

use keyward_domain::{
    AuditDraft, AuditOutcome, DeviceType, FidoApplication, PasskeyService, SealedSecret,
};
use uuid::Uuid;

use crate::app::AppState;

/// How the simulated tenant is shown wherever a Passkey-Enabled Service is.
pub const SERVICE_NAME: &str = "simulated tenant";
pub const SHARED_POLICY: &str = "PIV + Passkey (shared PIN)";
pub const UNSHARED_POLICY: &str = "PIV + Passkey (unshared PIN)";

/// Where the simulated tenant runs and how to reach it.
pub struct SimulatedTenant<'a> {
    pub authority_url: &'a str,
    pub graph_url: &'a str,
    pub tenant_id: &'a str,
    pub client_id: &'a str,
    pub client_secret: &'a str,
    pub token_scope: &'a str,
}

fn system(action: &str, target: &str) -> AuditDraft {
    AuditDraft {
        actor: "system:demo".into(),
        action: action.into(),
        target: target.into(),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    }
}

pub async fn seed(state: &AppState, t: &SimulatedTenant<'_>) -> anyhow::Result<()> {
    let existing = crate::api::found(state.store.get_passkey_service_by_name(SERVICE_NAME).await)?;
    let id = existing.as_ref().map(|s| s.id).unwrap_or_else(Uuid::new_v4);
    let service = PasskeyService {
        id,
        name: SERVICE_NAME.into(),
        tenant_id: t.tenant_id.into(),
        client_id: t.client_id.into(),
        client_certificate_pem: None,
        client_secret: SealedSecret(state.sealer.seal(
            &crate::api::passkey_services::secret_context(id),
            t.client_secret.as_bytes(),
        )),
        authority_url: t.authority_url.into(),
        graph_url: t.graph_url.into(),
        token_scope: t.token_scope.into(),
        api_version: keyward_domain::passkey::DEFAULT_API_VERSION.into(),
        challenge_timeout_minutes: keyward_domain::passkey::DEFAULT_CHALLENGE_TIMEOUT_MINUTES,
        user_id_attribute: None,
    };
    service.validate()?;
    let target = format!("passkey_service:{SERVICE_NAME}");
    if existing.is_some() {
        state
            .store
            .update_passkey_service(&service, &system("passkey_service.update", &target))
            .await?;
    } else {
        state
            .store
            .create_passkey_service(&service, &system("passkey_service.create", &target))
            .await?;
    }
    for (name, types, shared) in [
        (SHARED_POLICY, vec![DeviceType::C4000], true),
        (
            UNSHARED_POLICY,
            vec![DeviceType::C4000, DeviceType::YubiKey5],
            false,
        ),
    ] {
        if crate::api::found(state.store.get_policy_by_name(name).await)?.is_some() {
            continue;
        }
        let mut policy = crate::demo::piv_standard();
        policy.id = Uuid::new_v4();
        policy.name = name.into();
        policy.description = format!(
            "PIV Standard and a passkey registered with the {SERVICE_NAME} ({} PIN)",
            if shared { "shared" } else { "own FIDO" }
        );
        policy.device_types = types;
        policy.fido_application = Some(FidoApplication {
            passkey_service_id: id,
            passkey_service_name: SERVICE_NAME.into(),
            share_device_pin: shared,
            cred_protect: 1,
            display_name_template: "{device_type} {serial}".into(),
        });
        policy.validate()?;
        state
            .store
            .create_policy(&policy, &system("policy.create", &format!("policy:{name}")))
            .await?;
    }
    Ok(())
}
