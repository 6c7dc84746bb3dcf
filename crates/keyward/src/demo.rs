//! `keyward demo`: the server on its own data folder with sample data.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use keyward_server::config::{Config, Overrides};
use keyward_server::demo::{DEMO_ADMIN, DEMO_OPERATOR, DEMO_USER};

pub const DEFAULT_DEMO_DIR: &str = "./keyward-demo";

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Data folder of the demo (never the `serve` default).
    #[arg(long, default_value = DEFAULT_DEMO_DIR)]
    pub data_dir: PathBuf,
    /// Do not start the virtual devices.
    #[arg(long)]
    pub no_virtual_devices: bool,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(
        None,
        Overrides {
            data_dir: Some(args.data_dir.clone()),
            listen: Some(args.listen),
            ..Default::default()
        },
    )?;
    let mut config = config;
    // Virtual devices attest their keys with a virtual manufacturer CA: the
    // demo trusts its own folder's (its in-process devices) and the
    // machine's default one (what `keyward vcard` uses on pcscd beside the
    // demo), with or without its own devices, for PIV and FIDO, as a
    // production server trusts Yubico's roots: attestation stays required.
    config.attestation_roots = demo_attestation_roots(&args.data_dir)?;
    config.fido_attestation_roots = config.attestation_roots.clone();
    let config_roots = config.fido_attestation_roots.clone();
    keyward_server::logging::init(&config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server =
            keyward_server::Server::start(
                config,
                keyward_server::StartOptions {
                    allow_weak_bootstrap_token: true,
                    ..keyward_server::StartOptions::from_env()
                },
            )
            .await?;
        keyward_server::demo::seed(&server.state).await?;
        let tenant = start_simulated_tenant(&server, &config_roots).await?;
        let agents = if args.no_virtual_devices {
            None
        } else {
            Some(start_demo_agents(&server, &args.data_dir).await?)
        };
        println!();
        println!("Keyward demo is running at {}", server.url);
        println!("  data folder: {}", args.data_dir.display());
        if server.created_first_admin {
            // Printed above by the server on its first start: say what it is.
            println!("  The 'admin' account above is the server's own first administrator (every new");
            println!("  data folder gets one); the demo does not need it: use the sign-ins below.");
        }
        println!("  DEMO-ONLY sign-ins (never use these passwords elsewhere):");
        println!(
            "    operator (Issuance Operator): {} / {}",
            DEMO_OPERATOR.0, DEMO_OPERATOR.1
        );
        println!(
            "    administrator:                {} / {}",
            DEMO_ADMIN.0, DEMO_ADMIN.1
        );
        println!(
            "    user alice (User Portal):     {} / {}",
            DEMO_USER.0, DEMO_USER.1
        );
        if args.no_virtual_devices {
            println!("  virtual devices: off (--no-virtual-devices)");
        } else {
            println!("  virtual devices (in-process, on the demo's workstation agent, paired to operator and alice):");
            for (kind, serial, firmware) in keyward_server::demo::DEMO_DEVICES {
                println!("    {kind:<9} serial {serial} (firmware {firmware})");
            }
        }
        println!(
            "  passkeys: the {} (an in-process Entra ID stand-in) at {}",
            keyward_entra_standin::DISPLAY_NAME,
            tenant.url()
        );
        println!("Stop with Ctrl-C.");
        let result = server.wait().await;
        tenant.shutdown().await;
        if let Some(stop) = agents {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        result
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The virtual manufacturer CAs the demo trusts, as PEM files for
/// `attestation_roots`: its own folder's (`DATA_DIR/virtual/ca`) and the
/// machine's default one (`keyward vcard ca-cert`), each created on first use.
fn demo_attestation_roots(data_dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let dir = data_dir.join("virtual");
    std::fs::create_dir_all(&dir)?;
    let own = keyward_vcard::ca::ManufacturerCa::load_or_create(&dir.join("ca"))?;
    let own_path = dir.join("manufacturer-ca.pem");
    std::fs::write(&own_path, own.root_pem())?;
    let mut roots = vec![own_path];
    match keyward_vcard::ca::ManufacturerCa::load_or_create(&keyward_vcard::ca::default_ca_dir()) {
        Ok(default) => {
            let path = dir.join("default-manufacturer-ca.pem");
            std::fs::write(&path, default.root_pem())?;
            roots.push(path);
        }
        // No writable home (a locked-down container): the demo's own still works.
        Err(e) => eprintln!("note: the default virtual manufacturer CA is not trusted: {e}"),
    }
    Ok(roots)
}

/// The demo's workstation agents, in-process: the two virtual devices
/// (state kept in `DATA_DIR/virtual/`), one agent paired to the demo
/// operator and one to alice (operators and users alike pair agents), both
/// reaching the same in-process cards and opening no PC/SC or HID device.
async fn start_demo_agents(
    server: &keyward_server::Server,
    data_dir: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use keyward_server::demo::{demo_agent_credential, seed_demo_devices, DEMO_DEVICES};
    seed_demo_devices(&server.state).await?;
    let dir = data_dir.join("virtual");
    std::fs::create_dir_all(&dir)?;
    let mut devices = Vec::new();
    for (kind, serial, _) in DEMO_DEVICES {
        let config = keyward_vcard::VcardConfig::new(kind.parse().map_err(anyhow::Error::msg)?)
            .with_serial(serial)
            .with_ca_dir(dir.join("ca"));
        let state_file = dir.join(format!("{kind}-{serial}.json"));
        let card = keyward_vcard::VirtualCard::load_or_new(config, &state_file)?;
        let handle = keyward_vcard::VcardHandle::with_options(
            card,
            Some(state_file),
            keyward_vcard::presence::Presence::auto(),
        );
        devices.push(crate::agent::devices::VirtualDevice::new(
            handle,
            format!("Keyward demo {kind} {serial}"),
        ));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (owner, name) in [
        (DEMO_OPERATOR.0, "demo workstation (operator)"),
        (DEMO_USER.0, "demo workstation (alice)"),
    ] {
        let credential = demo_agent_credential(
            &server.state,
            owner,
            name,
            &dir.join(format!("agent-{owner}.credential")),
        )
        .await?;
        crate::agent::run_paired(&server.url, credential, devices.clone(), stop.clone())?;
    }
    Ok(stop)
}

/// The demo's simulated Entra ID tenant (in-process, any free port): it
/// trusts the demo's FIDO roots (its own virtual manufacturer CA and the
/// machine's default one, PEM files) and knows every user asked for; the
/// Passkey-Enabled Service and the passkey policies point to it (see
/// keyward_server::demo_passkeys).
async fn start_simulated_tenant(
    server: &keyward_server::Server,
    roots: &[PathBuf],
) -> anyhow::Result<keyward_entra_standin::StandinHandle> {
    let roots = roots
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<Vec<_>, _>>()?;
    let secret = keyward_entra_standin::random_secret();
    let tenant_id = "keyward-demo.onmicrosoft.com";
    let client_id = "6f1d2c3b-0a9e-4e8d-9c7b-5a4f3e2d1c0b";
    let mut cfg = keyward_entra_standin::StandinConfig::new(tenant_id, client_id, &secret, roots);
    cfg.auto_create_users = true;
    let tenant = keyward_entra_standin::serve(cfg).await?;
    keyward_server::demo_passkeys::seed(
        &server.state,
        &keyward_server::demo_passkeys::SimulatedTenant {
            authority_url: &tenant.authority_url(),
            graph_url: &tenant.graph_url(),
            tenant_id,
            client_id,
            client_secret: &secret,
            token_scope: "https://graph.microsoft.com/.default",
        },
    )
    .await?;
    Ok(tenant)
}
