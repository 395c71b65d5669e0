//! `rules:` and `rules.limits`: where the scripts are and what one evaluation may take,
//! checked against each other so that a limit cannot be set that another one defeats.

use std::path::PathBuf;

use super::raw::{RawBytes, RawRuleLimits, RawRules};
use super::validate::Ctx;
use super::{ConfigError, RuleLimits, RulesConfig};

pub(super) fn rules(raw: RawRules, ctx: &Ctx<'_>) -> Result<RulesConfig, ConfigError> {
    let dir = raw.dir.unwrap_or_else(|| PathBuf::from("rules"));
    if dir.as_os_str().is_empty() {
        return Err(ctx.invalid("rules.dir", "is empty"));
    }
    Ok(RulesConfig {
        dir: if dir.is_absolute() {
            dir
        } else {
            ctx.dir.join(dir)
        },
        limits: rule_limits(raw.limits.unwrap_or_default(), ctx)?,
    })
}

/// Rhai reads 0 as "no limit" for most of these, and limits are always on, so 0 is
/// refused rather than passed through. The size limits must fit in `max_memory`.
fn rule_limits(raw: RawRuleLimits, ctx: &Ctx<'_>) -> Result<RuleLimits, ConfigError> {
    let d = RuleLimits::default();
    let key = |name: &str| format!("rules.limits.{name}");
    let limits = RuleLimits {
        max_operations: ctx.at_least(
            &key("max_operations"),
            raw.max_operations,
            d.max_operations,
            1,
        )?,
        max_call_depth: ctx.at_least(
            &key("max_call_depth"),
            raw.max_call_depth,
            d.max_call_depth,
            1,
        )?,
        max_string_size: ctx.at_least(
            &key("max_string_size"),
            raw.max_string_size,
            d.max_string_size,
            1,
        )?,
        max_array_size: ctx.at_least(
            &key("max_array_size"),
            raw.max_array_size,
            d.max_array_size,
            1,
        )?,
        max_map_size: ctx.at_least(&key("max_map_size"), raw.max_map_size, d.max_map_size, 1)?,
        max_time: ctx.positive(&key("max_time"), raw.max_time, d.max_time)?,
        max_memory: max_memory(raw.max_memory, ctx)?,
    };
    fits_in_max_memory(&limits, ctx)?;
    Ok(limits)
}

/// `rules.limits.max_memory` lies in this range: from 8 MiB the default size limits
/// fit (10,000 items at 64 bytes in an eighth needs 5 MB), so lowering it alone never
/// refuses a config; above 1 GiB it is not a bound for one rule evaluation but a typo.
const MAX_MEMORY_RANGE: std::ops::RangeInclusive<usize> = (8 << 20)..=(1 << 30);

fn max_memory(raw: Option<RawBytes>, ctx: &Ctx<'_>) -> Result<usize, ConfigError> {
    const KEY: &str = "rules.limits.max_memory";
    let bytes = match raw {
        None => return Ok(RuleLimits::default().max_memory),
        Some(RawBytes::Count(n)) => Some(n),
        Some(RawBytes::Text(text)) => parse_bytes(&text).ok_or_else(|| {
            ctx.invalid(
                KEY,
                format!("{text:?} is not a size: write bytes, or a number with B, KiB, MiB or GiB (\"16MiB\")"),
            )
        })?,
    };
    let bytes = bytes.and_then(|n| usize::try_from(n).ok());
    match bytes {
        Some(n) if MAX_MEMORY_RANGE.contains(&n) => Ok(n),
        _ => Err(ctx.invalid(
            KEY,
            format!(
                "must be between 8MiB and 1GiB, got {}",
                bytes.map_or_else(|| "more".to_owned(), |n| format!("{n} bytes"))
            ),
        )),
    }
}

/// `"16MiB"`, `"512 KiB"`, `"1GiB"`, `"4096B"` or `"4096"` in bytes; `None` for
/// anything else, `Some(None)` for a size that overflows. Decimal units (`MB`) are
/// refused rather than guessed at.
fn parse_bytes(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    Some(number.checked_mul(1 << shift))
}

/// Refuses a string, array or map limit larger than `max_memory` allows for one value
/// (see [`RuleLimits::value_share`]), naming the limit.
fn fits_in_max_memory(limits: &RuleLimits, ctx: &Ctx<'_>) -> Result<(), ConfigError> {
    let share = format!(
        "an eighth of rules.limits.max_memory, {} bytes",
        limits.max_memory
    );
    let items = format!("{share}, at {} bytes each", RuleLimits::ITEM_BYTES);
    let (string_cap, item_cap) = (limits.string_size_cap(), limits.item_count_cap());
    for (name, value, cap, unit, why) in [
        (
            "max_string_size",
            limits.max_string_size,
            string_cap,
            "bytes",
            &share,
        ),
        (
            "max_array_size",
            limits.max_array_size,
            item_cap,
            "items",
            &items,
        ),
        (
            "max_map_size",
            limits.max_map_size,
            item_cap,
            "entries",
            &items,
        ),
    ] {
        if value > cap {
            return Err(ctx.invalid(
                format!("rules.limits.{name}"),
                format!("must be at most {cap} {unit} ({why}), got {value}; raise max_memory or lower {name}"),
            ));
        }
    }
    Ok(())
}
