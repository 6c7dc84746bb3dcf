//! What the agents module (crates/server/src/agents) needs to know of a
//! session: the batch out now and the device's serial. Kept here, beside
//! the sealed session data it reads.

use keyward_proto::RelayBatch;
use keyward_store::IssuanceSession;

use super::relay_batch;
use super::session::unseal;
use crate::app::AppState;
use crate::error::ApiResult;

/// The batch out now (as `GET /issuance/{id}/batch` answers it) and the
/// session's device serial.
pub(crate) async fn outstanding_batch(
    state: &AppState,
    s: &IssuanceSession,
) -> ApiResult<(RelayBatch, u64)> {
    let data = unseal(state, s)?;
    Ok((
        relay_batch(s.id, s.seq, s.status, data.batch()),
        data.serial,
    ))
}
