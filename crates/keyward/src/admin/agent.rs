//! `keyward admin agent approve|list|revoke`: workstation agents.
//!
//! `approve CODE` pairs the agent that printed CODE to the approver: with an
//! API token (as the admin CLI uses) the agent is paired to that token;
//! `--account LOGIN` pairs it to an operator's or a user's account instead
//! (administrators), as if that person had approved it in the portal.

use std::process::ExitCode;

use clap::Subcommand;

use super::output::{print_list, print_object};
use crate::api::{enc, ApiClient, NoBody};
use keyward_proto::agent::{AgentView, ApproveRequest};

#[derive(Subcommand, Debug)]
pub enum AgentCommand {
    /// Approve the pairing code a `keyward agent` printed.
    Approve {
        /// XXXX-XXXX (case and dash do not matter).
        code: String,
        /// Pair the agent to this account (operator or user login) instead
        /// of the API token used here.
        #[arg(long)]
        account: Option<String>,
    },
    /// List the agents (pending, paired, revoked).
    List,
    /// Revoke an agent by id: its credential stops working at once.
    Revoke { id: String },
}

pub fn run(c: &ApiClient, json_out: bool, cmd: AgentCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AgentCommand::Approve { code, account } => {
            let v: AgentView = c.post("/agents/approve", &ApproveRequest { code, account })?;
            if json_out {
                print_object(true, &serde_json::to_value(&v)?);
            } else {
                println!(
                    "approved agent {} ({}), paired to {}",
                    v.name,
                    v.id,
                    v.owner.as_deref().unwrap_or("")
                );
            }
        }
        AgentCommand::List => print_list(
            json_out,
            &c.get("/agents")?,
            &[
                ("id", "ID"),
                ("name", "NAME"),
                ("status", "STATUS"),
                ("owner", "OWNER"),
                ("online", "ONLINE"),
                ("last_seen_at", "LAST SEEN"),
            ],
        ),
        AgentCommand::Revoke { id } => {
            let v: serde_json::Value =
                c.post(&format!("/agents/{}/revoke", enc(&id)), &NoBody {})?;
            if json_out {
                print_object(true, &v);
            } else {
                println!("revoked agent {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
