//! The User page: the user's details, their devices with state, policy and
//! credentials (certificates with expiry, on hold or revoked; passkeys),
//! and the actions the signed-in role may take on each device in its
//! state (Add Device; Declare Incident, Suspend / Resume, Restore, Replace
//! Device, Terminate: `device_actions`), each confirmed in a dialog.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use keyward_domain::{Device, DeviceState, Permission, StateReason, User};
use keyward_store::DeviceFilter;
use serde::Deserialize;

use super::{error_page, internal, render, when, Nav, WebUser};
use crate::app::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/users/{login}", get(page))
}

pub struct DeviceRow {
    pub serial: String,
    pub device_type: String,
    pub firmware: String,
    pub state: String,
    pub state_label: String,
    pub reason: String,
    pub policy: String,
    /// When and by whom the device reached its state.
    pub since: String,
    pub by: String,
    pub credentials: Vec<CredentialRow>,
    pub highlighted: bool,
    /// The version the lifecycle actions send back (optimistic concurrency).
    pub version: i64,
    pub suspended: bool,
    /// Certificates on hold (suspended or forgotten).
    pub on_hold: usize,
    /// Passkey deletions not yet done at the Passkey-Enabled Service.
    pub pending_revocations: usize,
    pub passkey_reregistration: bool,
    /// "Temporary replacement of device N until …" / "Replaces device N (lost)".
    pub replacement: String,
    /// The devices out in this one's place.
    pub replaced_by: String,
    /// What the signed-in person may do with it now.
    pub actions: Vec<DeviceAction>,
    /// The PIN dialog in unlock mode, where the signed-in person may start
    /// an unlock now (the help desk at its agent; the person with an open
    /// unlock request).
    pub unlock: Option<UnlockButton>,
    /// What Keyward holds of the device's PUK, when it cannot unlock it
    /// ("unlock after next update", "recycle and re-issue"); else empty.
    pub puk_note: String,
    /// An open unlock request: until when (the User Portal's notice).
    pub unlock_request_until: String,
    /// Offline Unlock (help desk): "challenge" (a C4000's response), "puk"
    /// (a YubiKey's PUK), or empty (none).
    pub offline_unlock: &'static str,
    /// A pending update request, and how the signed-in person carries it
    /// out or cancels it.
    pub update: Option<PendingUpdate>,
    /// Request Update is offered (an issued device; `devices.update`).
    pub request_update: bool,
}

/// A device's pending update request, as its card shows it.
pub struct PendingUpdate {
    /// The applied changes, each described.
    pub changes: Vec<String>,
    /// "Requested by operator:alice", "Certificate renewal", …
    pub origin: String,
    /// The policy the device is brought to.
    pub policy: String,
    /// The route that starts the update session (POST).
    pub start: String,
    /// The body's `via` (`agent`), or empty.
    pub via: &'static str,
    /// Cancel Update Request is offered (operators).
    pub cancel: bool,
}

/// How the PIN dialog starts an unlock and checks the new PIN's rules.
pub struct UnlockButton {
    /// The route that starts the session (POST).
    pub start: String,
    /// The body's `via` (`agent`: the operator's workstation agent), or empty.
    pub via: &'static str,
    /// The device's policy, whose PIN rules the new PIN is checked against
    /// (`/api/v1/policies/{policy}/pin-check`); empty in the User Portal
    /// (its own `/api/v1/me/devices/{serial}/pin-check`).
    pub policy: String,
}

pub struct CredentialRow {
    pub kind: String,
    pub slot: String,
    pub serial: String,
    pub expires: String,
    pub revoked: bool,
    pub on_hold: bool,
    /// "attested", "not attested", or "" (recorded before Keyward checked).
    pub attestation: &'static str,
}

/// One action of a device's menu, confirmed in the page's action dialog.
pub struct DeviceAction {
    /// The route's last segment (`incident`, `suspend`, …) or `replace`.
    pub action: &'static str,
    pub label: &'static str,
    /// The reasons to choose from (value, label); none: no choice.
    pub reasons: Vec<(&'static str, &'static str)>,
    /// What the confirmation says will happen.
    pub warning: String,
    /// Destructive (shown as such).
    pub danger: bool,
}

/// What the signed-in person may do to a device: only what its state allows
/// and their role grants (the API checks both again).
#[derive(Clone, Copy)]
pub struct Grants {
    pub lifecycle: bool,
    pub suspend: bool,
    pub replace: bool,
    /// A person on their own device: report it lost or stolen.
    pub own_loss: bool,
    /// Unlock (help desk): Create Unlock Request and the assisted unlock.
    pub unlock: bool,
    /// The User Portal: the person's own unlock, with an open request.
    pub own_unlock: bool,
    /// Request Update, Cancel Update Request, an update at the operator's
    /// agent (`devices.update`).
    pub update: bool,
    /// The User Portal: the person carries out their device's pending update.
    pub own_update: bool,
}

const INCIDENTS: [(&str, &str); 5] = [
    ("lost", "Lost"),
    ("stolen", "Stolen"),
    ("damaged", "Damaged"),
    ("forgotten", "Forgotten (temporary: certificates on hold)"),
    ("expired", "Expired"),
];
const REPLACEMENTS: [(&str, &str); 5] = [
    ("lost", "Lost (permanent)"),
    ("stolen", "Stolen (permanent)"),
    ("damaged", "Damaged (permanent)"),
    ("expired", "Expired (permanent)"),
    ("forgotten", "Forgotten (temporary device)"),
];

pub fn device_actions(d: &Device, g: Grants) -> Vec<DeviceAction> {
    let mut out = Vec::new();
    let s = d.serial;
    let forgotten_ok = !d.suspended;
    let pick = |list: &[(&'static str, &'static str)], keep: &dyn Fn(&str) -> bool| {
        list.iter()
            .copied()
            .filter(|(v, _)| keep(v))
            .collect::<Vec<_>>()
    };
    match (d.state, d.reason) {
        (DeviceState::Issued, _) => {
            if g.unlock {
                out.push(DeviceAction {
                    action: "unlock-requests",
                    label: "Create Unlock Request",
                    reasons: Vec::new(),
                    warning: format!("The person then unlocks device {s} in the User Portal, with the device at their workstation, choosing a new PIN: the request is valid for the minutes the settings give (unlock_request_minutes) and used once."),
                    danger: false,
                });
            }
            if g.lifecycle {
                out.push(DeviceAction {
                    action: "incident",
                    label: "Declare Incident",
                    reasons: pick(&INCIDENTS, &|v| v != "forgotten" || forgotten_ok),
                    warning: format!("Device {s} can no longer be used. Lost, stolen, damaged and expired revoke its certificates and delete its passkeys for good; forgotten puts its certificates on hold until the device is found."),
                    danger: true,
                });
            } else if g.own_loss {
                out.push(DeviceAction {
                    action: "incident",
                    label: "Report Lost or Stolen",
                    reasons: vec![("lost", "Lost"), ("stolen", "Stolen")],
                    warning: format!("This cannot be undone. Device {s}'s certificates are revoked and its passkeys deleted at once: nobody can use it any more, you included, even if you find it again. Ask your help desk for a new device."),
                    danger: true,
                });
            }
            if g.suspend && !d.suspended {
                out.push(DeviceAction {
                    action: "suspend",
                    label: "Suspend",
                    reasons: Vec::new(),
                    warning: format!("Device {s}'s certificates go on hold and its passkeys are deleted (Entra ID cannot disable a passkey). Resume releases the hold; the passkey is registered again by an update."),
                    danger: false,
                });
            }
            if g.suspend && d.suspended {
                out.push(DeviceAction {
                    action: "resume",
                    label: "Resume",
                    reasons: Vec::new(),
                    warning: format!("Device {s}'s certificates are valid again. Its passkey stays to be registered again by an update."),
                    danger: false,
                });
            }
        }
        (DeviceState::Invalid, Some(StateReason::Forgotten)) if g.lifecycle => {
            out.push(DeviceAction {
                action: "restore",
                label: "Original Found",
                reasons: Vec::new(),
                warning: format!("Device {s} is in use again: its certificates' hold is released. A temporary device out in its place is terminated (its certificates revoked)."),
                danger: false,
            });
        }
        _ => {}
    }
    if g.replace {
        let reasons = match (d.state, d.reason) {
            (DeviceState::Issued, _) => pick(&REPLACEMENTS, &|v| v != "forgotten" || forgotten_ok),
            (DeviceState::Invalid, Some(StateReason::Forgotten)) => REPLACEMENTS.to_vec(),
            (DeviceState::Invalid, Some(r)) => pick(&REPLACEMENTS, &|v| v == r.as_str()),
            _ => Vec::new(),
        };
        if !reasons.is_empty() {
            out.push(DeviceAction {
                action: "replace",
                label: "Replace Device",
                reasons,
                warning: format!("Choose why device {s} is replaced, then the new device at your agent. Permanent: the incident is declared on {s} now and it is terminated when the new device is issued. Forgotten: {s} is put on hold and the new device is temporary."),
                danger: false,
            });
        }
    }
    if g.lifecycle
        && matches!(
            d.state,
            DeviceState::Issued | DeviceState::Invalid | DeviceState::Produced
        )
    {
        out.push(DeviceAction {
            action: "terminate",
            label: "Terminate",
            reasons: Vec::new(),
            warning: format!("Device {s} ends for good: every certificate not yet revoked is revoked (cessationOfOperation), its passkeys deleted. It can then only be recycled."),
            danger: true,
        });
    }
    out
}

#[derive(Template)]
#[template(path = "user.html")]
struct UserPage {
    nav: Nav,
    user: User,
    attributes: Vec<(String, String)>,
    devices: Vec<DeviceRow>,
    can_issue: bool,
    notice: Option<String>,
}

#[derive(Deserialize, Default)]
struct PageQuery {
    /// Set by the Add Device dialog on success: the device just issued.
    issued: Option<String>,
    /// Set by the Add Device dialog: the device just assigned.
    assigned: Option<String>,
    /// Set by the failure dialog's Cancel.
    cancelled: Option<String>,
    /// Set by a device action: the device and what was done.
    acted: Option<String>,
    done: Option<String>,
}

/// The devices of a user as the User page and the User Portal show them.
pub async fn device_rows(
    state: &AppState,
    user_id: uuid::Uuid,
    highlight: Option<&str>,
    grants: Grants,
) -> Result<Vec<DeviceRow>, Response> {
    let page = state
        .store
        .list_devices(&DeviceFilter {
            assigned_user: Some(user_id),
            limit: 500,
            ..Default::default()
        })
        .await
        .map_err(|e| internal("listing the user's devices", e))?;
    let policies: HashMap<uuid::Uuid, (String, keyward_domain::ManagementKeyMode)> = state
        .store
        .list_policies()
        .await
        .map_err(|e| internal("listing policies", e))?
        .into_iter()
        .map(|p| (p.id, (p.name, p.management_key)))
        .collect();
    let mut rows = Vec::with_capacity(page.items.len());
    for d in page.items.iter().cloned() {
        let history = state
            .store
            .device_history(d.id)
            .await
            .map_err(|e| internal("reading device history", e))?;
        let last = history.iter().rev().find(|h| h.to_state == d.state);
        // An issued device was issued by whoever started its issuance (the
        // agent only relayed the commands).
        let started = history
            .iter()
            .rev()
            .find(|h| h.to_state == DeviceState::InProduction);
        let by = actor_label(&match (d.state, started) {
            (DeviceState::Issued, Some(s)) => s.actor.clone(),
            _ => last.map(|h| h.actor.clone()).unwrap_or_default(),
        });
        let credentials: Vec<CredentialRow> = if matches!(
            d.state,
            DeviceState::Issued | DeviceState::InProduction | DeviceState::Invalid
        ) {
            state
                .store
                .device_credentials(d.id)
                .await
                .map_err(|e| internal("reading credentials", e))?
                .into_iter()
                .map(|c| CredentialRow {
                    on_hold: c.on_hold(),
                    // A certificate by its purpose (the slot's PIV name).
                    kind: match (c.kind.as_str(), c.slot.as_deref()) {
                        ("certificate", Some(slot)) => {
                            match slot.parse::<keyward_domain::PivSlot>() {
                                Ok(s) => format!("certificate: {}", s.label()),
                                // An old Key Management key kept in a retired
                                // slot (82 to 95) after a new 9D key.
                                Err(_)
                                    if u8::from_str_radix(slot, 16)
                                        .is_ok_and(|s| (0x82..=0x95).contains(&s)) =>
                                {
                                    format!(
                                        "certificate: retired Key Management ({})",
                                        slot.to_uppercase()
                                    )
                                }
                                Err(_) => c.kind,
                            }
                        }
                        _ => c.kind,
                    },
                    slot: c.slot.unwrap_or_default(),
                    serial: c.serial,
                    expires: c.not_after.map(when).unwrap_or_default(),
                    revoked: c.revoked_at.is_some(),
                    attestation: match c.attested {
                        Some(true) => "attested",
                        Some(false) => "not attested",
                        None => "",
                    },
                })
                .collect()
        } else {
            Vec::new()
        };
        let serial = d.serial.to_string();
        let pending_revocations = state
            .store
            .list_jobs(
                Some(keyward_store::JobState::Pending),
                Some(&format!("device:{serial}")),
            )
            .await
            .map_err(|e| internal("reading the pending jobs", e))?
            .iter()
            .filter(|j| j.kind == keyward_store::lifecycle::JOB_DELETE_PASSKEY)
            .count();
        let serial_of = |id: uuid::Uuid| {
            page.items
                .iter()
                .find(|o| o.id == id)
                .map(|o| o.serial.to_string())
                .unwrap_or_else(|| "another device".into())
        };
        let replacement = match d.replacement {
            Some(r) if r.is_temporary() => format!(
                "Temporary device in place of {} (forgotten), until {}",
                serial_of(r.original),
                r.until.map(when).unwrap_or_default()
            ),
            Some(r) => format!("Replaces device {} ({})", serial_of(r.original), r.reason),
            None => String::new(),
        };
        let replaced_by = page
            .items
            .iter()
            .filter(|o| o.replacement.is_some_and(|r| r.original == d.id))
            .map(|o| format!("{} ({})", o.serial, o.state.label()))
            .collect::<Vec<_>>()
            .join(", ");
        let issued = d.state == DeviceState::Issued;
        let custody = if issued && (grants.unlock || grants.own_unlock) {
            crate::issuance::puk_custody(state, d.id)
                .await
                .map_err(|e| internal("reading the device's sessions", e.detail.message))?
        } else {
            None
        };
        use keyward_engine::session::PukCustody;
        let puk_note = match custody {
            Some(PukCustody::Unknown | PukCustody::Uncertain) => {
                "Keyward is not sure of this device's PUK: unlock after its next update (or recycle it)."
            }
            Some(PukCustody::Blocked) => "The device blocked its PUK: it cannot be unlocked; recycle and re-issue it.",
            _ => "",
        }
        .to_string();
        let request = if issued && grants.own_unlock {
            state
                .store
                .open_unlock_request(d.id, time::OffsetDateTime::now_utc())
                .await
                .map_err(|e| internal("reading the unlock requests", e))?
        } else {
            None
        };
        let (policy_name, management_key) = d
            .device_policy
            .and_then(|id| policies.get(&id).cloned())
            .map(|(n, k)| (n, Some(k)))
            .unwrap_or_default();
        let unlockable = custody == Some(PukCustody::Known);
        // The factory management key is public: no challenge-response then.
        let offline_unlock = match d.device_type {
            _ if !(grants.unlock && unlockable) => "",
            keyward_domain::DeviceType::YubiKey5 => "puk",
            keyward_domain::DeviceType::C4000
                if management_key != Some(keyward_domain::ManagementKeyMode::Keep) =>
            {
                "challenge"
            }
            _ => "",
        };
        let unlock = match (grants.unlock, &request) {
            (true, _) if unlockable => Some(UnlockButton {
                start: format!("/api/v1/devices/{serial}/unlock"),
                via: "agent",
                policy: policy_name.clone(),
            }),
            (false, Some(_)) if unlockable => Some(UnlockButton {
                start: format!("/api/v1/me/devices/{serial}/unlock"),
                via: "",
                policy: String::new(),
            }),
            _ => None,
        };
        let pending_update = if issued && (grants.update || grants.own_update) {
            state
                .store
                .pending_update_request(d.id)
                .await
                .map_err(|e| internal("reading the update request", e))?
        } else {
            None
        };
        let update = pending_update.map(|r| {
            let changes: Vec<keyward_domain::update::AppliedChange> =
                serde_json::from_str(&r.changes).unwrap_or_default();
            let mut changes: Vec<String> = changes.iter().map(|c| c.describe()).collect();
            let to = policies
                .get(&r.policy_id)
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            if changes.is_empty() {
                changes.push(format!("Move the device to the policy {to}"));
            }
            PendingUpdate {
                changes,
                origin: match r.origin.as_str() {
                    "renewal" => "certificate renewal".to_string(),
                    "offline_unlock" => "PIN check after an offline unlock".to_string(),
                    _ => format!(
                        "requested by {}",
                        crate::web::user::actor_label(&r.created_by)
                    ),
                },
                policy: to,
                start: if grants.update {
                    format!("/api/v1/devices/{serial}/update")
                } else {
                    format!("/api/v1/me/devices/{serial}/update")
                },
                via: if grants.update { "agent" } else { "" },
                cancel: grants.update,
            }
        });
        rows.push(DeviceRow {
            update,
            request_update: issued && grants.update,
            offline_unlock,
            unlock,
            puk_note,
            unlock_request_until: request.map(|r| when(r.expires_at)).unwrap_or_default(),
            suspended: d.suspended,
            on_hold: credentials.iter().filter(|c| c.on_hold).count(),
            pending_revocations,
            passkey_reregistration: d.passkey_reregistration,
            replacement,
            replaced_by,
            actions: device_actions(&d, grants),
            version: d.version,
            highlighted: highlight == Some(serial.as_str()),
            serial,
            device_type: d.device_type.label().to_string(),
            firmware: d
                .firmware_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            state: d.state.as_str().to_string(),
            state_label: d.state.label().to_string(),
            reason: d.reason.map(|r| r.as_str().to_string()).unwrap_or_default(),
            policy: policy_name,
            since: last.map(|h| when(h.at)).unwrap_or_default(),
            by,
            credentials,
        });
    }
    Ok(rows)
}

async fn page(
    State(state): State<AppState>,
    user: WebUser,
    Path(login): Path<String>,
    Query(query): Query<PageQuery>,
) -> Response {
    if let Err(r) = user.require(Permission::UsersRead) {
        return r;
    }
    let subject = match crate::api::found(state.store.get_user_by_login(&login).await) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return error_page(
                &user,
                StatusCode::NOT_FOUND,
                "No such user",
                "There is no user with this login.",
            )
        }
        Err(e) => return internal("reading the user", e),
    };
    let highlight = query.issued.as_deref().or(query.assigned.as_deref());
    let grants = Grants {
        lifecycle: user.can(Permission::DevicesLifecycle),
        suspend: user.can(Permission::DevicesSuspend),
        replace: user.can(Permission::DevicesReplace),
        own_loss: false,
        unlock: user.can(Permission::DevicesUnlock),
        own_unlock: false,
        update: user.can(Permission::DevicesUpdate),
        own_update: false,
    };
    let highlight = highlight.or(query.acted.as_deref());
    let devices = match device_rows(&state, subject.id, highlight, grants).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let notice = if let Some(s) = &query.issued {
        Some(format!(
            "Device {s} was issued to {}.",
            subject.display_name
        ))
    } else if let Some(s) = &query.assigned {
        Some(format!(
            "Device {s} is assigned to {}: issuance completes later.",
            subject.display_name
        ))
    } else if let (Some(s), Some(done)) = (&query.acted, &query.done) {
        Some(acted_notice(s, done))
    } else {
        query.cancelled.as_ref().map(|s| {
            format!("The issuance of device {s} was cancelled: the device is no longer assigned to the user.")
        })
    };
    render(&UserPage {
        nav: user.nav("/users"),
        attributes: subject
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        user: subject,
        devices,
        can_issue: user.can(Permission::DevicesIssue),
        notice,
    })
}

/// How a page names who did something (the audit trail's actor): a
/// person's login, an API token by its name, an agent, Keyward itself.
pub fn actor_label(actor: &str) -> String {
    match actor.split_once(':') {
        Some(("account", login)) => login.to_string(),
        Some(("token", name)) => format!("API token {name}"),
        Some(("agent", id)) => format!("workstation agent {id}"),
        _ if actor == "system" => "Keyward".to_string(),
        _ => actor.to_string(),
    }
}

/// The notice after a device action (the page's own words, never the query's).
pub fn acted_notice(serial: &str, done: &str) -> String {
    let serial: String = serial
        .chars()
        .filter(char::is_ascii_digit)
        .take(20)
        .collect();
    let what = match done {
        "lost" | "stolen" => {
            "declared lost or stolen: its certificates are revoked and its passkeys deleted"
        }
        "damaged" | "expired" => {
            "declared invalid: its certificates are revoked and its passkeys deleted"
        }
        "forgotten" => "declared forgotten: its certificates are on hold",
        "suspend" => "suspended: its certificates are on hold and its passkeys deleted",
        "resume" => "resumed: its certificates are valid again",
        "restore" => "found again: its certificates are valid again",
        "terminate" => "terminated",
        "unlock-requests" => "given an unlock request: the person completes it in the User Portal",
        "update_requested" => {
            "given an update request: carried out when the device is next connected"
        }
        "update_cancelled" => "relieved of its update request",
        "update" => "updated, or its update is still pending (see the device)",
        _ => "changed",
    };
    format!("Device {serial} was {what}.")
}
