//! `couponsd codes import|show`: opens the plain [`Installation`] the command works on
//! (read-only for `show`) and never applies the catalog; the coupon must be one of the
//! config's, and for `import` a pool coupon.

use std::sync::Arc;

use super::CliError;
use crate::config::Config;
use crate::installation::Installation;
use crate::ops::codes::{self, CodesAction};

/// `couponsd codes …`
pub(super) async fn codes(config: Arc<Config>, action: CodesAction) -> Result<String, CliError> {
    let installation = Installation::open(config, action.access()).await?;
    Ok(codes::run(&installation, action).await?)
}
