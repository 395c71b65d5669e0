//! The values a rule sees (`request`, `history`, `campaign`, `coupons`), built from
//! domain types by hand: this runs twice per request, and a serde round trip would cost
//! more than the rule itself.

use rhai::{Array, Dynamic, Map, FLOAT};

use crate::domain::{CampaignView, CouponView, History, TriggerRequest};

/// `request`: `key`, `user_id`, `event`, and `attributes` (the JSON object as a map).
pub(super) fn request(request: &TriggerRequest) -> Dynamic {
    let mut map = Map::new();
    map.insert("key".into(), request.key.as_str().into());
    map.insert("user_id".into(), request.user_id.as_str().into());
    map.insert("event".into(), request.event.as_str().into());
    map.insert("attributes".into(), json_object(&request.attributes));
    Dynamic::from_map(map)
}

/// `history`: `grants_for_event`, `last_grant_at` (RFC 3339 text or `()`), and
/// `grants_by_campaign` (campaign id → count).
pub(super) fn history(history: &History) -> Dynamic {
    let by_campaign: Map = history
        .grants_by_campaign
        .iter()
        .map(|(id, count)| (id.as_str().into(), Dynamic::from_int(*count)))
        .collect();
    let last_grant_at = match history.last_grant_at {
        Some(at) => super::functions::now(at).into(),
        None => Dynamic::UNIT,
    };
    let mut map = Map::new();
    map.insert("grants_for_event".into(), history.grants_for_event.into());
    map.insert("last_grant_at".into(), last_grant_at);
    map.insert("grants_by_campaign".into(), Dynamic::from_map(by_campaign));
    Dynamic::from_map(map)
}

/// `campaign`: `id`, `event`, `audience`, `per_user_limit`.
pub(super) fn campaign(campaign: &CampaignView) -> Dynamic {
    let mut map = Map::new();
    map.insert("id".into(), campaign.id.as_str().into());
    map.insert("event".into(), campaign.event.as_str().into());
    map.insert("audience".into(), campaign.audience.as_str().into());
    map.insert("per_user_limit".into(), campaign.per_user_limit.into());
    Dynamic::from_map(map)
}

/// `coupons`: the chain in order, each `id`, `face_value` ("10.00"),
/// `face_value_cents`, `remaining`, `channel`.
pub(super) fn coupons(coupons: &[CouponView]) -> Dynamic {
    let array: Array = coupons
        .iter()
        .map(|coupon| {
            let mut map = Map::new();
            map.insert("id".into(), coupon.id.as_str().into());
            map.insert("face_value".into(), coupon.face_value.to_string().into());
            map.insert("face_value_cents".into(), coupon.face_value.cents().into());
            map.insert("remaining".into(), coupon.remaining.into());
            map.insert("channel".into(), coupon.channel.as_str().into());
            Dynamic::from_map(map)
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
