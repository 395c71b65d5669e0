//! `couponsd stock show|add|activate`: the inventory as ops see it, restocking, and
//! bringing a retired coupon back into selection (only ever by this explicit command).
//! A pool coupon's stock is its imported codes not yet issued: `stock add` refuses it
//! (`codes import` restocks it) and `stock show` marks it `pool`.

use std::fmt::Write as _;

use super::OpsError;
use crate::config::{Config, CouponConfig};
use crate::domain::codes::CodeSource;
use crate::domain::CouponState;
use crate::installation::Installation;
use crate::schedule::inventory::{current_rates, predicted_run_out};
use crate::store::jobs::AlertMark;
use crate::store::{Access, StoreError};

/// `couponsd stock …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StockAction {
    /// A table of every coupon: state, stock, granted, remaining, rate, run-out, and
    /// where its codes come from (`pool`: its stock is its unissued imported codes).
    Show,
    /// Add N to a coupon's stock (a retired coupon stays retired; a pool coupon is
    /// restocked by `codes import`).
    Add {
        /// The coupon.
        coupon: String,
        /// How many to add.
        count: i64,
    },
    /// Bring a retired coupon back into selection.
    Activate {
        /// The coupon.
        coupon: String,
    },
}

impl StockAction {
    /// What the command may do to the database: `show` only reads.
    pub fn access(&self) -> Access {
        match self {
            StockAction::Show => Access::ReadOnly,
            StockAction::Add { .. } | StockAction::Activate { .. } => Access::ReadWrite,
        }
    }
}

/// Runs a `stock` command and returns what to print.
pub async fn run(installation: &Installation, action: StockAction) -> Result<String, OpsError> {
    match action {
        StockAction::Show => show(installation).await,
        StockAction::Add { coupon, count } => add(installation, &coupon, count).await,
        StockAction::Activate { coupon } => activate(installation, &coupon).await,
    }
}

/// Renders the stock table.
pub async fn show(installation: &Installation) -> Result<String, OpsError> {
    let coupons = installation
        .db
        .get()
        .await?
        .coupon_stock()
        .await
        .map_err(StoreError::from)?;
    let rates = current_rates(&installation.db).await?;
    let now = crate::store::now().and_utc();
    let mut out = format!("rules version {}\n", installation.rules_version);
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:<8} {:>9} {:>9} {:>9} {:>9}  {:<23}  CODES",
        "CAMPAIGN",
        "COUPON",
        "STATE",
        "STOCK",
        "GRANTED",
        "REMAINING",
        "RATE/MIN",
        "PREDICTED RUN-OUT"
    );
    for c in coupons {
        let rate = rates.get(&c.id).copied().unwrap_or(0.0);
        let run_out = predicted_run_out(c.remaining, rate, now)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| {
                if c.remaining == 0 {
                    "out of stock".into()
                } else {
                    "-".into()
                }
            });
        let codes = match coupon_config(&installation.config, &c.id).and_then(|k| k.codes.as_ref())
        {
            Some(CodeSource::Pool) => "pool",
            Some(CodeSource::Generate(_)) => "generated",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<8} {:>9} {:>9} {:>9} {:>9.1}  {:<23}  {}",
            c.campaign_id,
            c.id,
            c.state,
            c.stock,
            c.granted,
            c.remaining,
            rate * 60.0,
            run_out,
            codes
        );
    }
    Ok(out)
}

fn coupon_config<'a>(config: &'a Config, coupon: &str) -> Option<&'a CouponConfig> {
    config
        .campaigns
        .iter()
        .flat_map(|k| &k.coupons)
        .find(|c| c.id.as_str() == coupon)
}

fn campaign_of(config: &Config, coupon: &str) -> Result<String, OpsError> {
    config
        .campaigns
        .iter()
        .find(|k| k.coupons.iter().any(|c| c.id.as_str() == coupon))
        .map(|k| k.id.to_string())
        .ok_or_else(|| {
            OpsError::Refused(format!(
                "unknown coupon {coupon:?}: not in the config's campaigns"
            ))
        })
}

/// Adds `count` to a coupon's stock. A retired coupon stays retired.
pub async fn add(
    installation: &Installation,
    coupon: &str,
    count: i64,
) -> Result<String, OpsError> {
    if count <= 0 {
        return Err(OpsError::Refused(format!(
            "stock add {coupon}: the count must be positive, got {count}"
        )));
    }
    let campaign = campaign_of(&installation.config, coupon)?;
    if coupon_config(&installation.config, coupon).is_some_and(CouponConfig::is_pool) {
        return Err(OpsError::Refused(format!(
            "stock add {coupon}: {coupon} is a pool coupon, its stock is its imported codes: \
             use couponsd codes import {coupon} FILE"
        )));
    }
    {
        // Given back before `show` takes one: SQLite's pool has one connection.
        let mut conn = installation.db.get().await?;
        conn.add_stock(coupon, count)
            .await
            .map_err(StoreError::from)?;
        conn.clear_alerted(&campaign, AlertMark::Exhausted)
            .await
            .map_err(StoreError::from)?;
    }
    Ok(format!(
        "added {count} to {coupon}\n{}",
        show(installation).await?
    ))
}

/// Brings a retired coupon back into selection.
pub async fn activate(installation: &Installation, coupon: &str) -> Result<String, OpsError> {
    campaign_of(&installation.config, coupon)?;
    let coupons = installation
        .db
        .get()
        .await?
        .coupon_stock()
        .await
        .map_err(StoreError::from)?;
    match coupons.iter().find(|c| c.id == coupon).map(|c| c.state) {
        Some(CouponState::Retired) => {}
        Some(state) => {
            return Err(OpsError::Refused(format!(
                "coupon {coupon} is {state}, not retired"
            )))
        }
        None => {
            return Err(OpsError::Refused(format!(
                "coupon {coupon} is not in the database: run `couponsd migrate`"
            )))
        }
    }
    installation
        .db
        .get()
        .await?
        .set_coupon_state(coupon, CouponState::Active, crate::store::now())
        .await
        .map_err(StoreError::from)?;
    Ok(format!(
        "{coupon} is active again\n{}",
        show(installation).await?
    ))
}
