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
    keyward_server::logging::init(&config.log_format);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let server =
            keyward_server::Server::start(config, keyward_server::StartOptions::from_env()).await?;
        keyward_server::demo::seed(&server.state).await?;
        println!();
        println!("Keyward demo is running at {}", server.url);
        println!("  data folder: {}", args.data_dir.display());
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
        }
        println!("Stop with Ctrl-C.");
        server.wait().await
    })?;
    Ok(ExitCode::SUCCESS)
}
