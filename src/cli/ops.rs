//! `couponsd stock`, `deliveries` and `channels`: each opens the plain
//! [`Installation`] its command works on — rules compiled, database migrated, and
//! read-only for `list` and `show` — and never applies the catalog (only `migrate` and
//! `run` do).

use std::sync::Arc;

use super::CliError;
use crate::config::Config;
use crate::installation::Installation;
use crate::ops::deliveries::{self, ChannelsAction, DeliveriesAction};
use crate::ops::stock::{self, StockAction};

/// `couponsd stock …`
pub(super) async fn stock(config: Arc<Config>, action: StockAction) -> Result<String, CliError> {
    let installation = Installation::open(config, action.access()).await?;
    Ok(stock::run(&installation, action).await?)
}

/// `couponsd deliveries …`
pub(super) async fn deliveries(
    config: Arc<Config>,
    action: DeliveriesAction,
) -> Result<String, CliError> {
    let installation = Installation::open(config, action.access()).await?;
    Ok(deliveries::deliveries(&installation, action).await?)
}

/// `couponsd channels …`
pub(super) async fn channels(
    config: Arc<Config>,
    action: ChannelsAction,
) -> Result<String, CliError> {
    let installation = Installation::open(config, action.access()).await?;
    Ok(deliveries::channels(&installation, action).await?)
}
