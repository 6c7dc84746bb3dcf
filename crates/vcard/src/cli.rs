//! `keyward vcard`: run a virtual device attached to pcscd (vpcd), with an
//! optional HID socket and control socket.

use crate::ca::{default_ca_dir, ManufacturerCa};
use crate::card::VirtualCard;
use crate::config::{Firmware, ProfileKind, Transport, VcardConfig};
use crate::handle::VcardHandle;
use crate::presence::{Presence, PresenceMode, DEFAULT_TIMEOUT};
use clap::{Args, Subcommand};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
#[command(about = "Run a virtual PIV + FIDO2 device (YubiKey 5 or Crescendo C4000)")]
pub struct VcardArgs {
    #[command(subcommand)]
    pub command: Option<VcardCommand>,
    /// Device profile: c4000 or yubikey5.
    #[arg(long, default_value = "yubikey5")]
    pub profile: ProfileKind,
    /// Firmware version X.Y.Z (default 5.7.1 for yubikey5, 1.0.0 for c4000).
    #[arg(long)]
    pub firmware: Option<Firmware>,
    /// Device serial number (decimal).
    #[arg(long, default_value_t = 10_000_001)]
    pub serial: u32,
    /// yubikey5: usb (FIDO over HID only) or nfc (FIDO over ISO 7816 too).
    #[arg(long, default_value = "usb")]
    pub transport: Transport,
    /// vpcd address (pcscd's virtual reader driver), or "none".
    #[arg(long, default_value = "127.0.0.1:35963")]
    pub vpcd: String,
    /// Serve the virtual HID device (CTAPHID reports) on this Unix socket.
    #[arg(long)]
    pub hid_socket: Option<PathBuf>,
    /// Control socket (touch, decline, remove, insert, power-cycle).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// State file: keys, PINs, objects and credentials persist across restarts.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Folder of the virtual manufacturer CA (default $KEYWARD_VCARD_CA_DIR,
    /// else ~/.local/share/keyward/vcard-ca).
    #[arg(long, global = true)]
    pub ca_dir: Option<PathBuf>,
    /// User presence: auto (confirmed at once) or manual (touch via --control).
    #[arg(long, default_value = "auto")]
    pub presence: PresenceMode,
}

#[derive(Debug, Subcommand)]
pub enum VcardCommand {
    /// Print the virtual manufacturer CA's root certificate (PEM).
    CaCert,
}

/// Why `keyward vcard` stopped.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct VcardRunError(String);

fn fail(what: &str, e: impl std::fmt::Display) -> VcardRunError {
    VcardRunError(format!("{what}: {e}"))
}

/// Run the `keyward vcard` command.
pub fn run(args: VcardArgs) -> Result<ExitCode, VcardRunError> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let ca_dir = args.ca_dir.clone().unwrap_or_else(default_ca_dir);
    if let Some(VcardCommand::CaCert) = args.command {
        let ca = ManufacturerCa::load_or_create(&ca_dir).map_err(|e| fail("CA", e))?;
        print!("{}", ca.root_pem());
        return Ok(ExitCode::SUCCESS);
    }
    let mut config = VcardConfig::new(args.profile)
        .with_serial(args.serial)
        .with_transport(args.transport)
        .with_ca_dir(ca_dir);
    if let Some(fw) = args.firmware {
        config = config.with_firmware(fw);
    }
    let card = match &args.state {
        Some(path) => VirtualCard::load_or_new(config, path),
        None => VirtualCard::new(config),
    }
    .map_err(|e| fail("card", e))?;
    let presence = Presence::new(args.presence, DEFAULT_TIMEOUT);
    let handle = VcardHandle::with_options(card, args.state.clone(), presence);
    if let Some(path) = &args.state {
        handle
            .with_card(|c| c.save(path))
            .map_err(|e| fail("state file", e))?;
    }
    if let Some(path) = &args.control {
        crate::control::serve(handle.clone(), path).map_err(|e| fail("control socket", e))?;
    }
    if let Some(path) = &args.hid_socket {
        serve_hid(handle.clone(), path.clone()).map_err(|e| fail("HID socket", e))?;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let vpcd = if args.vpcd != "none" {
        Some(
            crate::vpcd::run(handle.clone(), &args.vpcd, move || {
                let _ = tx.send(());
            })
            .map_err(|e| fail(&format!("vpcd {}", args.vpcd), e))?,
        )
    } else {
        let _ = tx.send(());
        None
    };
    let _ = rx.recv();
    println!("ready");
    let _ = std::io::stdout().flush();
    tracing::info!(
        profile = %args.profile,
        serial = args.serial,
        "virtual card ready"
    );
    match vpcd {
        Some(join) => {
            let _ = join.join();
        }
        None => loop {
            std::thread::park();
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Serve the HID socket while the card is inserted: `remove` closes it
/// (the device is unplugged), `insert` opens it again.
fn serve_hid(handle: VcardHandle, path: PathBuf) -> std::io::Result<()> {
    let fw = handle.with_card(|c| c.config().firmware);
    let start = move |handle: &VcardHandle| {
        let h = handle.clone();
        crate::hid_socket::serve_hid_socket(
            &path,
            Box::new(
                move |request: &[u8], presence: &mut dyn crate::fido::UserPresence| {
                    // Removed: the device answers nothing.
                    h.fido_request(request, presence).ok()
                },
            ),
            handle.presence().clone(),
            (fw.0, fw.1, fw.2),
        )
    };
    // The generation the socket is opened for, read before opening it: a
    // remove or insert from then on (even before the supervisor thread runs)
    // is a change the supervisor sees, so the socket always catches up.
    let opened_at = handle.generation();
    let mut socket = Some(start(&handle)?);
    handle.mark_hid_synced(opened_at);
    std::thread::Builder::new()
        .name("hid-supervisor".into())
        .spawn(move || {
            let mut seen = opened_at;
            loop {
                seen = handle.wait_change(seen, std::time::Duration::from_secs(3600));
                if handle.is_inserted() {
                    if socket.is_none() {
                        match start(&handle) {
                            Ok(s) => socket = Some(s),
                            Err(e) => {
                                tracing::error!(error = %e, "reopening the HID socket failed")
                            }
                        }
                    }
                } else if let Some(s) = socket.take() {
                    s.stop();
                }
                handle.mark_hid_synced(seen);
            }
        })?;
    Ok(())
}
