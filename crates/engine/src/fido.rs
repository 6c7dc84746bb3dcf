//! The FIDO step of issuance: register the device's passkey with a
//! Passkey-Enabled Service (Entra ID), sans I/O.
//!
//! The server runs Graph; this module builds every CTAP message and reads
//! every answer. In the rustls style of [`crate::piv`], each state consumes
//! its input and returns the next; every state is serde (the server seals it
//! between round trips), so the PIN protocol's ephemeral key and the
//! pinUvAuthToken are kept as bytes here rather than as `ctap::platform`
//! objects.
//!
//! Round trips (commands; the prompts are the person's and not counted):
//! 1. [`FidoRegistration::start`]: getInfo and getKeyAgreement (protocols 2
//!    and 1). These read nothing secret and change nothing, so the server
//!    may append them to the last PIV batch.
//! 2. After the prompts ([`AwaitPin::prompts`]: set or enter the FIDO PIN,
//!    or show the initial PIN of a shared PIN; confirm the registration) and
//!    the server's creationOptions ([`AwaitPin::on_answers`]): setPIN when
//!    the FIDO application has none, then the pinUvAuthToken (permission mc
//!    for rp.id; getPinToken on FIDO_2_0/2_1_PRE).
//! 3. makeCredential (resident key, UV by the token, ES256, hmac-secret,
//!    credProtect from the policy) with the clientDataJSON for rp.id and the
//!    challenge; the answer becomes the `attestationObject` Graph wants
//!    ([`Registration`]).

use std::collections::BTreeMap;

use ciborium::value::Value;
use keyward_card::ctap::{
    self, client_pin, command, cred_protect, extension, flags, permission, AuthenticatorData,
    ClientPinRequest, ClientPinResponse, CoseEc2Key, GetInfoResponse, MakeCredentialExtensions,
    MakeCredentialRequest, MakeCredentialResponse, PinProtocol, RequestOptions, RpEntity,
    StatusCode, UserEntity,
};
use keyward_domain::PinApplication;
use rand_core::{CryptoRngCore, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::batch::{check, Batch, Channel, Command, Failure, Response};
use crate::failure::{FailureCode, Step};
use crate::piv::Secret;
use crate::prompt::{touch_confirmed, Prompt, PromptKind};

pub const STEP_PROBE: Step = Step::FidoProbe;
pub const STEP_PIN: Step = Step::FidoPin;
pub const STEP_REGISTER: Step = Step::FidoRegister;

/// Where the FIDO PIN comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PinSource {
    /// Shared with the device PIN, which the person set at the start of
    /// issuance: the server knows it, nobody is asked.
    SharedKnown(Secret),
    /// Shared with the device PIN, which Keyward generated and did not show
    /// (Not Displayed): it is shown in the registration prompt and typed
    /// back.
    SharedInitial(Secret),
    /// The FIDO application's own PIN: set by the person if it has none,
    /// else entered.
    Unshared,
}

/// What the FIDO step needs from the policy and the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FidoPlan {
    pub pin: PinSource,
    /// credProtect level 1..=3 from the FIDO application.
    pub cred_protect: u8,
    /// The policy's PIN rules a new unshared FIDO PIN must also meet.
    pub pin_rules: Option<PinApplication>,
    /// A touch sensor: the person touches the device during makeCredential
    /// (a C4000 in a reader counts as present).
    pub touch_sensor: bool,
}

/// The relying party and user of a registration: the parts of Graph's
/// creationOptions the device needs (binary values decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreationRequest {
    pub rp_id: String,
    pub rp_name: String,
    pub user_id: Vec<u8>,
    pub user_name: String,
    pub user_display_name: String,
    pub challenge: Vec<u8>,
    /// COSE algorithms offered (ES256 = -7 must be one).
    pub algorithms: Vec<i64>,
    pub exclude_credentials: Vec<Vec<u8>>,
}

/// The registration to POST to Graph.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub credential_id: Vec<u8>,
    pub aaguid: [u8; 16],
    pub client_data_json: Vec<u8>,
    pub attestation_object: Vec<u8>,
    /// Uncompressed SEC1 P-256 public key of the credential.
    pub public_key: Vec<u8>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("credential_id", &self.credential_id.len())
            .field("aaguid", &self.aaguid)
            .finish_non_exhaustive()
    }
}

/// Entry point.
pub struct FidoRegistration;

impl FidoRegistration {
    /// The probe batch: getInfo, getKeyAgreement for protocols 2 and 1
    /// (whichever the device has; the other answers an error, ignored).
    pub fn start(plan: FidoPlan) -> (AwaitInfo, Batch) {
        let mut b = Batch::default();
        push(
            &mut b,
            STEP_PROBE,
            ctap::encode_request(command::GET_INFO, None),
            false,
        );
        for p in [PinProtocol::V2, PinProtocol::V1] {
            let req = ctap::platform::get_key_agreement_request(p);
            push(
                &mut b,
                STEP_PROBE,
                ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
                false,
            );
        }
        (
            AwaitInfo {
                plan,
                sent: b.clone(),
            },
            b,
        )
    }
}

fn push(b: &mut Batch, step: Step, message: Vec<u8>, secret: bool) {
    b.commands.push(Command {
        channel: Channel::Ctap,
        bytes: message,
        expect: vec![0x9000],
        step,
        secret,
    });
}

/// Splits a CTAP response (status byte + CBOR).
fn ctap_answer(r: &Response, step: Step) -> Result<Option<Value>, Failure> {
    match r.data.first() {
        None => Err(Failure::new(
            FailureCode::BadResponse,
            step,
            "empty CTAP response",
        )),
        Some(0) => ctap::split_response(&r.data).map_err(|e| {
            Failure::new(
                FailureCode::BadResponse,
                step,
                format!("CTAP response: {e:?}"),
            )
        }),
        Some(&s) => Err(ctap_failure(StatusCode(s), step)),
    }
}

/// A CTAP status as a failure a person can act on.
pub fn ctap_failure(s: StatusCode, step: Step) -> Failure {
    let (code, what) = match s {
        StatusCode::ERR_OPERATION_DENIED => (
            FailureCode::DeclinedByPerson,
            "the registration was declined at the device".to_string(),
        ),
        // A cancel sent by the workstation (CTAPHID CANCEL), not the
        // person's refusal: worth a Retry. (A device pulled out answers
        // nothing: that is a transport error, `device_removed`.)
        StatusCode::ERR_KEEPALIVE_CANCEL => (
            FailureCode::TouchCancelled,
            "the wait for a touch was cancelled at the workstation".to_string(),
        ),
        StatusCode::ERR_USER_ACTION_TIMEOUT => (
            FailureCode::TouchTimeout,
            "nobody touched the device in time".to_string(),
        ),
        StatusCode::ERR_PIN_INVALID => (
            FailureCode::FidoPinWrong,
            "the FIDO PIN is wrong".to_string(),
        ),
        StatusCode::ERR_PIN_BLOCKED => (
            FailureCode::FidoPinBlocked,
            "the FIDO PIN is blocked: the FIDO application must be reset".to_string(),
        ),
        StatusCode::ERR_PIN_AUTH_BLOCKED => (
            FailureCode::FidoPinAuthBlocked,
            "too many wrong FIDO PINs: remove and reinsert the device".to_string(),
        ),
        StatusCode::ERR_PIN_NOT_SET => (
            FailureCode::FidoPinNotSet,
            "the FIDO application has no PIN".to_string(),
        ),
        StatusCode::ERR_PIN_POLICY_VIOLATION => (
            FailureCode::FidoPinPolicy,
            "the device refused the FIDO PIN (its PIN policy)".to_string(),
        ),
        StatusCode::ERR_CREDENTIAL_EXCLUDED => (
            FailureCode::PasskeyExists,
            "the device already holds a passkey of this user for this service".to_string(),
        ),
        StatusCode::ERR_KEY_STORE_FULL => (
            FailureCode::FidoStorageFull,
            "the device has no room for another passkey".to_string(),
        ),
        _ => (
            FailureCode::CtapError,
            "the authenticator refused".to_string(),
        ),
    };
    let mut f = Failure::new(code, step, format!("{what} (CTAP {s})"));
    f.sw = Some(s.0 as u16);
    f
}

/// What the authenticator said about itself, as far as the step needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub aaguid: [u8; 16],
    pub pin_set: bool,
    pub min_pin_length: usize,
    /// getPinUvAuthTokenUsingPinWithPermissions (CTAP 2.1) or getPinToken.
    pub token_with_permissions: bool,
    pub hmac_secret: bool,
    pub cred_protect: bool,
}

/// Waiting for the probe's answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AwaitInfo {
    plan: FidoPlan,
    sent: Batch,
}

/// The platform half of the PIN protocol, kept as bytes.
#[derive(Clone, Serialize, Deserialize)]
struct KeyAgreement {
    protocol: u8,
    /// The authenticator's key, uncompressed SEC1.
    peer: Vec<u8>,
    /// Our ephemeral scalar.
    secret: Zeroizing<Vec<u8>>,
}

impl KeyAgreement {
    fn protocol(&self) -> PinProtocol {
        if self.protocol == 2 {
            PinProtocol::V2
        } else {
            PinProtocol::V1
        }
    }

    fn new(protocol: u8, peer: &CoseEc2Key, mut rng: &mut dyn CryptoRngCore) -> Self {
        let secret = p256::SecretKey::random(&mut rng);
        KeyAgreement {
            protocol,
            peer: peer.to_sec1(),
            secret: Zeroizing::new(secret.to_bytes().to_vec()),
        }
    }

    fn platform_key(&self) -> Result<CoseEc2Key, Failure> {
        let s = p256::SecretKey::from_slice(&self.secret)
            .map_err(|_| Failure::new(FailureCode::Internal, STEP_PIN, "bad ephemeral key"))?;
        Ok(CoseEc2Key::from_public_key(
            &s.public_key(),
            ctap::cose::ECDH_ES_HKDF_256,
        ))
    }

    fn shared(&self) -> Result<ctap::SharedSecret, Failure> {
        let bad = || {
            Failure::new(
                FailureCode::BadResponse,
                STEP_PIN,
                "the authenticator's key agreement key is invalid",
            )
        };
        let s = p256::SecretKey::from_slice(&self.secret).map_err(|_| bad())?;
        let peer = p256::PublicKey::from_sec1_bytes(&self.peer).map_err(|_| bad())?;
        let z = p256::ecdh::diffie_hellman(s.to_nonzero_scalar(), peer.as_affine());
        Ok(self.protocol().kdf(z.raw_secret_bytes()))
    }
}

impl AwaitInfo {
    /// `rng`: the PIN protocol's ephemeral key.
    pub fn on_responses(
        self,
        responses: &[Response],
        rng: &mut dyn CryptoRngCore,
    ) -> Result<AwaitPin, Failure> {
        let responses = check(&self.sent, responses)?;
        let info_v = ctap_answer(&responses[0], STEP_PROBE)?.ok_or_else(|| {
            Failure::new(FailureCode::BadResponse, STEP_PROBE, "getInfo without data")
        })?;
        let info = GetInfoResponse::from_value(&info_v).map_err(|e| {
            Failure::new(
                FailureCode::BadResponse,
                STEP_PROBE,
                format!("getInfo: {e:?}"),
            )
        })?;
        let unfit =
            |why: &str| Failure::new(FailureCode::FidoDeviceUnfit, STEP_PROBE, why.to_string());
        if !info.versions.iter().any(|v| v.starts_with("FIDO_2")) {
            return Err(unfit("the device's FIDO application is not FIDO2 (CTAP 2)"));
        }
        if info.option("rk") != Some(true) {
            return Err(unfit("the device cannot keep resident keys (passkeys)"));
        }
        let pin_set = match info.option("clientPin") {
            Some(set) => set,
            None => return Err(unfit("the device's FIDO application has no PIN support")),
        };
        if !info.algorithms.is_empty() && !info.algorithms.contains(&ctap::cose::ES256) {
            return Err(unfit("the device does not offer ES256"));
        }
        let cred_protect_ext = info.extensions.iter().any(|e| e == extension::CRED_PROTECT);
        if self.plan.cred_protect > cred_protect::USER_VERIFICATION_OPTIONAL && !cred_protect_ext {
            return Err(unfit(
                "the policy asks for credProtect, which the device lacks",
            ));
        }
        // The first protocol the device lists that we speak, and its key.
        let mut ka = None;
        for p in &info.pin_uv_auth_protocols {
            let idx = match p {
                2 => 1,
                1 => 2,
                _ => continue,
            };
            if let Ok(Some(v)) = ctap_answer(&responses[idx], STEP_PROBE) {
                if let Ok(r) = ClientPinResponse::from_value(&v) {
                    if let Some(k) = r.key_agreement {
                        ka = Some(KeyAgreement::new(*p, &k, &mut *rng));
                        break;
                    }
                }
            }
        }
        let ka = ka.ok_or_else(|| unfit("no PIN/UV auth protocol in common with the device"))?;
        if matches!(
            self.plan.pin,
            PinSource::SharedKnown(_) | PinSource::SharedInitial(_)
        ) && !pin_set
        {
            return Err(unfit(
                "the policy shares the device PIN with FIDO, but the FIDO application has no PIN",
            ));
        }
        let device = DeviceInfo {
            aaguid: info.aaguid,
            pin_set,
            min_pin_length: info.min_pin_length.unwrap_or(4) as usize,
            token_with_permissions: info.option("pinUvAuthToken") == Some(true),
            hmac_secret: info.extensions.iter().any(|e| e == extension::HMAC_SECRET),
            cred_protect: cred_protect_ext,
        };
        Ok(AwaitPin {
            plan: self.plan,
            device,
            ka,
        })
    }
}

/// Waiting for the person's answers (the FIDO PIN, the confirmation).
#[derive(Clone, Serialize, Deserialize)]
pub struct AwaitPin {
    plan: FidoPlan,
    device: DeviceInfo,
    ka: KeyAgreement,
}

/// The rules a new FIDO PIN breaks: the device's minPINLength, the CTAP
/// limits (4 code points, 63 bytes) and the policy's PIN rules. Empty: fine.
pub fn fido_pin_problems(
    pin: &str,
    min_pin_length: usize,
    policy: Option<&PinApplication>,
) -> Vec<String> {
    let mut out = Vec::new();
    let n = pin.chars().count();
    let min = min_pin_length.max(4);
    if n < min {
        out.push(format!("a FIDO PIN has at least {min} characters"));
    }
    if pin.len() > 63 {
        out.push("a FIDO PIN has at most 63 bytes".to_string());
    }
    if let Some(rules) = policy {
        for c in rules.check(pin) {
            if !c.passed {
                out.push(format!("the policy's PIN rule: {}", c.description));
            }
        }
    }
    out
}

impl AwaitPin {
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// The prompt batch: the PIN prompt the situation needs, and "Verify this
    /// device and confirm the registration".
    pub fn prompts(&self) -> Vec<Prompt> {
        let mut out = Vec::new();
        match &self.plan.pin {
            PinSource::SharedKnown(_) => {}
            PinSource::SharedInitial(pin) => {
                let mut p = Prompt::new(
                    PromptKind::ShowInitialPin,
                    STEP_PIN,
                    "Your device's initial PIN, needed to register the passkey: enter it to authenticate the registration",
                );
                p.value = Some(pin.clone());
                out.push(p);
            }
            PinSource::Unshared if self.device.pin_set => out.push(Prompt::new(
                PromptKind::EnterFidoPin,
                STEP_PIN,
                "Enter the PIN of the device's FIDO application",
            )),
            PinSource::Unshared => out.push(Prompt::new(
                PromptKind::SetFidoPin,
                STEP_PIN,
                format!(
                    "Set a PIN for the device's FIDO application (at least {} characters; it may be the same as the device PIN)",
                    self.device.min_pin_length.max(4)
                ),
            )),
        }
        let touch = if self.plan.touch_sensor {
            "Verify this device and confirm the registration: after you confirm, touch the device when it blinks"
        } else {
            "Verify this device and confirm the registration of its passkey"
        };
        out.push(Prompt::new(PromptKind::ConfirmTouch, STEP_REGISTER, touch));
        out
    }

    /// The person's answers (by prompt kind). Problems with a new PIN are
    /// `Err` with code `pin_rules` (the server checks them first with
    /// [`fido_pin_problems`] to answer 400 with each rule).
    /// `rng`: the PIN protocol's initialisation vectors.
    pub fn on_answers(
        self,
        answers: &BTreeMap<String, String>,
        options: &CreationRequest,
        rng: &mut dyn RngCore,
    ) -> Result<(AwaitToken, Batch), Failure> {
        check_options(options)?;
        let answer = |k: PromptKind| answers.get(k.as_str()).map(String::as_str);
        touch_confirmed(
            answer(PromptKind::ConfirmTouch).unwrap_or(""),
            STEP_REGISTER,
        )?;
        let missing = |k: PromptKind| {
            Failure::new(
                FailureCode::AnswerMissing,
                STEP_PIN,
                format!("the {} prompt was not answered", k.as_str()),
            )
        };
        let (pin, new_pin) = match &self.plan.pin {
            PinSource::SharedKnown(p) => (Zeroizing::new(p.expose().to_string()), false),
            PinSource::SharedInitial(p) => {
                let typed = answer(PromptKind::ShowInitialPin)
                    .ok_or_else(|| missing(PromptKind::ShowInitialPin))?;
                if typed != p.expose() {
                    return Err(Failure::new(
                        FailureCode::InitialPinMismatch,
                        STEP_PIN,
                        "the PIN entered is not the initial PIN shown",
                    ));
                }
                (Zeroizing::new(typed.to_string()), false)
            }
            PinSource::Unshared if self.device.pin_set => (
                Zeroizing::new(
                    answer(PromptKind::EnterFidoPin)
                        .ok_or_else(|| missing(PromptKind::EnterFidoPin))?
                        .to_string(),
                ),
                false,
            ),
            PinSource::Unshared => {
                let p = answer(PromptKind::SetFidoPin)
                    .ok_or_else(|| missing(PromptKind::SetFidoPin))?;
                let problems =
                    fido_pin_problems(p, self.device.min_pin_length, self.plan.pin_rules.as_ref());
                if !problems.is_empty() {
                    return Err(Failure::new(
                        FailureCode::PinRules,
                        STEP_PIN,
                        problems.join("; "),
                    ));
                }
                (Zeroizing::new(p.to_string()), true)
            }
        };
        let protocol = self.ka.protocol();
        let shared = self.ka.shared()?;
        let platform_key = self.ka.platform_key()?;
        let enc_err =
            |e: ctap::CtapError| Failure::new(FailureCode::Internal, STEP_PIN, format!("{e:?}"));
        let base = |sub: u8| ClientPinRequest {
            pin_uv_auth_protocol: Some(protocol.number()),
            sub_command: sub,
            key_agreement: Some(platform_key.clone()),
            ..Default::default()
        };
        let mut b = Batch::default();
        if new_pin {
            let padded = Zeroizing::new(ctap::pad_pin(pin.as_bytes()).map_err(enc_err)?);
            let new_pin_enc = protocol.encrypt(&shared, &padded, rng).map_err(enc_err)?;
            let mut req = base(client_pin::SET_PIN);
            req.pin_uv_auth_param = Some(protocol.authenticate_shared(&shared, &new_pin_enc));
            req.new_pin_enc = Some(new_pin_enc);
            push(
                &mut b,
                STEP_PIN,
                ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
                true,
            );
        }
        let pin_hash_enc = protocol
            .encrypt(&shared, &ctap::pin_hash16(pin.as_bytes()), rng)
            .map_err(enc_err)?;
        let mut req = if self.device.token_with_permissions {
            let mut r = base(client_pin::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS);
            r.permissions = Some(permission::MAKE_CREDENTIAL);
            r.rp_id = Some(options.rp_id.clone());
            r
        } else {
            base(client_pin::GET_PIN_TOKEN)
        };
        req.pin_hash_enc = Some(pin_hash_enc);
        push(
            &mut b,
            STEP_PIN,
            ctap::encode_request(command::CLIENT_PIN, Some(&req.to_value())),
            true,
        );
        Ok((
            AwaitToken {
                plan: self.plan,
                device: self.device,
                ka: self.ka,
                options: options.clone(),
                sent: b.clone(),
            },
            b,
        ))
    }
}

/// Waiting for the pinUvAuthToken (and setPIN's answer).
#[derive(Clone, Serialize, Deserialize)]
pub struct AwaitToken {
    plan: FidoPlan,
    device: DeviceInfo,
    ka: KeyAgreement,
    options: CreationRequest,
    sent: Batch,
}

impl AwaitToken {
    /// Whether this attempt set the FIDO PIN (the server records it).
    pub fn sets_pin(&self) -> bool {
        self.sent.commands.len() == 2
    }

    /// The token; then the makeCredential batch.
    pub fn on_responses(self, responses: &[Response]) -> Result<(AwaitCredential, Batch), Failure> {
        let responses = check(&self.sent, responses)?;
        for r in &responses[..responses.len() - 1] {
            ctap_answer(r, STEP_PIN)?;
        }
        let v = ctap_answer(&responses[responses.len() - 1], STEP_PIN)?
            .ok_or_else(|| Failure::new(FailureCode::BadResponse, STEP_PIN, "no pinUvAuthToken"))?;
        let r = ClientPinResponse::from_value(&v)
            .map_err(|e| Failure::new(FailureCode::BadResponse, STEP_PIN, format!("{e:?}")))?;
        let enc = r
            .pin_uv_auth_token
            .ok_or_else(|| Failure::new(FailureCode::BadResponse, STEP_PIN, "no pinUvAuthToken"))?;
        let token = self
            .ka
            .protocol()
            .decrypt(&self.ka.shared()?, &enc)
            .map_err(|e| {
                Failure::new(
                    FailureCode::BadResponse,
                    STEP_PIN,
                    format!("pinUvAuthToken: {e:?}"),
                )
            })?;
        if token.len() != 16 && token.len() != 32 {
            return Err(Failure::new(
                FailureCode::BadResponse,
                STEP_PIN,
                "pinUvAuthToken is not 16 or 32 bytes",
            ));
        }
        make_credential(
            self.plan,
            self.device,
            self.ka.protocol(),
            &Zeroizing::new(token),
            &self.options,
        )
    }
}

/// The clientDataJSON of a registration (WebAuthn 5.8.1: type, challenge
/// base64url, origin, crossOrigin), serialised as browsers do.
pub fn client_data_json(challenge: &[u8], rp_id: &str) -> Vec<u8> {
    // Fields in the order browsers write them.
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ClientData<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
        challenge: String,
        origin: String,
        cross_origin: bool,
    }
    serde_json::to_vec(&ClientData {
        kind: "webauthn.create",
        challenge: b64url(challenge),
        origin: format!("https://{rp_id}"),
        cross_origin: false,
    })
    .expect("client data serialises")
}

/// base64url without padding (RFC 4648 section 5).
pub fn b64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The creationOptions must be usable: ES256 offered, rp.id a domain name.
fn check_options(options: &CreationRequest) -> Result<(), Failure> {
    if !options.algorithms.is_empty() && !options.algorithms.contains(&ctap::cose::ES256) {
        return Err(Failure::new(
            FailureCode::PasskeyServiceUnfit,
            STEP_REGISTER,
            "the service does not accept ES256 keys",
        ));
    }
    if options.rp_id.is_empty()
        || !options
            .rp_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(Failure::new(
            FailureCode::BadResponse,
            STEP_REGISTER,
            "creationOptions: rp.id is not a domain name",
        ));
    }
    Ok(())
}

/// The makeCredential batch for Graph's creationOptions.
fn make_credential(
    plan: FidoPlan,
    device: DeviceInfo,
    protocol: PinProtocol,
    token: &[u8],
    options: &CreationRequest,
) -> Result<(AwaitCredential, Batch), Failure> {
    let client_data_json = client_data_json(&options.challenge, &options.rp_id);
    let client_data_hash = Sha256::digest(&client_data_json).to_vec();
    let exclude_list = (!options.exclude_credentials.is_empty()).then(|| {
        options
            .exclude_credentials
            .iter()
            .map(|id| ctap::CredentialDescriptor { id: id.clone() })
            .collect()
    });
    let req = MakeCredentialRequest {
        pin_uv_auth_param: Some(protocol.authenticate(token, &client_data_hash)),
        pin_uv_auth_protocol: Some(protocol.number()),
        client_data_hash,
        rp: RpEntity {
            id: options.rp_id.clone(),
            name: Some(options.rp_name.clone()).filter(|n| !n.is_empty()),
        },
        user: UserEntity {
            id: options.user_id.clone(),
            name: Some(options.user_name.clone()).filter(|n| !n.is_empty()),
            display_name: Some(options.user_display_name.clone()).filter(|n| !n.is_empty()),
        },
        algorithms: vec![ctap::cose::ES256],
        exclude_list,
        extensions: MakeCredentialExtensions {
            cred_protect: device.cred_protect.then_some(plan.cred_protect),
            hmac_secret: device.hmac_secret.then_some(true),
        },
        options: RequestOptions {
            rk: Some(true),
            ..Default::default()
        },
        enterprise_attestation: None,
    };
    let mut b = Batch::default();
    push(
        &mut b,
        STEP_REGISTER,
        ctap::encode_request(command::MAKE_CREDENTIAL, Some(&req.to_value())),
        false,
    );
    if plan.touch_sensor {
        b.prompts.push(Prompt::new(
            PromptKind::TouchDevice,
            STEP_REGISTER,
            "Touch the device now to confirm the registration",
        ));
    }
    Ok((
        AwaitCredential {
            device,
            rp_id: options.rp_id.clone(),
            client_data_json,
            sent: b.clone(),
        },
        b,
    ))
}

/// Waiting for makeCredential.
#[derive(Clone, Serialize, Deserialize)]
pub struct AwaitCredential {
    device: DeviceInfo,
    rp_id: String,
    client_data_json: Vec<u8>,
    sent: Batch,
}

impl AwaitCredential {
    pub fn on_responses(self, responses: &[Response]) -> Result<Registration, Failure> {
        let responses = check(&self.sent, responses)?;
        let v = ctap_answer(&responses[0], STEP_REGISTER)?.ok_or_else(|| {
            Failure::new(
                FailureCode::BadResponse,
                STEP_REGISTER,
                "makeCredential without data",
            )
        })?;
        let bad = |what: String| Failure::new(FailureCode::BadResponse, STEP_REGISTER, what);
        let mc = MakeCredentialResponse::from_value(&v)
            .map_err(|e| bad(format!("makeCredential: {e:?}")))?;
        let auth = AuthenticatorData::parse(&mc.auth_data)
            .map_err(|e| bad(format!("authenticatorData: {e:?}")))?;
        if auth.rp_id_hash.as_slice() != Sha256::digest(self.rp_id.as_bytes()).as_slice() {
            return Err(bad("authenticatorData: rpIdHash is not for rp.id".into()));
        }
        if auth.flags & flags::UP == 0 || auth.flags & flags::UV == 0 {
            return Err(bad(
                "authenticatorData: the device did not set user present and user verified".into(),
            ));
        }
        let attested = auth
            .attested
            .ok_or_else(|| bad("authenticatorData: no attested credential".into()))?;
        Ok(Registration {
            credential_id: attested.credential_id.clone(),
            aaguid: attested.aaguid,
            attestation_object: attestation_object(&mc),
            client_data_json: self.client_data_json,
            public_key: attested.public_key.to_sec1(),
        })
    }

    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }
}

/// The WebAuthn attestationObject (`fmt`, `attStmt`, `authData` with text
/// keys, CTAP2-canonical CBOR) from a makeCredential answer (integer keys).
pub fn attestation_object(mc: &MakeCredentialResponse) -> Vec<u8> {
    let mut stmt = vec![];
    if mc.fmt != "none" {
        stmt.push((
            Value::Text("alg".into()),
            Value::Integer(mc.att_stmt.alg.into()),
        ));
        stmt.push((
            Value::Text("sig".into()),
            Value::Bytes(mc.att_stmt.sig.clone()),
        ));
        if !mc.att_stmt.x5c.is_empty() {
            stmt.push((
                Value::Text("x5c".into()),
                Value::Array(mc.att_stmt.x5c.iter().cloned().map(Value::Bytes).collect()),
            ));
        }
    }
    let obj = Value::Map(vec![
        (Value::Text("fmt".into()), Value::Text(mc.fmt.clone())),
        (Value::Text("attStmt".into()), Value::Map(stmt)),
        (
            Value::Text("authData".into()),
            Value::Bytes(mc.auth_data.clone()),
        ),
    ]);
    ctap::encode_canonical(&obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648() {
        assert_eq!(b64url(b""), "");
        assert_eq!(b64url(b"f"), "Zg");
        assert_eq!(b64url(b"fo"), "Zm8");
        assert_eq!(b64url(b"foo"), "Zm9v");
        assert_eq!(b64url(b"foob"), "Zm9vYg");
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn new_pin_rules() {
        assert!(fido_pin_problems("1234", 4, None).is_empty());
        assert_eq!(fido_pin_problems("123", 4, None).len(), 1);
        // Code points, not bytes: four 2-byte characters pass.
        assert!(fido_pin_problems("éééé", 4, None).is_empty());
        assert!(!fido_pin_problems("12345", 6, None).is_empty());
        assert!(!fido_pin_problems(&"1".repeat(64), 4, None).is_empty());
    }

    #[test]
    fn client_data_is_webauthn_create() {
        let j = client_data_json(b"\x01\x02", "login.microsoft.com");
        assert_eq!(
            std::str::from_utf8(&j).unwrap(),
            r#"{"type":"webauthn.create","challenge":"AQI","origin":"https://login.microsoft.com","crossOrigin":false}"#
        );
    }
}

/// The step of the device PIN change after the registration (its name is
/// the one the PIV plan uses, so the server's knowledge of the device PIN
/// follows it).
pub const STEP_SET_NEW_PIN: Step = Step::SetNewPin;

/// Shared PIN, Not Displayed, "Change PIN during issuance" = Yes: after the
/// passkey registration the person's own PIN replaces the initial one.
/// One PIV CHANGE REFERENCE DATA covers both applications, because the
/// C4000 shares the PIN (`80 E3 01 00`): the FIDO PIN is the PIV PIN.
pub fn change_shared_pin(initial: &Secret, new_pin: &str) -> Result<Batch, Failure> {
    let change = keyward_card::piv::change_reference_data(
        keyward_card::piv::key_ref::PIN,
        initial.expose().as_bytes(),
        new_pin.as_bytes(),
    )
    .ok_or_else(|| {
        Failure::new(
            FailureCode::PinInvalid,
            STEP_SET_NEW_PIN,
            "a PIV PIN has 1 to 8 characters",
        )
    })?;
    let mut batch = Batch::default();
    batch.push(
        STEP_SET_NEW_PIN,
        keyward_card::piv::select_piv().to_bytes(),
        &[0x9000],
        false,
    );
    batch.push(STEP_SET_NEW_PIN, change.to_bytes(), &[0x9000], true);
    Ok(batch)
}

/// The answers to [`change_shared_pin`]'s batch.
pub fn on_pin_changed(sent: &Batch, responses: &[Response]) -> Result<(), Failure> {
    check(sent, responses).map(|_| ())
}

#[cfg(test)]
mod shared_pin_change_tests {
    use super::*;

    #[test]
    fn change_batch_selects_piv_and_changes_the_pin() {
        let b = change_shared_pin(&Secret::new("12345678"), "24681357").expect("batch");
        assert_eq!(b.commands.len(), 2);
        assert_eq!(&b.commands[1].bytes[..4], &[0x00, 0x24, 0x00, 0x80]);
        assert!(b.commands[1].secret);
        let ok = vec![
            Response {
                data: vec![],
                sw: 0x9000,
            },
            Response {
                data: vec![],
                sw: 0x9000,
            },
        ];
        assert!(on_pin_changed(&b, &ok).is_ok());
        assert!(on_pin_changed(&b, &ok[..1]).is_err());
        assert!(change_shared_pin(&Secret::new("12345678"), "123456789").is_err());
    }
}
