//! `keyward admin job …` and `keyward admin report …`: the durable jobs a
//! device's move left (pending revocations) and reports over what was
//! issued.

use std::process::ExitCode;

use clap::Subcommand;
use keyward_proto::views::{BadUrl, JobView};

use super::output::print_list;
use crate::api::{enc, ApiClient, NoBody};

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Jobs not done yet (pending revocations), or done / closed ones.
    List {
        /// `pending` (default), `done` or `closed`.
        #[arg(long)]
        state: Option<String>,
        /// One device's jobs.
        #[arg(long)]
        device: Option<String>,
    },
    /// Close a job that keeps failing, by hand (administrators; audited).
    Close { id: String },
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Certificates whose CRL or OCSP address relying parties cannot use
    /// (issued before `public_url` was required); exit 1 when any.
    BadUrls,
}

pub fn job(c: &ApiClient, json: bool, cmd: JobCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JobCommand::List { state, device } => {
            let mut q = String::from("/jobs?");
            if let Some(s) = state {
                q.push_str(&format!("state={}&", enc(&s)));
            }
            if let Some(d) = device {
                q.push_str(&format!("device={}", enc(&d)));
            }
            let jobs: Vec<JobView> = c.get(q.trim_end_matches(['?', '&']))?;
            print_list(
                json,
                &serde_json::to_value(&jobs)?,
                &[
                    ("id", "ID"),
                    ("kind", "KIND"),
                    ("target", "TARGET"),
                    ("state", "STATE"),
                    ("attempts", "TRIES"),
                    ("next_at", "NEXT TRY"),
                    ("last_error", "LAST ERROR"),
                ],
            );
        }
        JobCommand::Close { id } => {
            let job: JobView = c.post(&format!("/jobs/{}/close", enc(&id)), &NoBody {})?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!("closed job {} ({}, {})", job.id, job.kind, job.target);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn report(c: &ApiClient, json: bool, cmd: ReportCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ReportCommand::BadUrls => {
            let bad: Vec<BadUrl> = c.get("/reports/bad-urls")?;
            print_list(
                json,
                &serde_json::to_value(&bad)?,
                &[
                    ("device", "DEVICE"),
                    ("slot", "SLOT"),
                    ("certificate", "CERTIFICATE"),
                    ("revoked", "REVOKED"),
                    ("url", "URL"),
                    ("problem", "PROBLEM"),
                ],
            );
            Ok(if bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
