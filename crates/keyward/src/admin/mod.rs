//! `keyward admin …`: administration over the REST API.

mod agent;
mod commands;
mod lifecycle;
mod output;
mod requests;

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::api::ApiClient;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Keyward server URL.
    #[arg(
        long,
        env = "KEYWARD_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// API token (kw_…).
    #[arg(
        long,
        env = "KEYWARD_TOKEN",
        hide_env_values = true,
        default_value = "",
        global = true
    )]
    pub token: String,
    /// JSON output instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Users: add, import, list, show.
    #[command(subcommand)]
    User(commands::UserCommand),
    /// Operators (accounts with roles): add, list.
    #[command(subcommand)]
    Operator(commands::OperatorCommand),
    /// The device inventory: import, list, show.
    #[command(subcommand)]
    Device(commands::DeviceCommand),
    /// Device policies: import, list, show.
    #[command(subcommand)]
    Policy(commands::PolicyCommand),
    /// Settings: show, set KEY VALUE.
    #[command(subcommand)]
    Settings(commands::SettingsCommand),
    /// Passkey-Enabled Services (Entra ID): add, list, test.
    #[command(subcommand, name = "passkey-service")]
    PasskeyService(commands::PasskeyServiceCommand),
    /// API tokens: create, list, revoke.
    #[command(subcommand)]
    Token(commands::TokenCommand),
    /// The audit trail: verify, list.
    #[command(subcommand)]
    Audit(commands::AuditCommand),
    /// Workstation agents: approve a pairing code, list, revoke.
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// Durable jobs (pending revocations): list, close.
    #[command(subcommand)]
    Job(lifecycle::JobCommand),
    /// Reports: bad-urls.
    #[command(subcommand)]
    Report(lifecycle::ReportCommand),
    /// Requests waiting for a second operator's approval: create, list,
    /// show, approve, deny, cancel.
    #[command(subcommand)]
    Request(requests::RequestCommand),
}

pub fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let client = ApiClient::with_token(
        &args.server,
        &args.token,
        std::time::Duration::from_secs(600),
    )?;
    commands::dispatch(&client, args.json, args.command)
}
