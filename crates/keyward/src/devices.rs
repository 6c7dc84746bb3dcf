//! `keyward devices`: the devices connected to this computer (PC/SC
//! readers with a card, FIDO HID devices, the virtual HID sockets given
//! with `--hid-socket`), identified, and with `--server` their inventory
//! state. The work is in keyward-transport (discovery and identification).

use crate::api::ApiClient;
use anyhow::anyhow;
use clap::Args;
use keyward_transport::discover::{discover, DiscoveryOptions};
use keyward_transport::identify::DeviceEntry;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct DevicesArgs {
    /// JSON output (an array of devices) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keyward server URL: adds each device's inventory state.
    #[arg(long, env = "KEYWARD_SERVER")]
    pub server: Option<String>,
    /// API token (kw_…) for --server.
    #[arg(long, env = "KEYWARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A virtual device's HID socket (`keyward vcard --hid-socket`); repeatable.
    #[arg(long = "hid-socket", value_name = "PATH")]
    pub hid_socket: Vec<PathBuf>,
}

/// One line of `keyward devices --json`.
#[derive(Debug, Serialize, PartialEq)]
pub struct DeviceRow {
    pub reader: Option<String>,
    /// A canonical device type, or `unsupported`.
    pub device_type: String,
    /// Decimal.
    pub serial: Option<String>,
    pub firmware: Option<String>,
    pub applets: Vec<String>,
    pub transports: Vec<String>,
    pub supported: bool,
    pub reason: Option<String>,
    /// Inventory state with `--server` (null when not in the inventory).
    pub state: Option<String>,
}

impl DeviceRow {
    pub fn from_entry(d: &DeviceEntry) -> Self {
        let id = &d.identity;
        DeviceRow {
            reader: d.reader.clone().or_else(|| d.hid_path.clone()),
            device_type: match (id.supported, id.device_type) {
                (true, Some(t)) => t.as_str().to_string(),
                _ => "unsupported".to_string(),
            },
            serial: id.serial.map(|s| s.to_string()),
            firmware: id.firmware.map(|f| f.to_string()),
            applets: id.applets.iter().map(|a| a.as_str().to_string()).collect(),
            transports: d
                .transports
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
            supported: id.supported,
            reason: id.reason.clone(),
            state: None,
        }
    }
}

/// `GET /api/v1/devices/{serial}`: the state, or `None` when the server
/// does not know the device.
fn inventory_state(client: &ApiClient, serial: &str) -> anyhow::Result<Option<String>> {
    match client.device(serial)? {
        Ok(d) => Ok(Some(d.device.state.to_string())),
        Err(e) if e.status == 404 => Ok(None),
        Err(e) => Err(anyhow!("the server answered for device {serial}: {e}")),
    }
}

pub fn run(args: DevicesArgs) -> anyhow::Result<ExitCode> {
    let opts = DiscoveryOptions {
        hid_sockets: args.hid_socket.clone(),
        ..Default::default()
    };
    let found = discover(&opts);
    for w in &found.warnings {
        eprintln!("warning: {w}");
    }
    let mut rows: Vec<DeviceRow> = found.devices.iter().map(DeviceRow::from_entry).collect();
    if let Some(server) = &args.server {
        let token = args
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                anyhow!("--server needs an API token: pass --token or set KEYWARD_TOKEN")
            })?;
        let client = ApiClient::new(server, Some(token), std::time::Duration::from_secs(30))?;
        for row in rows.iter_mut() {
            if let Some(serial) = &row.serial {
                row.state = inventory_state(&client, serial)?;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows, args.server.is_some()));
    }
    Ok(ExitCode::SUCCESS)
}

/// The human listing: one line per device, the reason for unsupported ones.
pub fn table(rows: &[DeviceRow], with_state: bool) -> String {
    if rows.is_empty() {
        return "no devices connected\n".to_string();
    }
    let mut header = vec![
        "READER",
        "TYPE",
        "SERIAL",
        "FIRMWARE",
        "APPLETS",
        "TRANSPORTS",
    ];
    if with_state {
        header.push("STATE");
    }
    let dash = || "-".to_string();
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut l = vec![
                r.reader.clone().unwrap_or_else(dash),
                r.device_type.clone(),
                r.serial.clone().unwrap_or_else(dash),
                r.firmware.clone().unwrap_or_else(dash),
                if r.applets.is_empty() {
                    dash()
                } else {
                    r.applets.join(",")
                },
                r.transports.join(","),
            ];
            if with_state {
                l.push(r.state.clone().unwrap_or_else(|| "not in inventory".into()));
            }
            l
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let fmt_line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = fmt_line(header.iter().map(|h| h.to_string()).collect());
    for (row, line) in rows.iter().zip(lines) {
        out.push_str(&fmt_line(line));
        if let Some(reason) = &row.reason {
            out.push_str(&format!(
                "  {}: {reason}\n",
                if row.supported { "note" } else { "unsupported" }
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_reasons() {
        let rows = vec![
            DeviceRow {
                reader: Some("Virtual PCD 00 00".into()),
                device_type: "c4000".into(),
                serial: Some("20000001".into()),
                firmware: Some("1.0.0".into()),
                applets: vec!["piv".into(), "fido".into()],
                transports: vec!["pcsc".into()],
                supported: true,
                reason: None,
                state: None,
            },
            DeviceRow {
                reader: Some("Virtual PCD 00 01".into()),
                device_type: "unsupported".into(),
                serial: None,
                firmware: None,
                applets: vec![],
                transports: vec!["pcsc".into()],
                supported: false,
                reason: Some("no PIV application".into()),
                state: None,
            },
        ];
        let t = table(&rows, false);
        assert!(t.starts_with("READER"), "{t}");
        assert!(t.contains("c4000"), "{t}");
        assert!(t.contains("unsupported: no PIV application"), "{t}");
        assert!(table(&rows, true).contains("not in inventory"));
        assert_eq!(table(&[], false), "no devices connected\n");
    }
}
