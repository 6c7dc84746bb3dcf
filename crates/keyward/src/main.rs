//! `keyward`: the one binary. Argument parsing and wiring only; the work is
//! done by the library crates.

mod admin;
mod agent;
mod api;
mod backup;
mod demo;
mod devices;
mod follow_up;
mod issue;
mod offline_unlock;
mod recycle;
mod relaying;
mod serve;
mod unlock;
mod update;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "keyward",
    version,
    about = "Keyward credential management system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Keyward server (API, portals, store).
    Serve(serve::ServeArgs),
    /// Run the server with sample data in its own data folder.
    Demo(demo::DemoArgs),
    /// Administer a running server through its REST API.
    Admin(admin::AdminArgs),
    /// Run a virtual PIV + FIDO2 device (YubiKey 5 or Crescendo C4000) on pcscd.
    Vcard(keyward_vcard::cli::VcardArgs),
    /// Run a simulated Entra ID tenant (token endpoint and Graph passkey API).
    EntraStandin(keyward_entra_standin::cli::StandinArgs),
    /// List the connected devices (PC/SC readers, FIDO HID devices), identified.
    Devices(devices::DevicesArgs),
    /// Issue a connected device to a user (relays the server's device commands).
    Issue(issue::IssueArgs),
    /// Recycle a connected device: wipe it to factory state through the
    /// server and return it to Available.
    Recycle(recycle::RecycleArgs),
    /// Unlock a connected device: reset its blocked PIN with the PUK the
    /// server keeps (which it then replaces).
    Unlock(unlock::UnlockArgs),
    /// Carry out a connected device's pending update (Request Update, or
    /// the renewal scan's): certificates, PIN, passkey, through the server.
    Update(update::UpdateArgs),
    /// Back up a SQLite data folder and its KEK into one file encrypted
    /// under a passphrase (on the server's host; the server may run).
    Backup(backup::BackupArgs),
    /// Restore a backup into an empty data folder.
    Restore(backup::RestoreArgs),
    /// The workstation agent: pairs once, reports its devices, relays the
    /// server's device commands (connects out only).
    Agent(agent::AgentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Admin(args) => admin::run(args),
        Command::Vcard(args) => keyward_vcard::cli::run(args).map_err(anyhow::Error::from),
        Command::EntraStandin(args) => keyward_entra_standin::cli::run(args),
        Command::Devices(args) => devices::run(args),
        Command::Issue(args) => issue::run(args),
        Command::Recycle(args) => recycle::run(args),
        Command::Unlock(args) => unlock::run(args),
        Command::Update(args) => update::run(args),
        Command::Backup(args) => backup::backup(args),
        Command::Restore(args) => backup::restore(args),
        Command::Agent(args) => agent::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
