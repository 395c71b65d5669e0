//! `couponsd report`: opens the plain [`Installation`] read-only and never applies the
//! catalog.

use std::sync::Arc;

use super::CliError;
use crate::config::Config;
use crate::installation::Installation;
use crate::ops::report::{self, ReportArgs};
use crate::store::Access;

/// `couponsd report …`
pub(super) async fn report(config: Arc<Config>, args: &ReportArgs) -> Result<String, CliError> {
    let installation = Installation::open(config, Access::ReadOnly).await?;
    Ok(report::run(&installation, args).await?)
}
