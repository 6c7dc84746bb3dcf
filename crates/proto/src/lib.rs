//! Wire types of Keyward's REST API (`/api/v1`): the request and response
//! bodies shared by the server, the admin CLI and other clients. Domain types
//! (users, devices, device policies) travel as they are; this crate adds the
//! envelopes around them. Every request body rejects unknown fields.

pub mod agent;
pub mod issuance;
pub mod views;

pub use issuance::{
    Assigned, CredentialView, OfflineUnlockAnswer, OfflineUnlockRequest, RecycleRequest,
    RenewalRefused, RenewalScanRequest, RenewalScanResult, SessionError, SessionNotice,
    SessionView, StartIssuance, UnlockRequestView, UpdateChangeView, UpdateRequestCreate,
    UpdateRequestView,
};

/// `Debug` for a wire type that holds secrets: the named fields are shown,
/// the hidden ones print `<redacted>` (a PIN, a password, a token must
/// never reach a log through `{:?}`).
#[macro_export]
#[doc(hidden)]
macro_rules! redacted_debug {
    ($t:ident { $($shown:ident),* $(,)? } hides { $($secret:ident),* $(,)? }) => {
        impl ::std::fmt::Debug for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($t))
                    $(.field(stringify!($shown), &self.$shown))*
                    $(.field(stringify!($secret), &"<redacted>"))*
                    .finish()
            }
        }
    };
}

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every API error: `{"error": {"code", "message", "field"?, "details"?}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case error code.
    pub code: String,
    /// Human-readable explanation; never contains a secret.
    pub message: String,
    /// The offending field, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Per-row or per-rule details (CSV imports, PIN validation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

/// One page of a list, with the cursor for the next page.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

// ---------------------------------------------------------------- sign-in

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub login: String,
    pub password: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    pub login: String,
    /// `administrator`, `issuance_operator`, `help_desk` or `user`.
    pub role: String,
    /// Send back as `X-CSRF-Token` on every state-changing request made with
    /// the session cookie.
    pub csrf_token: String,
    /// The password is a one-time one: only a password change is allowed.
    pub must_change_password: bool,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeRequest {
    pub current_password: String,
    pub new_password: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub login: String,
    /// The one-time enrollment code an administrator created for the user.
    pub code: String,
    pub password: String,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentCode {
    /// Shown once; only its keyed hash is stored.
    pub code: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: time::OffsetDateTime,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub login: String,
    pub role: String,
    /// `session` or `token`.
    pub via: String,
    /// What this role may do (permission names).
    pub permissions: Vec<String>,
}

// ---------------------------------------------------------------- users

/// Fields to change on a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub upn: Option<String>,
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
    /// `active` or `disabled`.
    pub status: Option<String>,
}

/// Result of a bulk import (users or devices).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    /// Rows written.
    pub imported: usize,
    /// Rows refused, with the reason; in the default all-or-nothing mode a
    /// non-empty list means nothing was written.
    pub rejected: Vec<RowError>,
    /// `all_or_nothing` (default) or `partial` (`?partial=true`).
    pub mode: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RowError {
    /// 1-based data row (the CSV header is row 0).
    pub row: usize,
    pub code: String,
    pub field: String,
    pub message: String,
}

// ---------------------------------------------------------------- devices

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceStateRequest {
    /// Target state (canonical name).
    pub to: String,
    pub reason: Option<String>,
    /// The `version` you read: the change is refused with 409 if someone else
    /// changed the device since.
    pub expected_version: i64,
    pub note: Option<String>,
}

// ---------------------------------------------------------------- settings

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SettingsView {
    /// Security Settings: "Device initial PIN display mode".
    pub initial_pin_display_mode: String,
    /// User Portal configuration: "Change PIN during issuance".
    pub change_pin_during_issuance: bool,
    /// User Portal configuration: "Who can bind the device to the user?".
    pub who_can_bind: String,
    /// User Portal configuration: "Enable issuance retry for user".
    pub enable_issuance_retry_for_user: bool,
    /// Device parameters: "Enable Automatic Import of Unknown Cards".
    pub auto_import_unknown_devices: bool,
    /// Security Settings: minutes an unlock request stays valid.
    pub unlock_request_minutes: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingValue {
    /// The value as text (`not_displayed`, `yes`, `true`, …), or as `GET
    /// /settings` shows it (a boolean, a number).
    #[serde(deserialize_with = "scalar_as_text")]
    #[schema(value_type = String)]
    pub value: String,
}

/// A setting's value as text, from a JSON string, boolean or number: `PUT`
/// takes what `GET` returns.
fn scalar_as_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(D::Error::custom(format!(
            "expected a string, a boolean or a number, not {other}"
        ))),
    }
}

// ---------------------------------------------------------------- Passkey-Enabled Services

#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyServiceCreate {
    pub name: String,
    pub tenant_id: String,
    pub client_id: String,
    /// Stored only encrypted; never returned. Either this or a certificate
    /// credential (`client_certificate_pem` + `client_private_key_pem`).
    #[serde(default)]
    pub client_secret: String,
    /// A certificate credential (RSA; the token request carries a PS256-signed
    /// client assertion instead of a secret): the certificate, PEM.
    #[serde(default)]
    pub client_certificate_pem: Option<String>,
    /// The certificate's RSA private key (PKCS#8 or PKCS#1 PEM); stored only
    /// encrypted, never returned.
    #[serde(default)]
    pub client_private_key_pem: Option<String>,
    /// Default https://login.microsoftonline.com
    pub authority_url: Option<String>,
    /// Default https://graph.microsoft.com
    pub graph_url: Option<String>,
    /// Default https://graph.microsoft.com/.default (never derived from graph_url).
    pub scope: Option<String>,
    /// Graph API version: `v1.0` (default; challenge timeout 5 minutes) or
    /// `beta` (a longer challenge timeout).
    #[serde(default)]
    pub api_version: Option<String>,
    /// creationOptions challenge timeout in minutes (beta: 5 to 43200).
    #[serde(default)]
    pub challenge_timeout_minutes: Option<u32>,
    /// Match users by the Entra object ID kept in this user attribute
    /// (default: by UPN).
    #[serde(default)]
    pub user_id_attribute: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyServiceTest {
    /// A user (UPN or object id) whose fido2Methods are listed.
    pub user: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PasskeyServiceTestReport {
    /// `ok`, `token_failed`, `graph_failed`
    pub verdict: String,
    pub message: String,
    /// Passkeys the user has, when listing worked.
    pub fido2_methods: Option<usize>,
}

// ---------------------------------------------------------------- accounts, roles, tokens

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorCreate {
    pub login: String,
    pub role: String,
    /// For role `user`: the user record this self-service account belongs to.
    pub user_login: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperatorView {
    pub id: String,
    pub login: String,
    pub role: String,
    pub user_login: Option<String>,
    pub must_change_password: bool,
    pub disabled: bool,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct OperatorCreated {
    pub operator: OperatorView,
    /// One-time password, shown once; must be changed at first sign-in.
    pub one_time_password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RoleView {
    pub name: String,
    pub label: String,
    pub permissions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenCreate {
    pub name: String,
    pub role: String,
    /// Days it lasts (default and most: the server's `token_days`, 90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    pub revoked: bool,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<time::OffsetDateTime>,
    /// Kept within a minute of the token's last use.
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<time::OffsetDateTime>,
}

/// A new role for an account.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorRoleChange {
    pub role: String,
}

/// What an account change ended.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OperatorChanged {
    pub operator: OperatorView,
    /// Browser sessions of the account that ended with the change.
    pub sessions_ended: u64,
}

#[derive(Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    pub token_info: TokenView,
    /// The token itself: shown once, never stored in clear.
    pub token: String,
}

// ---------------------------------------------------------------- audit

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditVerifyReport {
    pub ok: bool,
    pub records: u64,
    /// What is wrong, naming the record (`record 17 was changed`, …).
    pub problems: Vec<String>,
}

// ---------------------------------------------------------------- device sessions (relay protocol v1)

/// Version of the relay protocol (docs/protocol.md).
pub const RELAY_PROTOCOL_VERSION: u32 = 1;

/// One device command of a batch. Binary values are lower-case hex.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayCommand {
    /// `piv` (a command APDU) or `ctap` (a CTAP message: command byte + CBOR).
    pub channel: String,
    /// The command, hex.
    pub bytes: String,
    /// Status words (hex, e.g. `9000`) that let the batch go on; the client
    /// stops at the first other one.
    pub expect: Vec<String>,
    /// The issuance step, for progress display.
    pub step: String,
    /// The command carries a secret: never log or store it.
    pub secret: bool,
}

/// A prompt to put to the person at the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayPrompt {
    /// `enter_pin`, `confirm_pin`, `enter_fido_pin`, `set_fido_pin`,
    /// `show_initial_pin`, `confirm_touch`, `reinsert_device`, `set_new_pin`.
    pub kind: String,
    /// Text to show.
    pub message: String,
    /// For `show_initial_pin`: the PIN to show (never logged by clients).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Server → client: the batch to run now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayBatch {
    pub protocol: u32,
    pub session_id: String,
    /// Sequence number of this batch; the client answers with the same.
    pub seq: u64,
    pub commands: Vec<RelayCommand>,
    pub prompts: Vec<RelayPrompt>,
    /// `running`, `issued`, `assigned`, `failed`, `cancelled` (a recycle
    /// ends `recycled`, a PIN change `pin_changed` or `pin_change_failed`).
    #[schema(value_type = String)]
    pub state: keyward_domain::SessionStatus,
    /// The step the session is at (for progress).
    pub step: String,
}

/// One device answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayResponse {
    /// Response data, hex.
    pub data: String,
    /// Status word, hex (`9000`).
    pub sw: String,
}

/// Client → server: the responses to batch `seq`, and the person's answers.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RelayResult {
    pub protocol: u32,
    pub session_id: String,
    pub seq: u64,
    pub responses: Vec<RelayResponse>,
    /// Answers to the batch's prompts, by prompt kind.
    #[serde(default)]
    pub answers: BTreeMap<String, String>,
    /// A transport error that stopped the batch: `device_removed`,
    /// `reader_gone`, `timeout`, `sharing_violation`, `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport_error: Option<String>,
}

crate::redacted_debug!(SignInRequest { login } hides { password });

crate::redacted_debug!(SessionInfo { login, role, must_change_password } hides { csrf_token });

crate::redacted_debug!(PasswordChangeRequest {  } hides { current_password, new_password });

crate::redacted_debug!(EnrollRequest { login } hides { code, password });

crate::redacted_debug!(EnrollmentCode { expires_at } hides { code });

crate::redacted_debug!(PasskeyServiceCreate { name, tenant_id, client_id, client_certificate_pem, authority_url, graph_url, scope, api_version, challenge_timeout_minutes, user_id_attribute } hides { client_secret, client_private_key_pem });

crate::redacted_debug!(OperatorCreated { operator } hides { one_time_password });

crate::redacted_debug!(TokenCreated { token_info } hides { token });

crate::redacted_debug!(RelayResult { protocol, session_id, seq, responses, transport_error } hides { answers });

/// Relayed responses as bytes and status words, or the index of the first
/// bad one and why.
pub type ParsedResponses = Result<Vec<(Vec<u8>, u16)>, (usize, &'static str)>;

impl RelayResult {
    /// The responses as bytes and status words; the index of the first
    /// that is not hex data with a four-hex-digit status word, and why.
    /// (`u16::from_str_radix` alone also takes a leading `+`: "+FFF" would
    /// be 0x0FFF.) What an agent or a device sends is untrusted: fuzzed.
    pub fn parsed_responses(&self) -> ParsedResponses {
        self.responses
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let data = hex::decode(&x.data).map_err(|_| (i, "data is not hex"))?;
                let sw = (x.sw.len() == 4 && x.sw.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| u16::from_str_radix(&x.sw, 16).ok())
                    .flatten()
                    .ok_or((i, "sw is not a 4-digit hex status word"))?;
                Ok((data, sw))
            })
            .collect()
    }
}

/// A command that carries a secret (a PIN, a PUK, a management key) shows
/// its length only.
impl std::fmt::Debug for RelayCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RelayCommand");
        d.field("channel", &self.channel);
        if self.secret {
            d.field(
                "bytes",
                &format_args!("<secret, {} hex digits>", self.bytes.len()),
            );
        } else {
            d.field("bytes", &self.bytes);
        }
        d.field("expect", &self.expect)
            .field("step", &self.step)
            .field("secret", &self.secret)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    /// Issue 15, item 12 (found by reading): a status word "+FFF" was read
    /// as 0x0FFF. Only four hex digits are one.
    #[test]
    fn a_status_word_is_four_hex_digits_and_data_is_hex() {
        let with = |sw: &str, data: &str| RelayResult {
            protocol: 1,
            session_id: "x".into(),
            seq: 1,
            responses: vec![RelayResponse {
                sw: sw.into(),
                data: data.into(),
            }],
            answers: Default::default(),
            transport_error: None,
        };
        assert_eq!(
            with("9000", "7f49").parsed_responses(),
            Ok(vec![(vec![0x7f, 0x49], 0x9000)])
        );
        for bad in ["+FFF", " 900", "9000x", "900", "-001", "0x90"] {
            assert!(with(bad, "").parsed_responses().is_err(), "{bad}");
        }
        assert_eq!(
            with("9000", "zz").parsed_responses(),
            Err((0, "data is not hex"))
        );
    }

    /// Issue 15, item 7: formatting a wire type with `{:?}` shows no secret.
    #[test]
    fn debug_shows_no_secret() {
        const S: &str = "s3cr3t-VALUE";
        let shown = [
            format!(
                "{:?}",
                SignInRequest {
                    login: "a".into(),
                    password: S.into()
                }
            ),
            format!(
                "{:?}",
                PasswordChangeRequest {
                    current_password: S.into(),
                    new_password: S.into()
                }
            ),
            format!(
                "{:?}",
                EnrollRequest {
                    login: "a".into(),
                    code: S.into(),
                    password: S.into()
                }
            ),
            format!(
                "{:?}",
                StartIssuance {
                    pin: Some(S.into()),
                    confirm_pin: Some(S.into()),
                    ..Default::default()
                }
            ),
            format!("{:?}", views::PinCandidate { pin: S.into() }),
            format!(
                "{:?}",
                agent::PollRequest {
                    poll_secret: S.into()
                }
            ),
            format!(
                "{:?}",
                RelayCommand {
                    channel: "piv".into(),
                    bytes: S.into(),
                    expect: vec![],
                    step: "x".into(),
                    secret: true
                }
            ),
            format!(
                "{:?}",
                RelayResult {
                    protocol: 1,
                    session_id: "x".into(),
                    seq: 1,
                    responses: vec![],
                    answers: [("pin".to_string(), S.to_string())].into(),
                    transport_error: None
                }
            ),
        ];
        for s in &shown {
            assert!(!s.contains(S), "{s}");
        }
    }
}
