//! The agent's client of the server (the one typed API client, with the
//! agent's credential). It only ever connects out.

use std::time::Duration;

use crate::api::ApiClient;

/// A client whose timeout is above the server's 25-second long-poll.
pub fn client(server: &str, credential: Option<&str>) -> anyhow::Result<ApiClient> {
    ApiClient::new(server, credential, Duration::from_secs(45))
}
