//! Commands for operators that inspect or change a running installation: stock, a pool
//! coupon's codes, grants (show, revoke), the outbox (deliveries, channels), and the report of grants. Each works on the plain
//! [`Installation`](crate::installation::Installation) its caller opened: the database
//! and the config, never a running daemon's context.

pub mod codes;
pub mod deliveries;
pub mod grants;
pub mod report;
pub mod stock;

use crate::store::StoreError;

/// Why an operator command failed. The module's own rather than one error shared by
/// every command: it says only what can go wrong here, and it keeps `ops` free of the
/// modules above it (the daemon's start-up, the command line). The command line maps it
/// to an exit code (`cli/exit.rs`).
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The command cannot be done as asked (an unknown coupon or channel, a delivery
    /// that is not dead, a channel still disabled); the message says what to do instead.
    #[error("{0}")]
    Refused(String),
}
