//! `simulate`'s text: what a request would come to, one labelled line per step.

use std::fmt::Write as _;

use super::{CodeFrom, Simulation};

/// The simulation as text.
pub(super) fn render(s: &Simulation) -> String {
    let mut out = String::new();
    let attributes = serde_json::Value::Object(s.attributes.clone());
    let _ = writeln!(
        out,
        "simulate  user {} event {} attributes {attributes}  (dry run: nothing is written)",
        s.user_id, s.event
    );
    let _ = writeln!(out, "rules     version {}", s.rules_version);
    let h = &s.history;
    let by_campaign: Vec<String> = h
        .grants_by_campaign
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let redeemed = match (h.redeemed_for_event, &h.last_redeemed_at) {
        (0, _) => String::new(),
        (n, last) => format!(
            "; redeemed {n}, last {}",
            last.as_deref().unwrap_or("never")
        ),
    };
    let _ = writeln!(
        out,
        "history   {} grant(s) for {}; last {}; by campaign: {}{redeemed}",
        h.grants_for_event,
        s.event,
        h.last_grant_at.as_deref().unwrap_or("never"),
        if by_campaign.is_empty() {
            "none".to_owned()
        } else {
            by_campaign.join(", ")
        }
    );
    for line in &h.recent {
        let _ = writeln!(out, "          {line}");
    }
    let user_type = s.user_type.as_deref().unwrap_or("(none: the rule failed)");
    let _ = writeln!(
        out,
        "user type {user_type}  (decided by {})",
        s.user_type_rule
    );
    let campaign = s.campaign.as_deref().unwrap_or("(none)");
    let _ = writeln!(out, "campaign  {campaign}");
    if !s.coupons.is_empty() {
        let _ = writeln!(
            out,
            "coupons   {:<12} {:>10} {:>10}  {:<10} STATE",
            "COUPON", "FACE", "REMAINING", "CHANNEL"
        );
        for c in &s.coupons {
            let state = match (&c.unusable, c.retired) {
                (_, true) => "retired".to_owned(),
                (Some(why), false) => format!("active, but {why}"),
                (None, false) => "active".to_owned(),
            };
            let _ = writeln!(
                out,
                "          {:<12} {:>10} {:>10}  {:<10} {state}",
                c.id, c.face_value, c.remaining, c.channel
            );
        }
    }
    match (&s.coupon, &s.channel) {
        (Some(coupon), Some(channel)) => {
            let _ = writeln!(
                out,
                "outcome   granted: coupon {coupon} via channel {channel}  (chosen by {})",
                s.coupon_rule
            );
        }
        _ => {
            let _ = writeln!(out, "outcome   {}", s.outcome);
        }
    }
    match &s.code {
        Some(CodeFrom::Generate { pattern }) => {
            let _ = writeln!(
                out,
                "code      generated from {pattern}  (a dry run generates none)"
            );
        }
        Some(CodeFrom::Pool { available }) => {
            let _ = writeln!(
                out,
                "code      drawn from the pool ({available} available)  (a dry run draws none)"
            );
        }
        None => {}
    }
    if let (Some(from), Some(until)) = (&s.valid_from, &s.expires_at) {
        let _ = writeln!(out, "validity  from {from} until {until}");
    }
    if let Some(detail) = &s.detail {
        let _ = writeln!(out, "detail    {detail}");
    }
    if let Some(error) = &s.error {
        let _ = writeln!(out, "error     {error}");
    }
    out
}
