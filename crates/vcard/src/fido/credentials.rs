//! authenticatorMakeCredential (0x01), authenticatorGetAssertion (0x02) and
//! authenticatorGetNextAssertion (0x08).

use ciborium::Value;
use hmac::{Hmac, Mac};
use keyward_card::ctap::{
    self, cred_protect, flags, permission, AttestedCredentialData, AuthenticatorData,
    CredentialDescriptor, CtapError, GetAssertionRequest, GetAssertionResponse,
    MakeCredentialRequest, MakeCredentialResponse, PackedAttestation, PinProtocol, StatusCode,
    UserEntity,
};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{DerSignature, SigningKey};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{
    AssertionCursor, FidoAuthenticator, FidoPinStore, StoredCredential, UserPresence,
    CURSOR_TIMEOUT, MAX_STORED_CREDENTIALS,
};

fn rp_id_hash(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

impl FidoAuthenticator {
    /// Handles the "zero-length pinUvAuthParam" probe platforms use to make
    /// the user pick an authenticator (CTAP 2.1 section 6.1.2 step 1).
    fn zero_length_probe(
        &self,
        param: &Option<Vec<u8>>,
        pins: &dyn FidoPinStore,
        presence: &mut dyn UserPresence,
    ) -> Result<(), CtapError> {
        if matches!(param, Some(p) if p.is_empty()) {
            self.user_presence(presence)?;
            return Err(if pins.is_pin_set() {
                StatusCode::ERR_PIN_INVALID.into()
            } else {
                StatusCode::ERR_PIN_NOT_SET.into()
            });
        }
        Ok(())
    }

    /// The "uv" option: this authenticator has no built-in user
    /// verification (PIN only), so uv=true is refused.
    fn check_uv_option(&self, uv: Option<bool>) -> Result<(), CtapError> {
        if uv == Some(true) {
            return Err(if self.config.ctap21() {
                StatusCode::ERR_INVALID_OPTION.into()
            } else {
                StatusCode::ERR_UNSUPPORTED_OPTION.into()
            });
        }
        Ok(())
    }

    fn next_sign_count(&mut self) -> u32 {
        self.state.sign_count = self.state.sign_count.wrapping_add(1);
        self.state.sign_count
    }

    pub(super) fn make_credential(
        &mut self,
        req: MakeCredentialRequest,
        pins: &mut dyn FidoPinStore,
        presence: &mut dyn UserPresence,
    ) -> Result<MakeCredentialResponse, CtapError> {
        self.zero_length_probe(&req.pin_uv_auth_param, pins, presence)?;
        if req.pin_uv_auth_param.is_some() {
            PinProtocol::from_number(req.pin_uv_auth_protocol.ok_or_else(|| {
                CtapError::new(
                    StatusCode::ERR_MISSING_PARAMETER,
                    "pinUvAuthProtocol missing",
                )
            })?)?;
        }
        if req.client_data_hash.len() != 32 {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_LENGTH,
                "clientDataHash is not 32 bytes",
            ));
        }
        if !req.algorithms.contains(&ctap::cose::ES256) {
            return Err(CtapError::new(
                StatusCode::ERR_UNSUPPORTED_ALGORITHM,
                "only ES256 is supported",
            ));
        }
        if req.options.up == Some(false) {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_OPTION,
                "makeCredential needs user presence",
            ));
        }
        self.check_uv_option(req.options.uv)?;
        if req.enterprise_attestation.is_some() {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_PARAMETER,
                "enterprise attestation not supported",
            ));
        }

        let uv = match &req.pin_uv_auth_param {
            Some(param) => {
                if !pins.is_pin_set() {
                    return Err(StatusCode::ERR_PIN_NOT_SET.into());
                }
                self.verify_token(
                    req.pin_uv_auth_protocol,
                    param,
                    &req.client_data_hash,
                    permission::MAKE_CREDENTIAL,
                    Some(&req.rp.id),
                )?;
                true
            }
            None if pins.is_pin_set() => {
                // makeCredUvNotRqd is not claimed: with a PIN set, every
                // makeCredential needs the PIN.
                return Err(CtapError::new(
                    StatusCode::ERR_PUAT_REQUIRED,
                    "PIN is set: pinUvAuthParam required",
                ));
            }
            None => false,
        };

        if let Some(excluded) = &req.exclude_list {
            let hit = self.state.credentials.iter().any(|c| {
                c.rp_id == req.rp.id
                    && excluded.iter().any(|d| d.id == c.id)
                    && (uv || c.cred_protect != cred_protect::USER_VERIFICATION_REQUIRED)
            });
            if hit {
                // A real key waits for a touch before telling, so the
                // platform cannot probe for credentials silently.
                self.user_presence(presence)?;
                return Err(StatusCode::ERR_CREDENTIAL_EXCLUDED.into());
            }
        }

        let rk = req.options.rk == Some(true);
        let discoverable_count = self
            .state
            .credentials
            .iter()
            .filter(|c| c.discoverable)
            .count();
        let replaces = |c: &StoredCredential| {
            c.discoverable && c.rp_id == req.rp.id && c.user_id == req.user.id
        };
        if rk
            && discoverable_count >= self.config.max_discoverable_credentials
            && !self.state.credentials.iter().any(replaces)
        {
            return Err(StatusCode::ERR_KEY_STORE_FULL.into());
        }
        if self.state.credentials.len() >= MAX_STORED_CREDENTIALS {
            return Err(StatusCode::ERR_KEY_STORE_FULL.into());
        }

        self.user_presence(presence)?;
        if uv {
            self.consume_token_permissions();
        }

        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let mut id = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut id);
        let cred_protect_level = req
            .extensions
            .cred_protect
            .unwrap_or(cred_protect::USER_VERIFICATION_OPTIONAL);
        let cred_random = (req.extensions.hmac_secret == Some(true)).then(|| {
            let mut with_uv = vec![0u8; 32];
            let mut without_uv = vec![0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut with_uv);
            rand::rngs::OsRng.fill_bytes(&mut without_uv);
            (with_uv, without_uv)
        });
        let created = self.state.next_created;
        self.state.next_created += 1;
        let credential = StoredCredential {
            id: id.clone(),
            rp_id: req.rp.id.clone(),
            rp_name: req.rp.name.clone(),
            user_id: req.user.id.clone(),
            user_name: req.user.name.clone(),
            user_display_name: req.user.display_name.clone(),
            private_key: key.to_bytes().to_vec(),
            discoverable: rk,
            cred_protect: cred_protect_level,
            cred_random,
            created,
        };
        if rk {
            self.state.credentials.retain(|c| !replaces(c));
        }

        let mut ext = Vec::new();
        if let Some(level) = req.extensions.cred_protect {
            ext.push((
                Value::Text(ctap::extension::CRED_PROTECT.into()),
                Value::Integer(level.into()),
            ));
        }
        if req.extensions.hmac_secret == Some(true) {
            ext.push((
                Value::Text(ctap::extension::HMAC_SECRET.into()),
                Value::Bool(true),
            ));
        }
        let mut f = flags::UP | flags::AT;
        if uv {
            f |= flags::UV;
        }
        if !ext.is_empty() {
            f |= flags::ED;
        }
        let auth_data = AuthenticatorData {
            rp_id_hash: rp_id_hash(&req.rp.id),
            flags: f,
            sign_count: self.next_sign_count(),
            attested: Some(AttestedCredentialData {
                aaguid: self.config.aaguid,
                credential_id: id,
                public_key: credential.public_key(),
            }),
            extensions: (!ext.is_empty()).then_some(Value::Map(ext)),
        }
        .to_bytes();
        self.state.credentials.push(credential);

        let signed = [auth_data.as_slice(), &req.client_data_hash].concat();
        Ok(MakeCredentialResponse {
            fmt: "packed".into(),
            att_stmt: PackedAttestation {
                alg: super::attestation::ATTESTATION_ALG,
                sig: self.attestation.sign(&signed),
                x5c: self.attestation.x5c(),
            },
            auth_data,
        })
    }

    pub(super) fn get_assertion(
        &mut self,
        req: GetAssertionRequest,
        pins: &mut dyn FidoPinStore,
        presence: &mut dyn UserPresence,
    ) -> Result<GetAssertionResponse, CtapError> {
        self.zero_length_probe(&req.pin_uv_auth_param, pins, presence)?;
        if req.pin_uv_auth_param.is_some() {
            PinProtocol::from_number(req.pin_uv_auth_protocol.ok_or_else(|| {
                CtapError::new(
                    StatusCode::ERR_MISSING_PARAMETER,
                    "pinUvAuthProtocol missing",
                )
            })?)?;
        }
        if req.client_data_hash.len() != 32 {
            return Err(CtapError::new(
                StatusCode::ERR_INVALID_LENGTH,
                "clientDataHash is not 32 bytes",
            ));
        }
        if req.options.rk.is_some() {
            return Err(CtapError::new(
                StatusCode::ERR_UNSUPPORTED_OPTION,
                "rk is not an option of getAssertion",
            ));
        }
        self.check_uv_option(req.options.uv)?;
        let up = req.options.up.unwrap_or(true);

        let uv = match &req.pin_uv_auth_param {
            Some(param) => {
                if !pins.is_pin_set() {
                    return Err(StatusCode::ERR_PIN_NOT_SET.into());
                }
                self.verify_token(
                    req.pin_uv_auth_protocol,
                    param,
                    &req.client_data_hash,
                    permission::GET_ASSERTION,
                    Some(&req.rp_id),
                )?;
                true
            }
            None => false,
        };

        let allow_list = req.allow_list.as_ref().filter(|l| !l.is_empty());
        let mut found: Vec<&StoredCredential> = self
            .state
            .credentials
            .iter()
            .filter(|c| c.rp_id == req.rp_id)
            .filter(|c| match allow_list {
                Some(list) => list.iter().any(|d| d.id == c.id),
                None => c.discoverable,
            })
            .filter(|c| {
                uv || match c.cred_protect {
                    cred_protect::USER_VERIFICATION_REQUIRED => false,
                    cred_protect::USER_VERIFICATION_OPTIONAL_WITH_CREDENTIAL_ID_LIST => {
                        allow_list.is_some()
                    }
                    _ => true,
                }
            })
            .collect();
        if found.is_empty() {
            if up {
                // Real keys still blink and wait before saying no.
                self.user_presence(presence)?;
            }
            return Err(StatusCode::ERR_NO_CREDENTIALS.into());
        }
        found.sort_by_key(|c| std::cmp::Reverse(c.created));
        let ids: Vec<Vec<u8>> = found.iter().map(|c| c.id.clone()).collect();

        if up {
            self.user_presence(presence)?;
        }
        if uv {
            self.consume_token_permissions();
        }
        let mut f = 0;
        if up {
            f |= flags::UP;
        }
        if uv {
            f |= flags::UV;
        }

        let first = ids[0].clone();
        let hmac_output = match &req.extensions.hmac_secret {
            Some(input) => {
                let cred = self.credential(&first)?;
                hmac_secret_output(cred, input, uv, &self.volatile.key_agreement)?
            }
            None => None,
        };
        let mut response = self.assertion_for(&first, &req.client_data_hash, f, uv, hmac_output)?;
        // With an allow list the platform knows the credential: one
        // assertion only. Without, the platform may walk the others.
        if allow_list.is_none() && ids.len() > 1 {
            response.number_of_credentials = Some(ids.len() as u64);
            self.volatile.assertion = Some(AssertionCursor {
                remaining: ids[1..].to_vec(),
                client_data_hash: req.client_data_hash.clone(),
                flags: f,
                uv,
                started: self.clock.now(),
            });
        }
        Ok(response)
    }

    pub(super) fn get_next_assertion(&mut self) -> Result<GetAssertionResponse, CtapError> {
        let now = self.clock.now();
        let Some(mut cursor) = self.volatile.assertion.take() else {
            return Err(CtapError::new(
                StatusCode::ERR_NOT_ALLOWED,
                "no getAssertion to continue",
            ));
        };
        if now.duration_since(cursor.started) > CURSOR_TIMEOUT || cursor.remaining.is_empty() {
            return Err(CtapError::new(
                StatusCode::ERR_NOT_ALLOWED,
                "getAssertion expired or exhausted",
            ));
        }
        let id = cursor.remaining.remove(0);
        let response =
            self.assertion_for(&id, &cursor.client_data_hash, cursor.flags, cursor.uv, None)?;
        cursor.started = now;
        self.volatile.assertion = Some(cursor);
        Ok(response)
    }

    fn credential(&self, id: &[u8]) -> Result<&StoredCredential, CtapError> {
        self.state
            .credentials
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| CtapError::new(StatusCode::ERR_NO_CREDENTIALS, "credential vanished"))
    }

    fn assertion_for(
        &mut self,
        id: &[u8],
        client_data_hash: &[u8],
        mut f: u8,
        uv: bool,
        hmac_output: Option<Vec<u8>>,
    ) -> Result<GetAssertionResponse, CtapError> {
        let sign_count = self.next_sign_count();
        let cred = self.credential(id)?;
        let extensions = hmac_output.map(|out| {
            f |= flags::ED;
            Value::Map(vec![(
                Value::Text(ctap::extension::HMAC_SECRET.into()),
                Value::Bytes(out),
            )])
        });
        let auth_data = AuthenticatorData {
            rp_id_hash: rp_id_hash(&cred.rp_id),
            flags: f,
            sign_count,
            attested: None,
            extensions,
        }
        .to_bytes();
        let signed = [auth_data.as_slice(), client_data_hash].concat();
        let signature: DerSignature = cred.signing_key().sign(&signed);
        // User identifiable information only after user verification
        // (CTAP 2.1 section 6.2.2 step 12).
        let user = cred.discoverable.then(|| UserEntity {
            id: cred.user_id.clone(),
            name: if uv { cred.user_name.clone() } else { None },
            display_name: if uv {
                cred.user_display_name.clone()
            } else {
                None
            },
        });
        Ok(GetAssertionResponse {
            credential: CredentialDescriptor {
                id: cred.id.clone(),
            },
            auth_data,
            signature: signature.as_bytes().to_vec(),
            user,
            number_of_credentials: None,
            user_selected: None,
        })
    }
}

/// hmac-secret (CTAP 2.1 section 12.5): HMAC-SHA-256 of the platform's
/// salts under the credential's CredRandom, encrypted for the platform.
fn hmac_secret_output(
    cred: &StoredCredential,
    input: &ctap::HmacSecretInput,
    uv: bool,
    key_agreement: &ctap::KeyAgreementKey,
) -> Result<Option<Vec<u8>>, CtapError> {
    // A credential made without hmac-secret simply has no output.
    let Some((with_uv, without_uv)) = &cred.cred_random else {
        return Ok(None);
    };
    let protocol = PinProtocol::from_number(input.pin_uv_auth_protocol.unwrap_or(1))?;
    let shared = key_agreement.shared_secret(protocol, &input.key_agreement)?;
    if !protocol.verify_shared(&shared, &input.salt_enc, &input.salt_auth) {
        return Err(StatusCode::ERR_PIN_AUTH_INVALID.into());
    }
    let salts = protocol.decrypt(&shared, &input.salt_enc)?;
    if salts.len() != 32 && salts.len() != 64 {
        return Err(CtapError::new(
            StatusCode::ERR_INVALID_LENGTH,
            "hmac-secret salts must be 32 or 64 bytes",
        ));
    }
    let cred_random = if uv { with_uv } else { without_uv };
    let mut output = Vec::with_capacity(salts.len());
    for salt in salts.chunks(32) {
        let mut mac = Hmac::<Sha256>::new_from_slice(cred_random).expect("any key length");
        mac.update(salt);
        output.extend_from_slice(&mac.finalize().into_bytes());
    }
    protocol
        .encrypt(&shared, &output, &mut rand::rngs::OsRng)
        .map(Some)
}
