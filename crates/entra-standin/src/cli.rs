//! `keyward entra-standin`: run a simulated tenant in the foreground.

use std::path::PathBuf;

use clap::Args;
use uuid::Uuid;

use crate::{serve, StandinConfig, StandinUser};

#[derive(Debug, Args)]
pub struct StandinArgs {
    /// Address to listen on (port 0: any free port; the URLs are printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub bind: std::net::SocketAddr,
    /// Directory (tenant) ID the token endpoint answers for.
    #[arg(long, default_value = "contoso.onmicrosoft.com")]
    pub tenant: String,
    /// The application (client) ID that may obtain tokens.
    #[arg(long, default_value = "00000000-0000-0000-0000-00000000c11e")]
    pub client_id: String,
    /// Its client secret.
    #[arg(long, env = "KEYWARD_STANDIN_CLIENT_SECRET")]
    pub client_secret: String,
    /// PEM file of an attestation root to trust (repeatable), e.g. the
    /// output of `keyward vcard ca-cert`.
    #[arg(long = "trust", required = true)]
    pub trust: Vec<PathBuf>,
    /// Accept only these AAGUIDs (repeatable; none: any attested key).
    #[arg(long = "aaguid")]
    pub aaguids: Vec<Uuid>,
    /// A user (UPN) of the tenant (repeatable).
    #[arg(long = "user")]
    pub users: Vec<String>,
    /// Unknown UPNs become users on first use.
    #[arg(long)]
    pub auto_create_users: bool,
    /// The FIDO2 policy does not allow self-service setup (Graph refuses
    /// passkey provisioning).
    #[arg(long)]
    pub no_self_service: bool,
    /// The relying party ID of creationOptions.
    #[arg(long, default_value = "login.microsoft.com")]
    pub rp_id: String,
}

pub fn run(args: StandinArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut trust = Vec::new();
    for p in &args.trust {
        trust.push(
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
        );
    }
    let mut cfg = StandinConfig::new(&args.tenant, &args.client_id, &args.client_secret, trust);
    cfg.bind = args.bind;
    cfg.rp_id = args.rp_id;
    cfg.auto_create_users = args.auto_create_users;
    cfg.self_service_setup = !args.no_self_service;
    if !args.aaguids.is_empty() {
        cfg.aaguid_allow_list = Some(args.aaguids);
    }
    cfg.users = args
        .users
        .iter()
        .map(|u| StandinUser::new(u, u.split('@').next().unwrap_or(u)))
        .collect();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let h = serve(cfg).await?;
        // One JSON line on stdout: what a Passkey-Enabled Service needs.
        println!(
            "{}",
            serde_json::json!({
                "name": crate::DISPLAY_NAME,
                "url": h.url(),
                "authority_url": h.authority_url(),
                "graph_url": h.graph_url(),
                "tenant_id": args.tenant,
                "client_id": args.client_id,
                "token_scope": "https://graph.microsoft.com/.default",
            })
        );
        tokio::signal::ctrl_c().await?;
        h.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(std::process::ExitCode::SUCCESS)
}
