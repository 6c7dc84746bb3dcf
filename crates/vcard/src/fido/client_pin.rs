//! authenticatorClientPIN (0x06), CTAP 2.1 section 6.5, and the
//! pinUvAuthToken checks the other commands use.

use keyward_card::ctap::{
    self, client_pin, permission, ClientPinRequest, ClientPinResponse, CtapError, PinProtocol,
    SharedSecret, StatusCode,
};
use rand::RngCore;

use super::{FidoAuthenticator, FidoPinStore, PinToken, PinVerification, TOKEN_LIFETIME};

/// Consecutive mismatches after which the PIN needs a power cycle.
const MISMATCHES_BEFORE_POWER_CYCLE: u8 = 3;

impl FidoAuthenticator {
    pub(super) fn client_pin(
        &mut self,
        req: ClientPinRequest,
        pins: &mut dyn FidoPinStore,
    ) -> Result<ClientPinResponse, CtapError> {
        let ctap21 = self.config.ctap21();
        match req.sub_command {
            client_pin::GET_PIN_RETRIES => Ok(ClientPinResponse {
                pin_retries: Some(pins.pin_retries()),
                power_cycle_state: ctap21.then_some(
                    self.volatile.consecutive_mismatches >= MISMATCHES_BEFORE_POWER_CYCLE,
                ),
                ..Default::default()
            }),
            client_pin::GET_KEY_AGREEMENT => {
                Self::protocol(&req)?;
                Ok(ClientPinResponse {
                    key_agreement: Some(self.volatile.key_agreement.public_cose()),
                    ..Default::default()
                })
            }
            client_pin::SET_PIN => self
                .set_pin(req, pins)
                .map(|()| ClientPinResponse::default()),
            client_pin::CHANGE_PIN => self
                .change_pin(req, pins)
                .map(|()| ClientPinResponse::default()),
            client_pin::GET_PIN_TOKEN => {
                if req.permissions.is_some() || req.rp_id.is_some() {
                    return Err(CtapError::new(
                        StatusCode::ERR_INVALID_PARAMETER,
                        "getPinToken takes no permissions",
                    ));
                }
                // CTAP 2.1 getPinToken tokens may make credentials and get
                // assertions only; the 2.1 preview (YubiKey before 5.7) also
                // lets them manage credentials (command 0x41).
                let permissions = if ctap21 {
                    permission::MAKE_CREDENTIAL | permission::GET_ASSERTION
                } else {
                    permission::MAKE_CREDENTIAL
                        | permission::GET_ASSERTION
                        | permission::CREDENTIAL_MANAGEMENT
                };
                self.issue_token(req, pins, permissions, None)
            }
            client_pin::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS if ctap21 => {
                let permissions = req.permissions.ok_or_else(|| {
                    CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "permissions missing")
                })?;
                if permissions == 0 {
                    return Err(CtapError::new(
                        StatusCode::ERR_INVALID_PARAMETER,
                        "permissions are zero",
                    ));
                }
                let supported = permission::MAKE_CREDENTIAL
                    | permission::GET_ASSERTION
                    | permission::CREDENTIAL_MANAGEMENT;
                if permissions & !supported != 0 {
                    return Err(CtapError::new(
                        StatusCode::ERR_UNAUTHORIZED_PERMISSION,
                        "permission not supported",
                    ));
                }
                if permissions & (permission::MAKE_CREDENTIAL | permission::GET_ASSERTION) != 0
                    && req.rp_id.is_none()
                {
                    // CTAP 2.1 makes rpId mandatory with mc/ga permissions.
                    return Err(CtapError::new(
                        StatusCode::ERR_MISSING_PARAMETER,
                        "rpId missing",
                    ));
                }
                let rp_id = req.rp_id.clone();
                self.issue_token(req, pins, permissions, rp_id)
            }
            _ => Err(CtapError::new(
                StatusCode::ERR_INVALID_SUBCOMMAND,
                "clientPIN subcommand not supported",
            )),
        }
    }

    fn protocol(req: &ClientPinRequest) -> Result<PinProtocol, CtapError> {
        let n = req.pin_uv_auth_protocol.ok_or_else(|| {
            CtapError::new(
                StatusCode::ERR_MISSING_PARAMETER,
                "pinUvAuthProtocol missing",
            )
        })?;
        PinProtocol::from_number(n)
    }

    fn shared_secret(
        &self,
        protocol: PinProtocol,
        req: &ClientPinRequest,
    ) -> Result<SharedSecret, CtapError> {
        let peer = req.key_agreement.as_ref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "keyAgreement missing")
        })?;
        self.volatile.key_agreement.shared_secret(protocol, peer)
    }

    /// Decrypts newPinEnc and applies CTAP's PIN policy.
    fn decrypt_new_pin(
        &self,
        protocol: PinProtocol,
        shared: &SharedSecret,
        new_pin_enc: &[u8],
        pins: &dyn FidoPinStore,
    ) -> Result<Vec<u8>, CtapError> {
        let padded = protocol.decrypt(shared, new_pin_enc)?;
        if padded.len() < 64 {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_POLICY_VIOLATION,
                "padded PIN shorter than 64 bytes",
            ));
        }
        let end = padded.iter().position(|&b| b == 0).unwrap_or(padded.len());
        let pin = &padded[..end];
        if pin.len() > 63 {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_POLICY_VIOLATION,
                "PIN longer than 63 bytes",
            ));
        }
        let code_points = std::str::from_utf8(pin)
            .map_err(|_| CtapError::new(StatusCode::ERR_PIN_POLICY_VIOLATION, "PIN is not UTF-8"))?
            .chars()
            .count();
        if code_points < self.min_pin_length(pins) as usize {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_POLICY_VIOLATION,
                "PIN shorter than minPINLength",
            ));
        }
        Ok(pin.to_vec())
    }

    /// setPIN (0x03): only while no PIN is set.
    fn set_pin(
        &mut self,
        req: ClientPinRequest,
        pins: &mut dyn FidoPinStore,
    ) -> Result<(), CtapError> {
        let protocol = Self::protocol(&req)?;
        let new_pin_enc = req.new_pin_enc.as_deref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "newPinEnc missing")
        })?;
        let param = req.pin_uv_auth_param.as_deref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "pinUvAuthParam missing")
        })?;
        let shared = self.shared_secret(protocol, &req)?;
        if pins.is_pin_set() {
            return Err(CtapError::new(
                StatusCode::ERR_NOT_ALLOWED,
                "a PIN is already set",
            ));
        }
        if !protocol.verify_shared(&shared, new_pin_enc, param) {
            return Err(StatusCode::ERR_PIN_AUTH_INVALID.into());
        }
        let pin = self.decrypt_new_pin(protocol, &shared, new_pin_enc, pins)?;
        pins.set_pin(&pin).map_err(CtapError::from)
    }

    /// changePIN (0x04).
    fn change_pin(
        &mut self,
        req: ClientPinRequest,
        pins: &mut dyn FidoPinStore,
    ) -> Result<(), CtapError> {
        let protocol = Self::protocol(&req)?;
        let new_pin_enc = req.new_pin_enc.as_deref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "newPinEnc missing")
        })?;
        let pin_hash_enc = req.pin_hash_enc.as_deref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "pinHashEnc missing")
        })?;
        let param = req.pin_uv_auth_param.as_deref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "pinUvAuthParam missing")
        })?;
        let shared = self.shared_secret(protocol, &req)?;
        if !pins.is_pin_set() {
            return Err(StatusCode::ERR_PIN_NOT_SET.into());
        }
        if pins.pin_retries() == 0 {
            return Err(StatusCode::ERR_PIN_BLOCKED.into());
        }
        let message = [new_pin_enc, pin_hash_enc].concat();
        if !protocol.verify_shared(&shared, &message, param) {
            return Err(StatusCode::ERR_PIN_AUTH_INVALID.into());
        }
        self.check_pin_hash(protocol, &shared, pin_hash_enc, pins)?;
        let pin = self.decrypt_new_pin(protocol, &shared, new_pin_enc, pins)?;
        pins.set_pin(&pin)?;
        self.volatile.token = None;
        Ok(())
    }

    /// Decrypts pinHashEnc and compares it, applying the retry and
    /// power-cycle rules (CTAP 2.1 section 6.5.5.7.1 steps 4-6).
    fn check_pin_hash(
        &mut self,
        protocol: PinProtocol,
        shared: &SharedSecret,
        pin_hash_enc: &[u8],
        pins: &mut dyn FidoPinStore,
    ) -> Result<(), CtapError> {
        if self.volatile.consecutive_mismatches >= MISMATCHES_BEFORE_POWER_CYCLE {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_AUTH_BLOCKED,
                "power cycle needed",
            ));
        }
        let hash = protocol.decrypt(shared, pin_hash_enc)?;
        let hash: [u8; 16] = hash
            .get(..16)
            .filter(|_| hash.len() == 16)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| {
                CtapError::new(
                    StatusCode::ERR_INVALID_PARAMETER,
                    "pinHashEnc is not one block",
                )
            })?;
        match pins.verify_pin_hash(&hash) {
            PinVerification::Match => {
                self.volatile.consecutive_mismatches = 0;
                Ok(())
            }
            PinVerification::Blocked => Err(StatusCode::ERR_PIN_BLOCKED.into()),
            PinVerification::Mismatch { retries_left } => {
                // A new key agreement key after a mismatch, as the spec asks.
                self.volatile.key_agreement =
                    ctap::KeyAgreementKey::generate(&mut rand::rngs::OsRng);
                self.volatile.consecutive_mismatches += 1;
                if retries_left == 0 {
                    Err(StatusCode::ERR_PIN_BLOCKED.into())
                } else if self.volatile.consecutive_mismatches >= MISMATCHES_BEFORE_POWER_CYCLE {
                    Err(StatusCode::ERR_PIN_AUTH_BLOCKED.into())
                } else {
                    Err(StatusCode::ERR_PIN_INVALID.into())
                }
            }
        }
    }

    /// getPinToken (0x05) and getPinUvAuthTokenUsingPinWithPermissions (0x09).
    fn issue_token(
        &mut self,
        req: ClientPinRequest,
        pins: &mut dyn FidoPinStore,
        permissions: u8,
        rp_id: Option<String>,
    ) -> Result<ClientPinResponse, CtapError> {
        let protocol = Self::protocol(&req)?;
        let pin_hash_enc = req.pin_hash_enc.as_deref().ok_or_else(|| {
            CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "pinHashEnc missing")
        })?;
        let shared = self.shared_secret(protocol, &req)?;
        if !pins.is_pin_set() {
            return Err(StatusCode::ERR_PIN_NOT_SET.into());
        }
        if pins.pin_retries() == 0 {
            return Err(StatusCode::ERR_PIN_BLOCKED.into());
        }
        self.check_pin_hash(protocol, &shared, pin_hash_enc, pins)?;
        let mut token = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut token);
        let encrypted = protocol.encrypt(&shared, &token, &mut rand::rngs::OsRng)?;
        self.volatile.token = Some(PinToken {
            protocol,
            token,
            permissions,
            rp_id,
            issued: self.clock.now(),
        });
        Ok(ClientPinResponse {
            pin_uv_auth_token: Some(encrypted),
            ..Default::default()
        })
    }

    /// Checks a pinUvAuthParam made with the current pinUvAuthToken over
    /// `message`, and that the token carries `needed` and may act for
    /// `rp_id`. An unbound token becomes bound to `rp_id` (CTAP 2.1).
    pub(super) fn verify_token(
        &mut self,
        protocol: Option<i64>,
        param: &[u8],
        message: &[u8],
        needed: u8,
        rp_id: Option<&str>,
    ) -> Result<(), CtapError> {
        let protocol = PinProtocol::from_number(protocol.ok_or_else(|| {
            CtapError::new(
                StatusCode::ERR_MISSING_PARAMETER,
                "pinUvAuthProtocol missing",
            )
        })?)?;
        let now = self.clock.now();
        let Some(token) = self.volatile.token.as_mut() else {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_AUTH_INVALID,
                "no pinUvAuthToken",
            ));
        };
        if token.protocol != protocol
            || now.duration_since(token.issued) > TOKEN_LIFETIME
            || !protocol.verify(&token.token, message, param)
        {
            return Err(StatusCode::ERR_PIN_AUTH_INVALID.into());
        }
        if token.permissions & needed != needed {
            return Err(CtapError::new(
                StatusCode::ERR_PIN_AUTH_INVALID,
                "pinUvAuthToken lacks the permission",
            ));
        }
        if let Some(rp) = rp_id {
            match &token.rp_id {
                Some(bound) if bound != rp => {
                    return Err(CtapError::new(
                        StatusCode::ERR_PIN_AUTH_INVALID,
                        "pinUvAuthToken bound to another RP",
                    ))
                }
                Some(_) => {}
                None if self.config.ctap21() => token.rp_id = Some(rp.to_string()),
                None => {}
            }
        }
        Ok(())
    }

    /// After makeCredential or getAssertion with a CTAP 2.1 token, its mc
    /// and ga permissions are used up (CTAP 2.1 section 6.1.2 step 18).
    pub(super) fn consume_token_permissions(&mut self) {
        if self.config.ctap21() {
            if let Some(t) = self.volatile.token.as_mut() {
                t.permissions &= !(permission::MAKE_CREDENTIAL | permission::GET_ASSERTION);
            }
        }
    }
}
