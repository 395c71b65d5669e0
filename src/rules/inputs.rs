//! The values a rule sees (`request`, `history`, `campaign`, `coupons`), built from
//! domain types by hand: this runs twice per request, and a serde round trip would cost
//! more than the rule itself.

use rhai::{Array, Dynamic, Map, FLOAT};

/// A map from entries given in key order: one bulk build of the tree instead of an
/// insert per key (building inputs is most of an evaluation's cost; BENCHMARKS.md).
fn map<const N: usize>(entries: [(&str, Dynamic); N]) -> Dynamic {
    debug_assert!(entries.is_sorted_by_key(|(key, _)| *key), "keys in order");
    Dynamic::from_map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

use crate::domain::{CampaignView, CouponView, History, TriggerRequest};

/// `request`: `key`, `user_id`, `event`, and `attributes` (the JSON object as a map).
pub(super) fn request(request: &TriggerRequest) -> Dynamic {
    map([
        ("attributes", json_object(&request.attributes)),
        ("event", request.event.as_str().into()),
        ("key", request.key.as_str().into()),
        ("user_id", request.user_id.as_str().into()),
    ])
}

/// `history`: `grants_for_event`, `last_grant_at` (RFC 3339 text or `()`),
/// `grants_by_campaign` (campaign id → count), `redeemed_for_event` and
/// `last_redeemed_at` (RFC 3339 text or `()`).
pub(super) fn history(history: &History) -> Dynamic {
    let by_campaign: Map = history
        .grants_by_campaign
        .iter()
        .map(|(id, count)| (id.as_str().into(), Dynamic::from_int(*count)))
        .collect();
    let time = |at: Option<chrono::DateTime<chrono::Utc>>| match at {
        Some(at) => super::functions::now(at).into(),
        None => Dynamic::UNIT,
    };
    map([
        ("grants_by_campaign", Dynamic::from_map(by_campaign)),
        ("grants_for_event", history.grants_for_event.into()),
        ("last_grant_at", time(history.last_grant_at)),
        ("last_redeemed_at", time(history.last_redeemed_at)),
        ("redeemed_for_event", history.redeemed_for_event.into()),
    ])
}

/// `campaign`: `id`, `event`, `audience`, `per_user_limit`.
pub(super) fn campaign(campaign: &CampaignView) -> Dynamic {
    map([
        ("audience", campaign.audience.as_str().into()),
        ("event", campaign.event.as_str().into()),
        ("id", campaign.id.as_str().into()),
        ("per_user_limit", campaign.per_user_limit.into()),
    ])
}

/// `coupons`: the chain in order, each `id`, `face_value` ("10.00"),
/// `face_value_cents`, `remaining`, `channel`, `valid_until` (RFC 3339, or `()`).
pub(super) fn coupons(coupons: &[CouponView]) -> Dynamic {
    let array: Array = coupons
        .iter()
        .map(|coupon| {
            map([
                ("channel", coupon.channel.as_str().into()),
                ("face_value", coupon.face_value.to_string().into()),
                ("face_value_cents", coupon.face_value.cents().into()),
                ("id", coupon.id.as_str().into()),
                ("remaining", coupon.remaining.into()),
                (
                    "valid_until",
                    coupon
                        .valid_until
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true).into())
                        .unwrap_or(Dynamic::UNIT),
                ),
            ])
        })
        .collect();
    Dynamic::from_array(array)
}

fn json_object(object: &serde_json::Map<String, serde_json::Value>) -> Dynamic {
    let map: Map = object
        .iter()
        .map(|(key, value)| (key.as_str().into(), json(value)))
        .collect();
    Dynamic::from_map(map)
}

/// Integers stay integers; other numbers become floats. Depth needs no guard: the
/// attributes were parsed by serde_json, which refuses nesting past 128 levels.
fn json(value: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(FLOAT::NAN)),
        },
        Value::String(s) => s.as_str().into(),
        Value::Array(items) => Dynamic::from_array(items.iter().map(json).collect()),
        Value::Object(object) => json_object(object),
    }
}
