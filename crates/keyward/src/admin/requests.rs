//! `keyward admin request …` (issue 18): Request Issuance, its approval by a
//! second operator (a signed-in person: the server refuses an API token's
//! approval), denial, cancellation, and the list of what waits.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::output::{print_list, print_object};
use crate::api::{enc, ApiClient, Body};

#[derive(Subcommand, Debug)]
pub enum RequestCommand {
    /// Request Issuance: pending until a second operator approves it when
    /// the policy requires approval (else approved at once).
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        policy: String,
        /// The device, when one is named.
        #[arg(long)]
        serial: Option<String>,
    },
    /// Requests: those waiting (`--state pending`), or any state.
    List {
        /// `pending`, `approved`, `denied`, `cancelled`, `used`.
        #[arg(long)]
        state: Option<String>,
        /// One bulk batch's requests.
        #[arg(long)]
        batch: Option<String>,
    },
    Show {
        id: String,
    },
    /// Approve (a signed-in operator other than the requester and the
    /// recipient; an API token is refused).
    Approve {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    Deny {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    Cancel {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
    /// Bulk issuance: a CSV of `login,policy[,serial]` (with a header row)
    /// makes a batch of requests, all or nothing unless --partial.
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        partial: bool,
    },
    /// A batch's progress: issued, failed, waiting, and its requests.
    Batch {
        id: String,
    },
}

const COLUMNS: &[(&str, &str)] = &[
    ("id", "ID"),
    ("kind", "KIND"),
    ("user", "USER"),
    ("policy", "POLICY"),
    ("serial", "SERIAL"),
    ("state", "STATE"),
    ("requested_by", "REQUESTED BY"),
    ("decided_by", "DECIDED BY"),
];

pub fn run(c: &ApiClient, json_out: bool, cmd: RequestCommand) -> anyhow::Result<ExitCode> {
    let decided = |verb: &str, id: &str, note: Option<String>| -> anyhow::Result<Value> {
        c.post(
            &format!("/requests/{}/{verb}", enc(id)),
            &json!({ "note": note }),
        )
    };
    let v: Value = match cmd {
        RequestCommand::Create {
            user,
            policy,
            serial,
        } => c.post(
            "/requests",
            &json!({ "user": user, "policy": policy, "serial": serial }),
        )?,
        RequestCommand::List { state, batch } => {
            let mut q = String::from("/requests?");
            if let Some(s) = state {
                q.push_str(&format!("state={}&", enc(&s)));
            }
            if let Some(b) = batch {
                q.push_str(&format!("batch={}", enc(&b)));
            }
            let list: Value = c.get(q.trim_end_matches(['?', '&']))?;
            print_list(json_out, &list, COLUMNS);
            return Ok(ExitCode::SUCCESS);
        }
        RequestCommand::Show { id } => c.get(&format!("/requests/{}", enc(&id)))?,
        RequestCommand::Approve { id, note } => decided("approve", &id, note)?,
        RequestCommand::Deny { id, note } => decided("deny", &id, note)?,
        RequestCommand::Cancel { id, note } => decided("cancel", &id, note)?,
        RequestCommand::Import { file, partial } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
            let path = if partial {
                "/requests/import?partial=true"
            } else {
                "/requests/import"
            };
            let v: Value = c.call(reqwest::Method::POST, path, Body::<()>::Csv(text))??;
            if !json_out {
                println!(
                    "batch {}: {} request(s)",
                    v["batch"].as_str().unwrap_or("-"),
                    v["imported"]
                );
                for r in v["rejected"].as_array().into_iter().flatten() {
                    println!(
                        "rejected row {}: [{}] {}",
                        r["row"],
                        r["code"].as_str().unwrap_or(""),
                        r["message"].as_str().unwrap_or("")
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
        RequestCommand::Batch { id } => {
            let v: Value = c.get(&format!("/request-batches/{}", enc(&id)))?;
            if !json_out {
                println!(
                    "batch {}: {} issued, {} failed, {} waiting (of {})",
                    id, v["issued"], v["failed"], v["waiting"], v["rows"]
                );
                print_list(false, &v["requests"], COLUMNS);
                return Ok(ExitCode::SUCCESS);
            }
            v
        }
    };
    print_object(json_out, &v);
    Ok(ExitCode::SUCCESS)
}
