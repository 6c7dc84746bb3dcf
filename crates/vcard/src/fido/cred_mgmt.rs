//! authenticatorCredentialManagement (CTAP 2.1 section 6.8; command 0x0A,
//! and 0x41 for the FIDO_2_1_PRE preview of YubiKeys before 5.7).

use keyward_card::ctap::{
    cred_mgmt, permission, CredentialDescriptor, CredentialManagementRequest,
    CredentialManagementResponse, CtapError, RpEntity, StatusCode, UserEntity,
};
use sha2::{Digest, Sha256};

use super::{EnumerationCursor, FidoAuthenticator, StoredCredential, CURSOR_TIMEOUT};

impl FidoAuthenticator {
    pub(super) fn credential_management(
        &mut self,
        req: CredentialManagementRequest,
    ) -> Result<CredentialManagementResponse, CtapError> {
        let sub = req.sub_command;
        let is_next = matches!(
            sub,
            cred_mgmt::ENUMERATE_RPS_GET_NEXT_RP
                | cred_mgmt::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL
        );
        if !is_next {
            self.volatile.enumeration = None;
            let known = matches!(
                sub,
                cred_mgmt::GET_CREDS_METADATA
                    | cred_mgmt::ENUMERATE_RPS_BEGIN
                    | cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN
                    | cred_mgmt::DELETE_CREDENTIAL
            ) || (sub == cred_mgmt::UPDATE_USER_INFORMATION && self.config.ctap21());
            if !known {
                return Err(CtapError::new(
                    StatusCode::ERR_INVALID_SUBCOMMAND,
                    "credentialManagement subcommand",
                ));
            }
            let param = req.pin_uv_auth_param.as_deref().ok_or_else(|| {
                CtapError::new(StatusCode::ERR_PUAT_REQUIRED, "pinUvAuthParam required")
            })?;
            self.verify_token(
                req.pin_uv_auth_protocol,
                param,
                &req.auth_message(),
                permission::CREDENTIAL_MANAGEMENT,
                None,
            )?;
        }
        let now = self.clock.now();
        let params = req.params.clone().unwrap_or_default();
        match sub {
            cred_mgmt::GET_CREDS_METADATA => {
                let count = self.discoverable().count();
                Ok(CredentialManagementResponse {
                    existing_resident_credentials_count: Some(count as u64),
                    max_possible_remaining_resident_credentials_count: Some(
                        self.config
                            .max_discoverable_credentials
                            .saturating_sub(count) as u64,
                    ),
                    ..Default::default()
                })
            }
            cred_mgmt::ENUMERATE_RPS_BEGIN => {
                let mut rps: Vec<String> = self.discoverable().map(|c| c.rp_id.clone()).collect();
                rps.sort();
                rps.dedup();
                if rps.is_empty() {
                    return Err(StatusCode::ERR_NO_CREDENTIALS.into());
                }
                let total = rps.len() as u64;
                let first = rps.remove(0);
                self.volatile.enumeration = Some(EnumerationCursor::Rps {
                    remaining: rps,
                    started: now,
                });
                let mut r = self.rp_response(&first);
                r.total_rps = Some(total);
                Ok(r)
            }
            cred_mgmt::ENUMERATE_RPS_GET_NEXT_RP => match self.volatile.enumeration.take() {
                Some(EnumerationCursor::Rps {
                    mut remaining,
                    started,
                }) if !remaining.is_empty() && now.duration_since(started) <= CURSOR_TIMEOUT => {
                    let rp = remaining.remove(0);
                    self.volatile.enumeration = Some(EnumerationCursor::Rps {
                        remaining,
                        started: now,
                    });
                    Ok(self.rp_response(&rp))
                }
                _ => Err(CtapError::new(
                    StatusCode::ERR_NOT_ALLOWED,
                    "no RP enumeration in progress",
                )),
            },
            cred_mgmt::ENUMERATE_CREDENTIALS_BEGIN => {
                let hash = params.rp_id_hash.ok_or_else(|| {
                    CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "rpIDHash missing")
                })?;
                let mut creds: Vec<&StoredCredential> = self
                    .discoverable()
                    .filter(|c| Sha256::digest(c.rp_id.as_bytes()).as_slice() == hash)
                    .collect();
                if creds.is_empty() {
                    return Err(StatusCode::ERR_NO_CREDENTIALS.into());
                }
                creds.sort_by_key(|c| std::cmp::Reverse(c.created));
                let mut ids: Vec<Vec<u8>> = creds.iter().map(|c| c.id.clone()).collect();
                let total = ids.len() as u64;
                let first = ids.remove(0);
                self.volatile.enumeration = Some(EnumerationCursor::Credentials {
                    remaining: ids,
                    started: now,
                });
                let mut r = self.credential_response(&first)?;
                r.total_credentials = Some(total);
                Ok(r)
            }
            cred_mgmt::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL => {
                match self.volatile.enumeration.take() {
                    Some(EnumerationCursor::Credentials {
                        mut remaining,
                        started,
                    }) if !remaining.is_empty()
                        && now.duration_since(started) <= CURSOR_TIMEOUT =>
                    {
                        let id = remaining.remove(0);
                        self.volatile.enumeration = Some(EnumerationCursor::Credentials {
                            remaining,
                            started: now,
                        });
                        self.credential_response(&id)
                    }
                    _ => Err(CtapError::new(
                        StatusCode::ERR_NOT_ALLOWED,
                        "no credential enumeration in progress",
                    )),
                }
            }
            cred_mgmt::DELETE_CREDENTIAL => {
                let id = params
                    .credential_id
                    .ok_or_else(|| {
                        CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "credentialID missing")
                    })?
                    .id;
                let before = self.state.credentials.len();
                self.state
                    .credentials
                    .retain(|c| !(c.discoverable && c.id == id));
                if self.state.credentials.len() == before {
                    return Err(StatusCode::ERR_NO_CREDENTIALS.into());
                }
                Ok(CredentialManagementResponse::default())
            }
            cred_mgmt::UPDATE_USER_INFORMATION => {
                let id = params
                    .credential_id
                    .ok_or_else(|| {
                        CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "credentialID missing")
                    })?
                    .id;
                let user = params.user.ok_or_else(|| {
                    CtapError::new(StatusCode::ERR_MISSING_PARAMETER, "user missing")
                })?;
                let cred = self
                    .state
                    .credentials
                    .iter_mut()
                    .find(|c| c.discoverable && c.id == id)
                    .ok_or_else(|| CtapError::from(StatusCode::ERR_NO_CREDENTIALS))?;
                if cred.user_id != user.id {
                    return Err(CtapError::new(
                        StatusCode::ERR_INVALID_PARAMETER,
                        "user.id differs",
                    ));
                }
                cred.user_name = user.name;
                cred.user_display_name = user.display_name;
                Ok(CredentialManagementResponse::default())
            }
            _ => Err(StatusCode::ERR_INVALID_SUBCOMMAND.into()),
        }
    }

    fn discoverable(&self) -> impl Iterator<Item = &StoredCredential> {
        self.state.credentials.iter().filter(|c| c.discoverable)
    }

    fn rp_response(&self, rp_id: &str) -> CredentialManagementResponse {
        let name = self
            .discoverable()
            .find(|c| c.rp_id == rp_id)
            .and_then(|c| c.rp_name.clone());
        CredentialManagementResponse {
            rp: Some(RpEntity {
                id: rp_id.to_string(),
                name,
            }),
            rp_id_hash: Some(Sha256::digest(rp_id.as_bytes()).to_vec()),
            ..Default::default()
        }
    }

    fn credential_response(&self, id: &[u8]) -> Result<CredentialManagementResponse, CtapError> {
        let c = self.discoverable().find(|c| c.id == id).ok_or_else(|| {
            CtapError::new(
                StatusCode::ERR_NOT_ALLOWED,
                "credential deleted during enumeration",
            )
        })?;
        Ok(CredentialManagementResponse {
            user: Some(UserEntity {
                id: c.user_id.clone(),
                name: c.user_name.clone(),
                display_name: c.user_display_name.clone(),
            }),
            credential_id: Some(CredentialDescriptor { id: c.id.clone() }),
            public_key: Some(c.public_key()),
            cred_protect: Some(c.cred_protect),
            ..Default::default()
        })
    }
}
