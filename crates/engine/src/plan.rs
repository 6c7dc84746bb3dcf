//! From what the server knows (device policy, device record, settings) to
//! what the personalisation does ([`PivPlan`]), and the initial PIN under
//! the "Device initial PIN display mode". Pure: randomness is passed in.

use keyward_card::piv::alg;
use keyward_domain::{
    Device, DevicePolicy, DeviceType, DisplayMode, FirmwareVersion, KeyAlgorithm,
    ManagementKeyMode, PinApplication, PivSlot, ValidationError,
};
use rand_core::RngCore;

use crate::mgmt_key::{ManagementKey, MgmtAlgorithm};
use crate::piv::{ChuidPlan, KeySpec, PivPlan, Secret};

/// PIV algorithm identifier of a policy's key algorithm.
pub fn piv_algorithm(a: KeyAlgorithm) -> u8 {
    match a {
        KeyAlgorithm::Rsa2048 => alg::RSA_2048,
        KeyAlgorithm::Rsa3072 => alg::RSA_3072,
        KeyAlgorithm::Rsa4096 => alg::RSA_4096,
        KeyAlgorithm::EccP256 => alg::ECC_P256,
        KeyAlgorithm::EccP384 => alg::ECC_P384,
    }
}

pub fn piv_slot(s: PivSlot) -> u8 {
    match s {
        PivSlot::Authentication => 0x9A,
        PivSlot::Signature => 0x9C,
        PivSlot::KeyManagement => 0x9D,
        PivSlot::CardAuthentication => 0x9E,
    }
}

fn at_least(fw: Option<FirmwareVersion>, major: u32, minor: u32, patch: u32) -> bool {
    fw.map(|f| (f.major as u32, f.minor as u32, f.patch as u32) >= (major, minor, patch))
        .unwrap_or(false)
}

/// The management key type a factory-new device has: AES-192 on YubiKeys
/// from 5.7, 3DES before and on other PIV devices.
pub fn factory_management_algorithm(t: DeviceType, fw: Option<FirmwareVersion>) -> MgmtAlgorithm {
    match t {
        DeviceType::YubiKey5 if at_least(fw, 5, 7, 0) => MgmtAlgorithm::Aes192,
        _ => MgmtAlgorithm::Tdes,
    }
}

/// The per-device key type Keyward installs: AES-192 where the firmware
/// allows it (YubiKey from 5.4.2, C4000), else 3DES.
pub fn new_management_algorithm(t: DeviceType, fw: Option<FirmwareVersion>) -> MgmtAlgorithm {
    match t {
        DeviceType::YubiKey5 if at_least(fw, 5, 4, 2) => MgmtAlgorithm::Aes192,
        DeviceType::C4000 => MgmtAlgorithm::Aes192,
        _ => MgmtAlgorithm::Tdes,
    }
}

/// Factory PIN and PUK of the device types Keyward issues.
pub const FACTORY_PIN: &str = "123456";
pub const FACTORY_PUK: &str = "12345678";

/// A random PUK of 8 digits (the PIV maximum).
pub fn random_puk(rng: &mut dyn RngCore) -> Secret {
    let digits: String = (0..8)
        .map(|_| char::from(b'0' + (rng.next_u32() % 10) as u8))
        .collect();
    Secret::new(digits)
}

/// Everything random or secret a plan needs, chosen by the server.
pub struct PlanSecrets<'a> {
    pub pin: Secret,
    pub puk: Secret,
    /// The master key per-device management keys are derived from.
    pub master_key: &'a [u8],
    pub chuid_guid: [u8; 16],
    pub credential_number: u32,
    /// CHUID expiration, YYYYMMDD.
    pub expiration: String,
}

pub fn piv_plan(
    policy: &DevicePolicy,
    device: &Device,
    secrets: PlanSecrets<'_>,
) -> Result<PivPlan, ValidationError> {
    policy.check_device(device)?;
    let fw = device.firmware_version;
    let factory = factory_management_algorithm(device.device_type, fw);
    let new_management_key = match policy.management_key {
        ManagementKeyMode::Keep => None,
        ManagementKeyMode::Random => Some(ManagementKey::derive(
            secrets.master_key,
            device.serial.0,
            new_management_algorithm(device.device_type, fw),
            crate::mgmt_key::KEY_GENERATION,
        )),
    };
    let p = &policy.pin_application;
    let retries = match (device.device_type, p.pin_retry_count, p.puk_retry_count) {
        (DeviceType::Piv, _, _) | (_, None, None) => None,
        (_, pin, puk) => Some((pin.unwrap_or(3), puk.unwrap_or(3))),
    };
    Ok(PivPlan {
        device_type: device.device_type,
        serial: device.serial.0,
        current_management_key: ManagementKey::factory_default(factory),
        new_management_key,
        current_pin: Secret::new(FACTORY_PIN),
        current_puk: Secret::new(FACTORY_PUK),
        new_pin: secrets.pin,
        new_puk: secrets.puk,
        retries,
        keys: policy
            .pki_applications
            .iter()
            .map(|a| KeySpec {
                slot: piv_slot(a.slot),
                algorithm: piv_algorithm(a.algorithm),
            })
            .collect(),
        firmware: fw.map(|f| (f.major as u8, f.minor as u8, f.patch as u8)),
        chuid: ChuidPlan {
            guid: secrets.chuid_guid,
            credential_number: secrets.credential_number,
            expiration: secrets.expiration,
        },
        final_pin: None,
        fido_pin_sharing: policy
            .fido_application
            .as_ref()
            .filter(|_| device.device_type == DeviceType::C4000)
            .map(|f| f.share_device_pin),
    })
}

/// The PIN the issuance sets, by "Device initial PIN display mode":
/// Displayed: entered once; Disguised: entered twice and must match;
/// Not Displayed: generated under the policy (and recoverable later with Get
/// Initial PIN, or changed by the person at the end of issuance).
#[derive(Debug)]
pub struct InitialPin {
    pub pin: Secret,
    pub generated: bool,
}

pub fn initial_pin(
    mode: DisplayMode,
    rules: &PinApplication,
    entered: Option<&str>,
    confirmation: Option<&str>,
    rng: &mut dyn RngCore,
) -> Result<InitialPin, ValidationError> {
    match mode {
        DisplayMode::NotDisplayed => {
            if entered.is_some() {
                return Err(ValidationError::new(
                    "pin_not_expected",
                    "pin",
                    "the initial PIN display mode is Not Displayed: Keyward generates the PIN",
                ));
            }
            let mut next = || rng.next_u32();
            Ok(InitialPin {
                pin: Secret::new(rules.generate(&mut next)),
                generated: true,
            })
        }
        DisplayMode::Displayed | DisplayMode::Disguised => {
            let pin = entered
                .ok_or_else(|| ValidationError::new("pin_required", "pin", "enter the PIN"))?;
            if mode == DisplayMode::Disguised {
                let confirm = confirmation.ok_or_else(|| {
                    ValidationError::new(
                        "pin_confirmation_required",
                        "confirm_pin",
                        "the PIN is disguised: enter it twice",
                    )
                })?;
                if !bool::from(subtle::ConstantTimeEq::ct_eq(
                    pin.as_bytes(),
                    confirm.as_bytes(),
                )) {
                    return Err(ValidationError::new(
                        "pin_mismatch",
                        "confirm_pin",
                        "the two PINs differ",
                    ));
                }
            }
            rules.validate_pin("pin", pin)?;
            Ok(InitialPin {
                pin: Secret::new(pin),
                generated: false,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_domain::{CharacterSet, NewDevice, Serial};

    fn rules() -> PinApplication {
        PinApplication {
            min_length: 6,
            max_length: 8,
            character_set: CharacterSet::Numeric,
            max_repeated: Some(2),
            max_sequential: Some(2),
            history_count: 0,
            pin_retry_count: Some(3),
            puk_retry_count: Some(3),
        }
    }

    #[test]
    fn display_modes() {
        let mut rng = rand_core::OsRng;
        let r = rules();
        let p = initial_pin(DisplayMode::Displayed, &r, Some("735194"), None, &mut rng).unwrap();
        assert!(!p.generated);
        let e =
            initial_pin(DisplayMode::Displayed, &r, Some("123456"), None, &mut rng).unwrap_err();
        assert_eq!(e.code, "pin_sequential_run");
        let e = initial_pin(
            DisplayMode::Disguised,
            &r,
            Some("735194"),
            Some("735195"),
            &mut rng,
        )
        .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.field.as_str()),
            ("pin_mismatch", "confirm_pin")
        );
        let e =
            initial_pin(DisplayMode::Disguised, &r, Some("735194"), None, &mut rng).unwrap_err();
        assert_eq!(e.code, "pin_confirmation_required");
        assert!(initial_pin(
            DisplayMode::Disguised,
            &r,
            Some("735194"),
            Some("735194"),
            &mut rng
        )
        .is_ok());
        for _ in 0..200 {
            let p = initial_pin(DisplayMode::NotDisplayed, &r, None, None, &mut rng).unwrap();
            assert!(p.generated);
            assert!(
                r.is_valid_pin(p.pin.expose()),
                "generated PINs follow the policy"
            );
        }
        assert_eq!(
            initial_pin(
                DisplayMode::NotDisplayed,
                &r,
                Some("735194"),
                None,
                &mut rng
            )
            .unwrap_err()
            .code,
            "pin_not_expected"
        );
    }

    #[test]
    fn management_key_types_follow_firmware() {
        let v = |s: &str| Some(FirmwareVersion::parse(s).unwrap());
        assert_eq!(
            factory_management_algorithm(DeviceType::YubiKey5, v("5.7.1")),
            MgmtAlgorithm::Aes192
        );
        assert_eq!(
            factory_management_algorithm(DeviceType::YubiKey5, v("5.4.3")),
            MgmtAlgorithm::Tdes
        );
        assert_eq!(
            new_management_algorithm(DeviceType::YubiKey5, v("5.4.3")),
            MgmtAlgorithm::Aes192
        );
        assert_eq!(
            new_management_algorithm(DeviceType::YubiKey5, v("5.4.1")),
            MgmtAlgorithm::Tdes
        );
        assert_eq!(
            new_management_algorithm(DeviceType::C4000, None),
            MgmtAlgorithm::Aes192
        );
    }

    #[test]
    fn plan_from_policy() {
        let device = NewDevice {
            device_type: DeviceType::YubiKey5,
            serial: Serial(31000001),
            firmware_version: Some(FirmwareVersion::parse("5.7.1").unwrap()),
            atr: None,
        }
        .into_device();
        let mut policy: DevicePolicy = serde_json::from_value(serde_json::json!({
            "name": "P", "device_types": ["yubikey5"], "management_key": "random",
            "pin_application": { "min_length": 6, "max_length": 8, "character_set": "numeric", "pin_retry_count": 5 },
            "pki_applications": [{ "name": "a", "slot": "9a", "algorithm": "eccp384", "certificate_authority": "Keyward Issuing CA",
              "template": { "subject_dn": "CN={login}", "subject_alt_names": [], "validity_days": 30, "key_usage": [], "extended_key_usage": [] } }]
        }))
        .unwrap();
        let secrets = || PlanSecrets {
            pin: Secret::new("735194"),
            puk: Secret::new("90817263"),
            master_key: b"master",
            chuid_guid: [0; 16],
            credential_number: 1,
            expiration: "20351231".into(),
        };
        let plan = piv_plan(&policy, &device, secrets()).unwrap();
        assert_eq!(plan.retries, Some((5, 3)));
        assert_eq!(
            plan.keys,
            vec![KeySpec {
                slot: 0x9A,
                algorithm: alg::ECC_P384
            }]
        );
        assert_eq!(plan.current_management_key.algorithm, MgmtAlgorithm::Aes192);
        assert_eq!(
            plan.new_management_key.as_ref().unwrap(),
            &ManagementKey::derive(b"master", 31000001, MgmtAlgorithm::Aes192, 1)
        );
        // A policy that does not fit the device is refused before anything is planned.
        policy.device_types = vec![DeviceType::C4000];
        assert!(piv_plan(&policy, &device, secrets()).is_err());
    }
}
