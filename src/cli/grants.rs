//! `couponsd grants show|revoke`: opens the plain [`Installation`] the command works on
//! (read-only for `show`); a revocation is recorded under `$USER`, or `operator`.

use std::sync::Arc;

use super::CliError;
use crate::config::Config;
use crate::installation::Installation;
use crate::ops::grants::{self, GrantsAction};

/// `couponsd grants …`
pub(super) async fn grants(config: Arc<Config>, action: GrantsAction) -> Result<String, CliError> {
    let installation = Installation::open(config, action.access()).await?;
    let operator = std::env::var("USER")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "operator".into());
    Ok(grants::run(&installation, action, &operator).await?)
}
