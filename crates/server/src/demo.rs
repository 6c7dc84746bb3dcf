//! Sample data for `keyward demo`: users, demo accounts, device policies and
//! settings. Idempotent: what exists already is left as it is.

use keyward_domain::{
    Account, AuditDraft, AuditOutcome, CertificateTemplate, CharacterSet, DevicePolicy, DeviceType,
    DisplayMode, ExtendedKeyUsage, KeyAlgorithm, KeyUsage, ManagementKeyMode, NewUser,
    PinApplication, PivSlot, PkiApplication, Role, SanSource, SettingKey, SettingValue,
};
use uuid::Uuid;

use crate::app::AppState;
use crate::secrets::hash_password;

/// Demo-only passwords, printed by `keyward demo`. Never use them elsewhere.
pub const DEMO_OPERATOR: (&str, &str) = ("operator", "demo-operator-only");
pub const DEMO_ADMIN: (&str, &str) = ("demo-admin", "demo-admin-only");
pub const DEMO_USER: (&str, &str) = ("alice", "demo-alice-only");

fn system(action: &str, target: &str) -> AuditDraft {
    AuditDraft {
        actor: "system:demo".into(),
        action: action.into(),
        target: target.into(),
        outcome: AuditOutcome::Success,
        details: serde_json::json!({}),
    }
}

pub fn demo_users() -> Vec<NewUser> {
    [
        (
            "alice",
            "Alice Archer",
            "S-1-5-21-1004336348-1177238915-682003330-1001",
        ),
        (
            "bob",
            "Bob Baker",
            "S-1-5-21-1004336348-1177238915-682003330-1002",
        ),
        (
            "carol",
            "Carol Chen",
            "S-1-5-21-1004336348-1177238915-682003330-1003",
        ),
    ]
    .into_iter()
    .map(|(login, name, sid)| NewUser {
        login: login.into(),
        upn: Some(format!("{login}@example.com")),
        display_name: name.into(),
        email: Some(format!("{login}@example.com")),
        attributes: [("objectSid".to_string(), sid.to_string())]
            .into_iter()
            .collect(),
        status: keyward_domain::UserStatus::Active,
    })
    .collect()
}

/// "PIV Standard": keys in 9A and 9C on P-256; PIN 6 to 8 digits, no runs of
/// 3 or more equal or consecutive digits; PIN and PUK retries 3.
pub fn piv_standard() -> DevicePolicy {
    let template =
        |subject: &str, eku: Vec<ExtendedKeyUsage>, ku: Vec<KeyUsage>| CertificateTemplate {
            subject_dn: subject.into(),
            subject_alt_names: vec![SanSource::Upn, SanSource::Mail],
            validity_days: 365,
            key_usage: ku,
            extended_key_usage: eku,
        };
    DevicePolicy {
        id: Uuid::new_v4(),
        name: "PIV Standard".into(),
        description: "PIV Authentication and Digital Signature keys on P-256".into(),
        device_types: vec![DeviceType::C4000, DeviceType::YubiKey5, DeviceType::Piv],
        pin_application: PinApplication {
            min_length: 6,
            max_length: 8,
            character_set: CharacterSet::Numeric,
            max_repeated: Some(2),
            max_sequential: Some(2),
            history_count: 0,
            pin_retry_count: Some(3),
            puk_retry_count: Some(3),
        },
        management_key: ManagementKeyMode::Keep,
        pki_applications: vec![
            PkiApplication {
                name: "PIV Authentication".into(),
                slot: PivSlot::Authentication,
                algorithm: KeyAlgorithm::EccP256,
                certificate_authority: "Keyward Issuing CA".into(),
                template: template(
                    "CN={display_name},UID={login}",
                    vec![
                        ExtendedKeyUsage::ClientAuth,
                        ExtendedKeyUsage::SmartcardLogon,
                    ],
                    vec![KeyUsage::DigitalSignature],
                ),
                renewal_window_days: None,
                renewal: None,
            },
            PkiApplication {
                name: "Digital Signature".into(),
                slot: PivSlot::Signature,
                algorithm: KeyAlgorithm::EccP256,
                certificate_authority: "Keyward Issuing CA".into(),
                template: template(
                    "CN={display_name},UID={login}",
                    vec![
                        ExtendedKeyUsage::EmailProtection,
                        ExtendedKeyUsage::DocumentSigning,
                    ],
                    vec![KeyUsage::DigitalSignature, KeyUsage::NonRepudiation],
                ),
                renewal_window_days: None,
                renewal: None,
            },
        ],
        fido_application: None,
        // Unset: required for the YubiKey (attested by a root the demo trusts).
        require_device_attestation: None,
        temporary_validity_days: 7,
        approval_required_for: vec![],
    }
}

async fn account(
    state: &AppState,
    (login, password): (&str, &str),
    role: Role,
    user_id: Option<Uuid>,
) -> anyhow::Result<()> {
    if crate::api::found(state.store.get_account_by_login(login).await)?.is_some() {
        return Ok(());
    }
    let pw = password.to_string();
    let phc = tokio::task::spawn_blocking(move || hash_password(&pw)).await?;
    let a = Account {
        id: Uuid::new_v4(),
        login: login.into(),
        role,
        password_hash: Some(phc),
        must_change_password: false,
        user_id,
        disabled: false,
    };
    state
        .store
        .create_account(&a, &system("operator.create", &format!("account:{login}")))
        .await?;
    Ok(())
}

pub async fn seed(state: &AppState) -> anyhow::Result<()> {
    for new in demo_users() {
        if crate::api::found(state.store.get_user_by_login(&new.login).await)?.is_none() {
            let user = new.into_user()?;
            state
                .store
                .create_user(
                    &user,
                    &system("user.create", &format!("user:{}", user.login)),
                )
                .await?;
        }
    }
    let alice = state.store.get_user_by_login(DEMO_USER.0).await?;
    account(state, DEMO_OPERATOR, Role::IssuanceOperator, None).await?;
    account(state, DEMO_ADMIN, Role::Administrator, None).await?;
    account(state, DEMO_USER, Role::User, Some(alice.id)).await?;
    let policy = piv_standard();
    // The first run seeds policies and settings; later runs keep what the
    // person changed in the demo since.
    if crate::api::found(state.store.get_policy_by_name(&policy.name).await)?.is_some() {
        return Ok(());
    }
    policy.validate()?;
    state
        .store
        .create_policy(
            &policy,
            &system("policy.create", &format!("policy:{}", policy.name)),
        )
        .await?;
    for (key, value) in [
        (
            SettingKey::InitialPinDisplayMode,
            SettingValue::DisplayMode(DisplayMode::Displayed),
        ),
        (
            SettingKey::ChangePinDuringIssuance,
            SettingValue::Bool(false),
        ),
        (
            SettingKey::AutoImportUnknownDevices,
            SettingValue::Bool(true),
        ),
    ] {
        state
            .store
            .set_setting(
                key,
                value,
                &system("settings.set", &format!("setting:{key}")),
            )
            .await?;
    }
    Ok(())
}

/// The demo's virtual devices (in-process, served by the demo's agents):
/// (profile, serial, firmware). Fixed, documented serials.
pub const DEMO_DEVICES: [(&str, u32, &str); 2] = [
    ("yubikey5", 10_000_001, "5.7.1"),
    ("c4000", 20_000_001, "1.0.0"),
];

/// Puts the demo's virtual devices in the inventory (Available) unless
/// they are there already.
pub async fn seed_demo_devices(state: &AppState) -> anyhow::Result<()> {
    for (kind, serial, firmware) in DEMO_DEVICES {
        let serial_text = serial.to_string();
        let parsed = keyward_domain::Serial::parse("serial", &serial_text)?;
        if crate::api::found(state.store.get_device_by_serial(parsed).await)?.is_some() {
            continue;
        }
        let new: keyward_domain::NewDevice = serde_json::from_value(serde_json::json!({
            "device_type": kind, "serial": serial_text, "firmware_version": firmware,
        }))?;
        state
            .store
            .insert_device(&new, &system("device.import", &format!("device:{serial}")))
            .await?;
    }
    Ok(())
}

/// The credential of the demo's agent for `owner` (an account login),
/// already paired: kept in `credential_file` (mode 0600) and reused while the
/// server knows it, else a new agent is recorded as approved by the demo.
pub async fn demo_agent_credential(
    state: &AppState,
    owner: &str,
    name: &str,
    credential_file: &std::path::Path,
) -> anyhow::Result<String> {
    if let Ok(existing) = std::fs::read_to_string(credential_file) {
        let existing = existing.trim().to_string();
        if let Some(a) = state
            .store
            .find_agent_by_credential(&state.tokens.hash(&existing))
            .await?
        {
            if a.status == "paired" {
                return Ok(existing);
            }
        }
    }
    let account = state.store.get_account_by_login(owner).await?;
    let credential = format!(
        "{}{}",
        crate::agents::AGENT_CREDENTIAL_PREFIX,
        &crate::secrets::generate_token()[3..]
    );
    let now = keyward_store::now();
    let agent = keyward_store::Agent {
        id: Uuid::new_v4(),
        name: name.to_string(),
        status: "paired".into(),
        owner_kind: Some("account".into()),
        owner_id: Some(account.id),
        owner_login: Some(account.login.clone()),
        code_hmac: None,
        poll_hmac: None,
        credential_hmac: Some(state.tokens.hash(&credential)),
        code_expires_at: now,
        created_at: now,
        approved_at: Some(now),
        approved_by: Some("system:demo".into()),
        revoked_at: None,
        last_seen_at: None,
    };
    state
        .store
        .create_agent(
            &agent,
            &system("agent.approve", &format!("agent:{}", agent.id)),
        )
        .await?;
    write_private(credential_file, &credential)?;
    Ok(credential)
}

fn write_private(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
