//! What the server knows of a device's secrets after each batch: which PIN,
//! PUK and management key the device has now. A retry starts from this, so a
//! failed attempt leaves a device someone can retry.
//!
//! A command whose response came back with an expected status word took
//! effect; one after it did not run. The one exception is the command that
//! was in flight when the device went away (a transport error): it may or
//! may not have taken effect, so both values are kept, the likelier first
//! (not applied: a card pulled out mid-command rarely completes it), and a
//! retry that fails on that secret tries the other one next.

use keyward_domain::DeviceType;
use serde::{Deserialize, Serialize};

use crate::batch::{Batch, Failure, Response};
use crate::failure::Step;
use crate::mgmt_key::ManagementKey;
use crate::piv::{PivPlan, Secret, YUBIKEY_DEFAULT_PIN, YUBIKEY_DEFAULT_PUK};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known<T> {
    pub value: T,
    /// The other possibility when the last command's effect is unknown.
    pub alternative: Option<T>,
}

impl<T: Clone> Known<T> {
    pub fn sure(value: T) -> Known<T> {
        Known {
            value,
            alternative: None,
        }
    }

    /// The command setting `next` ran to completion (`Some(true)`), did not
    /// run (`Some(false)`), or its effect is unknown (`None`).
    fn update(&mut self, next: T, ran: Option<bool>) {
        match ran {
            Some(true) => *self = Known::sure(next),
            Some(false) => {}
            None => self.alternative = Some(next),
        }
    }

    /// Swaps the value and its alternative (the likelier one proved wrong).
    pub fn swap(&mut self) -> bool {
        match self.alternative.take() {
            Some(alt) => {
                self.alternative = Some(std::mem::replace(&mut self.value, alt));
                true
            }
            None => false,
        }
    }
}

/// The device's secrets as far as the server knows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSecrets {
    pub pin: Known<Secret>,
    pub puk: Known<Secret>,
    pub management_key: Known<ManagementKey>,
}

impl DeviceSecrets {
    /// Before anything ran: what the plan says the device has.
    pub fn from_plan(plan: &PivPlan) -> DeviceSecrets {
        DeviceSecrets {
            pin: Known::sure(plan.current_pin.clone()),
            puk: Known::sure(plan.current_puk.clone()),
            management_key: Known::sure(plan.current_management_key.clone()),
        }
    }

    /// Learns from one batch of `plan`'s personalisation and its responses;
    /// `transport_error`: the client lost the device during the batch.
    pub fn after_batch(
        &mut self,
        plan: &PivPlan,
        batch: &Batch,
        responses: &[Response],
        transport_error: bool,
    ) {
        for (i, cmd) in batch.commands.iter().enumerate() {
            let ran = match responses.get(i) {
                Some(r) if cmd.expect.contains(&r.sw) => Some(true),
                Some(_) => Some(false),
                None if i == responses.len() && transport_error => None,
                None => Some(false),
            };
            match cmd.step {
                Step::SetRetryCounts if plan.device_type == DeviceType::YubiKey5 => {
                    // SET PIN RETRIES resets PIN and PUK to their defaults.
                    self.pin.update(Secret::new(YUBIKEY_DEFAULT_PIN), ran);
                    self.puk.update(Secret::new(YUBIKEY_DEFAULT_PUK), ran);
                }
                Step::ChangePuk => self.puk.update(plan.new_puk.clone(), ran),
                Step::ChangePin => self.pin.update(plan.new_pin.clone(), ran),
                Step::SetNewPin => {
                    if let Some(p) = &plan.final_pin {
                        self.pin.update(p.clone(), ran)
                    }
                }
                Step::ReplaceManagementKey => {
                    if let Some(k) = &plan.new_management_key {
                        self.management_key.update(k.clone(), ran)
                    }
                }
                _ => {}
            }
            if ran != Some(true) {
                break;
            }
        }
    }

    /// After a failed attempt: if it failed on a secret that has an
    /// alternative, the alternative is tried next.
    pub fn learn_from_failure(&mut self, failure: &Failure) {
        match (failure.step, failure.sw) {
            (Step::AuthenticateManagementKey, Some(0x6982))
            | (Step::AuthenticateManagementKey, Some(0x6A80)) => {
                self.management_key.swap();
            }
            (Step::VerifyPin, Some(sw)) if sw & 0xFFF0 == 0x63C0 => {
                self.pin.swap();
            }
            (Step::ChangePuk, Some(sw)) if sw & 0xFFF0 == 0x63C0 => {
                self.puk.swap();
            }
            (Step::ChangePin, Some(sw)) | (Step::SetNewPin, Some(sw)) if sw & 0xFFF0 == 0x63C0 => {
                self.pin.swap();
            }
            _ => {}
        }
    }

    /// The plan for another attempt: same device, policy, PIN and keys to
    /// generate, starting from the secrets the device has now.
    pub fn retry_plan(&self, plan: &PivPlan) -> PivPlan {
        let mut p = plan.clone();
        p.current_pin = self.pin.value.clone();
        p.current_puk = self.puk.value.clone();
        p.current_management_key = self.management_key.value.clone();
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Batch;
    use crate::failure::FailureCode;
    use crate::mgmt_key::MgmtAlgorithm;
    use crate::piv::{ChuidPlan, KeySpec};

    fn plan() -> PivPlan {
        PivPlan {
            device_type: DeviceType::YubiKey5,
            serial: 1,
            current_management_key: ManagementKey::factory_default(MgmtAlgorithm::Aes192),
            new_management_key: Some(ManagementKey::derive(b"m", 1, MgmtAlgorithm::Aes192, 1)),
            current_pin: Secret::new("123456"),
            current_puk: Secret::new("12345678"),
            new_pin: Secret::new("735194"),
            new_puk: Secret::new("90817263"),
            retries: Some((3, 3)),
            keys: vec![KeySpec {
                slot: 0x9A,
                algorithm: 0x11,
            }],
            chuid: ChuidPlan {
                guid: [0; 16],
                credential_number: 1,
                expiration: "20351231".into(),
            },
            firmware: None,
            final_pin: None,
            fido_pin_sharing: None,
        }
    }

    fn batch(steps: &[Step]) -> Batch {
        let mut b = Batch::default();
        for s in steps {
            b.push(*s, vec![0], &[0x9000], false);
        }
        b
    }

    fn ok(n: usize) -> Vec<Response> {
        (0..n)
            .map(|_| Response {
                data: vec![],
                sw: 0x9000,
            })
            .collect()
    }

    #[test]
    fn completed_commands_change_what_is_known() {
        let p = plan();
        let mut k = DeviceSecrets::from_plan(&p);
        let b = batch(&[
            Step::AuthenticateManagementKey,
            Step::VerifyPin,
            Step::SetRetryCounts,
            Step::ChangePuk,
            Step::ChangePin,
            Step::GenerateKey(0x9A),
        ]);
        // The card went away while CHANGE PIN was in flight.
        k.after_batch(&p, &b, &ok(4), true);
        assert_eq!(k.puk, Known::sure(p.new_puk.clone()));
        assert_eq!(
            k.pin.value.expose(),
            "123456",
            "the default after SET PIN RETRIES"
        );
        assert_eq!(k.pin.alternative.as_ref().unwrap().expose(), "735194");
        let r = k.retry_plan(&p);
        assert_eq!(r.current_puk, p.new_puk);
        assert_eq!(r.current_management_key, p.current_management_key);
        // The retry fails at VERIFY: the other PIN is tried next.
        let mut f = Failure::new(FailureCode::UnexpectedStatus, Step::VerifyPin, "");
        f.sw = Some(0x63C2);
        k.learn_from_failure(&f);
        assert_eq!(k.pin.value.expose(), "735194");
    }

    #[test]
    fn a_refused_command_and_those_after_it_change_nothing() {
        let p = plan();
        let mut k = DeviceSecrets::from_plan(&p);
        let b = batch(&[Step::VerifyPin, Step::ChangePuk, Step::ChangePin]);
        let mut rs = ok(1);
        rs.push(Response {
            data: vec![],
            sw: 0x63C1,
        });
        k.after_batch(&p, &b, &rs, false);
        assert_eq!(k, DeviceSecrets::from_plan(&p));
    }

    #[test]
    fn the_new_management_key_once_replaced() {
        let p = plan();
        let mut k = DeviceSecrets::from_plan(&p);
        let b = batch(&[Step::WriteChuid, Step::ReplaceManagementKey, Step::ReadBack]);
        k.after_batch(&p, &b, &ok(2), true);
        assert_eq!(
            k.management_key,
            Known::sure(p.new_management_key.clone().unwrap())
        );
    }
}
