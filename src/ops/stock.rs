//! `couponsd stock show|add|activate`: the inventory as ops see it, restocking, and
//! bringing a retired coupon back into selection (only ever by this explicit command).

use std::fmt::Write as _;

use crate::app::AppError;
use crate::config::Config;
use crate::domain::CouponState;
use crate::runtime::Daemon;
use crate::schedule::inventory::{current_rates, predicted_run_out};
use crate::store::schedule::AlertMark;
use crate::store::{Access, StoreError};
use crate::with_conn;

/// `couponsd stock …`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum StockAction {
    /// A table of every coupon: state, stock, granted, remaining, rate, run-out.
    Show,
    /// Add N to a coupon's stock (a retired coupon stays retired).
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
pub async fn run(ctx: &Daemon, action: StockAction) -> Result<String, AppError> {
    match action {
        StockAction::Show => show(ctx).await,
        StockAction::Add { coupon, count } => add(ctx, &coupon, count).await,
        StockAction::Activate { coupon } => activate(ctx, &coupon).await,
    }
}

/// Renders the stock table.
pub async fn show(ctx: &Daemon) -> Result<String, AppError> {
    let coupons = with_conn!(ctx.db, |conn| conn
        .coupon_stock()
        .await
        .map_err(StoreError::from)?);
    let rates = current_rates(&ctx.db).await?;
    let now = crate::store::now().and_utc();
    let mut out = format!("rules version {}\n", ctx.rules.current().version());
    let _ = writeln!(
        out,
        "{:<12} {:<10} {:<8} {:>9} {:>9} {:>9} {:>9}  PREDICTED RUN-OUT",
        "CAMPAIGN", "COUPON", "STATE", "STOCK", "GRANTED", "REMAINING", "RATE/MIN"
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
        let _ = writeln!(
            out,
            "{:<12} {:<10} {:<8} {:>9} {:>9} {:>9} {:>9.1}  {}",
            c.campaign_id,
            c.id,
            c.state,
            c.stock,
            c.granted,
            c.remaining,
            rate * 60.0,
            run_out
        );
    }
    Ok(out)
}

fn campaign_of(config: &Config, coupon: &str) -> Result<String, AppError> {
    config
        .campaigns
        .iter()
        .find(|k| k.coupons.iter().any(|c| c.id.as_str() == coupon))
        .map(|k| k.id.to_string())
        .ok_or_else(|| {
            AppError::Other(format!(
                "unknown coupon {coupon:?}: not in the config's campaigns"
            ))
        })
}

/// Adds `count` to a coupon's stock. A retired coupon stays retired.
pub async fn add(ctx: &Daemon, coupon: &str, count: i64) -> Result<String, AppError> {
    if count <= 0 {
        return Err(AppError::Other(format!(
            "stock add {coupon}: the count must be positive, got {count}"
        )));
    }
    let campaign = campaign_of(&ctx.config, coupon)?;
    with_conn!(ctx.db, |conn| {
        conn.add_stock(coupon, count)
            .await
            .map_err(StoreError::from)?;
        conn.clear_alerted(&campaign, AlertMark::Exhausted)
            .await
            .map_err(StoreError::from)?;
    });
    Ok(format!("added {count} to {coupon}\n{}", show(ctx).await?))
}

/// Brings a retired coupon back into selection.
pub async fn activate(ctx: &Daemon, coupon: &str) -> Result<String, AppError> {
    campaign_of(&ctx.config, coupon)?;
    let coupons = with_conn!(ctx.db, |conn| conn
        .coupon_stock()
        .await
        .map_err(StoreError::from)?);
    match coupons.iter().find(|c| c.id == coupon).map(|c| c.state) {
        Some(CouponState::Retired) => {}
        Some(state) => {
            return Err(AppError::Other(format!(
                "coupon {coupon} is {state}, not retired"
            )))
        }
        None => {
            return Err(AppError::Other(format!(
                "coupon {coupon} is not in the database: run `couponsd migrate`"
            )))
        }
    }
    with_conn!(ctx.db, |conn| {
        conn.set_coupon_state(coupon, CouponState::Active, crate::store::now())
            .await
            .map_err(StoreError::from)?
    });
    Ok(format!("{coupon} is active again\n{}", show(ctx).await?))
}
