//! `couponsd grants show|revoke`: a grant's life as ops see it, and an operator's
//! revocation, which gives back what the grant took with the same code as a partner's
//! `revoke` (`pipeline::lifecycle::revoke`).

use std::fmt::Write as _;

use clap::{ArgGroup, Subcommand};

use super::OpsError;
use crate::domain::lifecycle::GrantRecord;
use crate::installation::Installation;
use crate::pipeline::dispatch::events::rfc3339;
use crate::pipeline::lifecycle::revoke::{revoke_grant, Revocation};
use crate::pipeline::lifecycle::LifecycleError;
use crate::store::transitions::TransitionRecord;
use crate::store::{Access, StoreError};

/// A user's grants shown at most.
const MAX_SHOWN: i64 = 100;

/// `couponsd grants …`
#[derive(Debug, Clone, Subcommand)]
pub enum GrantsAction {
    /// A grant (by id or code) or a user's grants: state, times and every transition.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "code", "user"])))]
    Show {
        /// The grant id.
        id: Option<i64>,
        /// The code the grant carries.
        #[arg(long)]
        code: Option<String>,
        /// The user whose grants to show (the first 100).
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke a grant (granted or redeemed): it stops counting, and its stock (not a
    /// pool's code), budget and daily budget are given back; `coupon.revoked` is sent.
    Revoke {
        /// The grant id.
        id: i64,
        /// Why, recorded with the transition and sent in the event.
        #[arg(long)]
        reason: String,
    },
}

impl GrantsAction {
    /// What the command may do to the database: `show` only reads.
    pub fn access(&self) -> Access {
        match self {
            GrantsAction::Show { .. } => Access::ReadOnly,
            GrantsAction::Revoke { .. } => Access::ReadWrite,
        }
    }
}

/// Runs a `grants` command and returns what to print; `operator` names who revokes.
pub async fn run(
    installation: &Installation,
    action: GrantsAction,
    operator: &str,
) -> Result<String, OpsError> {
    match action {
        GrantsAction::Show { id, code, user } => show(installation, (id, code, user)).await,
        GrantsAction::Revoke { id, reason } => {
            let mut conn = installation.db.get().await?;
            let config = &installation.config;
            let revoked = revoke_grant(&mut conn, config, id, (operator, &reason))
                .await
                .map_err(|e| match e {
                    LifecycleError::Store(e) => OpsError::Store(e),
                    other => OpsError::Refused(other.to_string()),
                })?;
            match revoked {
                Revocation::Revoked(was) => Ok(format!(
                    "revoked grant {id} (was {}), by {operator}: its stock, budget and daily budget are given back\n",
                    was.state
                )),
                Revocation::Unknown => Err(OpsError::Refused(format!("no grant {id}"))),
                Revocation::Refused(why) => Err(OpsError::Refused(format!(
                    "{why}: only a granted or redeemed grant can be revoked"
                ))),
            }
        }
    }
}

async fn show(
    installation: &Installation,
    (id, code, user): (Option<i64>, Option<String>, Option<String>),
) -> Result<String, OpsError> {
    let mut conn = installation.db.get().await?;
    let ids: Vec<i64> = match (id, code, user) {
        (Some(id), _, _) => vec![id],
        (_, Some(code), _) => conn
            .grant_ids_by_code(&[code])
            .await
            .map_err(StoreError::from)?
            .into_iter()
            .map(|(_, id)| id)
            .collect(),
        (_, _, Some(user)) => conn
            .grant_ids_of_user(&user, MAX_SHOWN)
            .await
            .map_err(StoreError::from)?,
        (None, None, None) => Vec::new(),
    };
    let grants = conn
        .grants_by_id(&ids, false)
        .await
        .map_err(StoreError::from)?;
    if grants.is_empty() {
        return Err(OpsError::Refused("no grant found".into()));
    }
    let transitions = conn.transitions_of(&ids).await.map_err(StoreError::from)?;
    let mut out = String::new();
    for grant in &grants {
        let mine: Vec<&TransitionRecord> = transitions
            .iter()
            .filter(|t| t.grant_id == grant.id)
            .collect();
        describe(&mut out, grant, &mine);
    }
    Ok(out)
}

fn describe(out: &mut String, grant: &GrantRecord, transitions: &[&TransitionRecord]) {
    let time = |t: Option<chrono::NaiveDateTime>| t.map(rfc3339).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "grant {}: {}\n  user {}, campaign {}, coupon {}, code {}\n  granted_at {}, expires_at {}, redeemed_at {}",
        grant.id,
        grant.state,
        grant.user_id,
        grant.campaign_id,
        grant.coupon_id,
        grant.code.as_deref().unwrap_or("-"),
        rfc3339(grant.granted_at),
        time(grant.expires_at),
        time(grant.redeemed_at),
    );
    for t in transitions {
        let by = match (&t.update_key, &t.job, &t.operator) {
            (Some(key), _, _) => format!("update {key}"),
            (_, Some(job), _) => format!("job {job}"),
            (_, _, Some(operator)) => format!("operator {operator}"),
            _ => "-".into(),
        };
        let reason = t
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {} -> {} by {by}{reason}",
            rfc3339(t.at),
            t.from_state,
            t.to_state
        );
    }
}
