//! `keyward unlock --offline`: the person's side of an offline unlock, with
//! no connection to the server. The tool holds the device in an exclusive
//! PC/SC connection (nothing else may use the challenge meanwhile), and:
//!
//! * a C4000: reads a challenge from the device and prints it; the help desk
//!   enters it in the portal ("Offline Unlock") or `keyward admin device
//!   unlock-response SERIAL --challenge C` and reads the response back; the
//!   tool sends the response with the new PIN. A removed device loses its
//!   challenge: run the tool again for a new one.
//! * a YubiKey (no administrative unblock): no challenge; the help desk
//!   reads the device's PUK out, the tool resets the PIN with it.
//!
//! The new PIN comes from `--answers` (`new_pin`) or the terminal and must
//! fit the device's own limits (the policy's rules are the help desk's to
//! tell; the server checks them at the device's next online session).
//! The response (or PUK) is read from standard input, one line.
//!
//! Exit codes: 0 unlocked; 1 other errors; 3 the device has no offline
//! unlock (generic PIV); 4 the device refused (a wrong response or PUK, no
//! challenge: run again).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use keyward_card::piv;
use keyward_domain::DeviceType;
use keyward_transport::apdu::transmit_one;
use keyward_transport::discover::{discover, DiscoveryOptions};
use keyward_transport::pcsc::Pcsc;
use serde_json::json;

use crate::relaying::{read_answers, EXIT_FAILED, EXIT_REFUSED};
use crate::unlock::UnlockArgs;

pub fn run(args: &UnlockArgs) -> anyhow::Result<ExitCode> {
    let answers = read_answers(&args.answers)?;
    let found = discover(&DiscoveryOptions {
        hidraw: false,
        ..Default::default()
    });
    let device = found
        .devices
        .iter()
        .find(|d| {
            d.reader.is_some()
                && d.identity.serial.map(|s| s.to_string()).as_deref() == Some(args.serial.as_str())
                && args
                    .reader
                    .as_ref()
                    .is_none_or(|r| d.reader.as_ref() == Some(r))
        })
        .with_context(|| format!("device {} is not connected", args.serial))?;
    let reader = device.reader.clone().unwrap_or_default();
    let device_type = device.identity.device_type;
    let report = |state: &str, error: Option<(&str, String)>| {
        if args.json {
            let error = error.map(|(code, message)| json!({ "code": code, "message": message }));
            println!(
                "{}",
                json!({ "serial": args.serial, "state": state, "error": error })
            );
        } else if let Some((_, message)) = error {
            eprintln!("{message}");
        } else {
            eprintln!("unlocked: device {} has its new PIN", args.serial);
        }
    };
    let c4000 = match device_type {
        Some(DeviceType::C4000) => keyward_engine::offline_unlock::for_type(DeviceType::C4000),
        Some(DeviceType::YubiKey5) => None,
        _ => {
            report(
                "refused",
                Some((
                    "offline_unlock_unsupported",
                    "this device has no offline unlock: unlock it online (keyward unlock)".into(),
                )),
            );
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    let caps = device_type.map(DeviceType::capabilities);
    let new_pin = new_pin(&answers, caps)?;

    let ctx = Pcsc::establish().context("PC/SC")?;
    let mut card = ctx
        .connect_exclusive(&reader)
        .with_context(|| format!("an exclusive connection to \"{reader}\""))?;
    let select = transmit_one(&mut card, &piv::select_piv().to_bytes())?;
    if select.sw != 0x9000 {
        bail!("the device refused SELECT PIV ({:04X})", select.sw);
    }
    let command = match c4000 {
        Some(c4000) => {
            let r = transmit_one(&mut card, &c4000.challenge_command())?;
            if r.sw != 0x9000 {
                bail!("the device gave no challenge ({:04X})", r.sw);
            }
            let challenge = hex::encode_upper(&r.data);
            if args.json {
                println!(
                    "{}",
                    json!({ "serial": args.serial, "challenge": challenge })
                );
            } else {
                println!("challenge: {challenge}");
                eprintln!("read the challenge to the help desk and enter the response they give:");
            }
            std::io::stdout().flush()?;
            let response = read_line("response")?;
            let response: String = response.chars().filter(|c| !c.is_whitespace()).collect();
            let response = hex::decode(&response).context("the response is hexadecimal digits")?;
            c4000
                .unblock_command(&response, &new_pin)
                .context("the new PIN is too long")?
        }
        None => {
            if !args.json {
                eprintln!("a YubiKey has no challenge: enter the PUK the help desk reads to you:");
            }
            let puk = read_line("PUK")?;
            piv::reset_retry_counter(puk.trim().as_bytes(), new_pin.as_bytes())
                .context("a PUK or PIN of at most 8 characters")?
                .to_bytes()
        }
    };
    let r = transmit_one(&mut card, &command)?;
    let failed = |code: &str, message: String| {
        report("failed", Some((code, message)));
        Ok(ExitCode::from(EXIT_FAILED))
    };
    match r.sw {
        0x9000 => {
            report("unlocked", None);
            Ok(ExitCode::SUCCESS)
        }
        0x6982 => failed(
            "wrong_response",
            "the device refused the response (for another device or another challenge): run the tool again for a new challenge".into(),
        ),
        0x6985 => failed(
            "no_challenge",
            "the device holds no challenge (it was removed, or the response was used): run the tool again".into(),
        ),
        0x6983 => failed(
            "puk_blocked",
            "the device's PUK is blocked: the device must be recycled and re-issued".into(),
        ),
        sw if sw & 0xFFF0 == 0x63C0 => failed(
            "wrong_puk",
            format!("the device refused the PUK: {} tries left", sw & 0xF),
        ),
        sw => failed("unexpected_status", format!("the device answered {sw:04X}")),
    }
}

/// The new PIN from the answers or the terminal, within the device's limits.
fn new_pin(
    answers: &serde_json::Map<String, serde_json::Value>,
    caps: Option<&keyward_domain::DeviceCapabilities>,
) -> anyhow::Result<String> {
    let pin = match answers.get("new_pin") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None if std::io::stdin().is_terminal() => {
            let a = rpassword::prompt_password("new PIN: ")?;
            if rpassword::prompt_password("new PIN again: ")? != a {
                bail!("the two PINs differ");
            }
            a
        }
        None => bail!("no new PIN: add `new_pin` to --answers (or run on a terminal)"),
    };
    if let Some(c) = caps {
        let n = pin.chars().count();
        if n < usize::from(c.pin_min_length) || n > usize::from(c.pin_max_length) {
            bail!(
                "a {} PIN has {} to {} characters",
                c.device_type.label(),
                c.pin_min_length,
                c.pin_max_length
            );
        }
    }
    if !pin.is_ascii() {
        bail!("a PIN is ASCII characters");
    }
    Ok(pin)
}

/// One line from standard input (without echo on a terminal: a PUK is a
/// secret).
fn read_line(what: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(format!("{what}: "))?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim().is_empty() {
        bail!("no {what} on standard input");
    }
    Ok(line.trim().to_string())
}
