//! `campaigns:`: who gets what for which event, and each campaign's rotation chain of
//! coupons. Ids are checked for uniqueness here (coupon ids across all campaigns, as
//! stock is kept per coupon id), and every coupon's channel must exist.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

use super::channels::{self, Channels};
use super::raw::{RawCampaign, RawCodes, RawCoupon, RawMoney};
use super::validate::Ctx;
use super::{CampaignConfig, ConfigError, CouponConfig};
use crate::domain::codes::{CodePattern, CodeSource, Validity};
use crate::domain::{CampaignId, CouponId, Event, Money, UserType};

/// Where each id was first seen, to name both places when one is used twice.
#[derive(Default)]
struct Seen {
    campaigns: HashMap<CampaignId, String>,
    coupons: HashMap<CouponId, String>,
}

/// Validates every campaign, keeping config order.
pub(super) fn campaigns(
    raw: Vec<RawCampaign>,
    channels: &Channels,
    ctx: &Ctx<'_>,
) -> Result<Vec<CampaignConfig>, ConfigError> {
    let mut seen = Seen::default();
    raw.into_iter()
        .enumerate()
        .map(|(i, campaign)| {
            self::campaign(
                &format!("campaigns[{i}]"),
                campaign,
                channels,
                &mut seen,
                ctx,
            )
        })
        .collect()
}

fn campaign(
    base: &str,
    raw: RawCampaign,
    channels: &Channels,
    seen: &mut Seen,
    ctx: &Ctx<'_>,
) -> Result<CampaignConfig, ConfigError> {
    let id_key = format!("{base}.id");
    let id = ctx.domain(&id_key, &raw.id, CampaignId::parse)?;
    if let Some(first) = seen.campaigns.get(&id) {
        return Err(ctx.invalid(
            &id_key,
            format!("campaign id {:?} is already used at {first}", raw.id),
        ));
    }
    seen.campaigns.insert(id.clone(), id_key);
    let event = ctx.domain(&format!("{base}.event"), &raw.event, Event::parse)?;
    let audience = ctx.domain(&format!("{base}.audience"), &raw.audience, UserType::parse)?;
    let per_user_limit =
        ctx.at_least(&format!("{base}.per_user_limit"), raw.per_user_limit, 1, 1)?;
    let starts_at = time(ctx, &format!("{base}.starts_at"), raw.starts_at.as_deref())?;
    let ends_at = time(ctx, &format!("{base}.ends_at"), raw.ends_at.as_deref())?;
    if let (Some(start), Some(end)) = (starts_at, ends_at) {
        if start >= end {
            return Err(ctx.invalid(
                format!("{base}.starts_at"),
                format!(
                    "{} must be before ends_at {}",
                    start.to_rfc3339(),
                    end.to_rfc3339()
                ),
            ));
        }
    }
    let budget = match &raw.budget {
        Some(money) => Some(self::money(ctx, &format!("{base}.budget"), money)?),
        None => None,
    };
    let daily_budget = match &raw.daily_budget {
        Some(money) => Some(self::money(ctx, &format!("{base}.daily_budget"), money)?),
        None => None,
    };
    let timezone = timezone(ctx, &format!("{base}.timezone"), raw.timezone.as_deref())?;
    let per_user_limit_period = span(
        ctx,
        &format!("{base}.per_user_limit_period"),
        raw.per_user_limit_period,
    )?;
    if raw.coupons.is_empty() {
        return Err(ctx.invalid(
            format!("{base}.coupons"),
            "is empty; a campaign needs at least one coupon",
        ));
    }
    let coupons = raw
        .coupons
        .into_iter()
        .enumerate()
        .map(|(j, coupon)| {
            self::coupon(&format!("{base}.coupons[{j}]"), coupon, channels, seen, ctx)
        })
        .collect::<Result<_, _>>()?;
    Ok(CampaignConfig {
        id,
        event,
        audience,
        per_user_limit,
        per_user_limit_period,
        daily_budget,
        timezone,
        starts_at,
        ends_at,
        budget,
        coupons,
    })
}

fn coupon(
    base: &str,
    raw: RawCoupon,
    channels: &Channels,
    seen: &mut Seen,
    ctx: &Ctx<'_>,
) -> Result<CouponConfig, ConfigError> {
    let id_key = format!("{base}.id");
    let id = ctx.domain(&id_key, &raw.id, CouponId::parse)?;
    if let Some(first) = seen.coupons.get(&id) {
        return Err(ctx.invalid(
            &id_key,
            format!("coupon id {:?} is already used at {first}", raw.id),
        ));
    }
    seen.coupons.insert(id.clone(), id_key);
    let codes = codes(ctx, base, raw.codes.as_ref())?;
    let stock = match (raw.stock, &codes) {
        (Some(_), Some(CodeSource::Pool)) => {
            return Err(ctx.invalid(
                format!("{base}.stock"),
                "is not allowed with codes.pool: the stock of a pool coupon is its imported \
                 codes (couponsd codes import)",
            ))
        }
        (None, Some(CodeSource::Pool)) => 0,
        (None, _) => {
            return Err(ctx.invalid(
                format!("{base}.stock"),
                "is missing: give the coupon a stock, or codes.pool: true",
            ))
        }
        (Some(stock), _) => ctx.at_least(&format!("{base}.stock"), Some(stock), 0, 0)?,
    };
    if let Some(CodeSource::Generate(pattern)) = &codes {
        let needed = 1_000_000u128 * stock.max(1) as u128;
        if pattern.capacity() < needed {
            return Err(ctx.invalid(
                format!("{base}.codes.generate"),
                format!(
                    "{:?} makes {} codes, under 1,000,000 x the stock {stock}: a generated code \
                     would be too easy to guess; add X places",
                    pattern.as_str(),
                    pattern.capacity()
                ),
            ));
        }
    }
    Ok(CouponConfig {
        id,
        face_value: money(ctx, &format!("{base}.face_value"), &raw.face_value)?,
        stock,
        low_stock: ctx.at_least(&format!("{base}.low_stock"), raw.low_stock, 0, 0)?,
        channel: channels::reference(ctx, &format!("{base}.channel"), &raw.channel, channels)?,
        codes,
        remind_before: remind_before(ctx, base, &raw)?,
        validity: validity(ctx, base, &raw)?,
    })
}

/// `remind_before`: only for a coupon whose grants expire.
fn remind_before(
    ctx: &Ctx<'_>,
    base: &str,
    raw: &RawCoupon,
) -> Result<Option<Duration>, ConfigError> {
    let key = format!("{base}.remind_before");
    let remind = span(ctx, &key, raw.remind_before)?;
    if remind.is_some() && raw.valid_for.is_none() && raw.valid_until.is_none() {
        return Err(ctx.invalid(
            key,
            "needs valid_for or valid_until: the coupon's grants never expire",
        ));
    }
    Ok(remind)
}

/// An optional positive duration.
fn span(
    ctx: &Ctx<'_>,
    key: &str,
    raw: Option<std::time::Duration>,
) -> Result<Option<Duration>, ConfigError> {
    match raw {
        None => Ok(None),
        Some(d) if d.is_zero() => Err(ctx.invalid(key, "must not be zero")),
        Some(d) => Duration::from_std(d)
            .map(Some)
            .map_err(|_| ctx.invalid(key, "is too long")),
    }
}

/// An IANA time zone name; UTC when not set.
fn timezone(ctx: &Ctx<'_>, key: &str, raw: Option<&str>) -> Result<Tz, ConfigError> {
    let Some(name) = raw else {
        return Ok(Tz::UTC);
    };
    name.trim().parse::<Tz>().map_err(|_| {
        ctx.invalid(
            key,
            format!("{name:?} is not an IANA time zone name like \"Asia/Shanghai\" or \"UTC\""),
        )
    })
}

/// `codes`: exactly one of `generate` and `pool: true`.
fn codes(
    ctx: &Ctx<'_>,
    base: &str,
    raw: Option<&RawCodes>,
) -> Result<Option<CodeSource>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    match (&raw.generate, raw.pool) {
        (Some(_), Some(true)) => Err(ctx.invalid(
            format!("{base}.codes"),
            "has both generate and pool: a coupon's codes come from one of them",
        )),
        (Some(pattern), _) => {
            let key = format!("{base}.codes.generate");
            CodePattern::parse(pattern)
                .map(|p| Some(CodeSource::Generate(p)))
                .map_err(|reason| ctx.invalid(key, reason))
        }
        (None, Some(true)) => Ok(Some(CodeSource::Pool)),
        (None, _) => Err(ctx.invalid(
            format!("{base}.codes"),
            "needs generate: \"PATTERN\" or pool: true",
        )),
    }
}

/// `valid_for`, `valid_until`, `min_validity`.
fn validity(ctx: &Ctx<'_>, base: &str, raw: &RawCoupon) -> Result<Validity, ConfigError> {
    let span = |key: &str, d: Option<std::time::Duration>| {
        d.map(|d| {
            Duration::from_std(d).map_err(|_| ctx.invalid(format!("{base}.{key}"), "is too long"))
        })
        .transpose()
    };
    let valid_for = span("valid_for", raw.valid_for)?;
    if valid_for == Some(Duration::zero()) {
        return Err(ctx.invalid(format!("{base}.valid_for"), "must not be zero"));
    }
    let min_validity = span("min_validity", raw.min_validity)?.unwrap_or_default();
    let valid_until = time(
        ctx,
        &format!("{base}.valid_until"),
        raw.valid_until.as_deref(),
    )?;
    if valid_for.is_some_and(|v| v < min_validity) {
        return Err(ctx.invalid(
            format!("{base}.min_validity"),
            "is longer than valid_for: the coupon could never be granted",
        ));
    }
    Ok(Validity {
        valid_for,
        valid_until,
        min_validity,
    })
}

fn money(ctx: &Ctx<'_>, key: &str, raw: &RawMoney) -> Result<Money, ConfigError> {
    ctx.domain(key, &raw.0, Money::parse)
}

/// An optional RFC 3339 time, kept in UTC.
fn time(ctx: &Ctx<'_>, key: &str, raw: Option<&str>) -> Result<Option<DateTime<Utc>>, ConfigError> {
    let Some(text) = raw else {
        return Ok(None);
    };
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|e| {
            ctx.invalid(
                key,
                format!("{text:?} is not an RFC 3339 time like 2026-12-01T00:00:00Z: {e}"),
            )
        })
}
