//! An operator's revocation (`couponsd grants revoke`): the same transition, event and
//! give-back as a partner's `revoke`, in one transaction of its own, recorded with the
//! operator's name instead of an update key.

use super::changes::{Changes, Step};
use super::giveback::GiveBack;
use super::LifecycleError;
use crate::config::Config;
use crate::domain::lifecycle::{Cause, GrantRecord};
use crate::domain::UpdateAction;
use crate::store::{self, Conn};

/// What an operator's revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Revoked; the grant as it was before.
    Revoked(GrantRecord),
    /// No grant has this id.
    Unknown,
    /// Refused, and why (`already revoked`, `expired`).
    Refused(String),
}

/// Revokes grant `id` for `operator`, giving back what it took, in one transaction.
pub async fn revoke_grant(
    conn: &mut Conn,
    config: &Config,
    id: i64,
    (operator, reason): (&str, &str),
) -> Result<Revocation, LifecycleError> {
    conn.write_transaction(async |conn| {
        let grants = conn.grants_by_id(&[id], true).await?;
        let Some(before) = grants.first().cloned() else {
            return Ok(Revocation::Unknown);
        };
        let mut changes = Changes::new(grants, store::now().and_utc());
        let step = Step {
            grant_id: id,
            action: UpdateAction::Revoke,
            cause: Cause::Operator(operator.to_owned()),
            reason: Some(reason),
            happened: None,
        };
        if let Err(why) = changes.apply(step) {
            return Ok(Revocation::Refused(why));
        }
        changes.write(conn).await?;
        GiveBack::of(&changes.revoked, config).write(conn).await?;
        Ok(Revocation::Revoked(before))
    })
    .await
}
