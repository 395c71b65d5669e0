//! The overview's tables besides the chains: alerts, rotations, deliveries dead or
//! held per channel, and the lifecycle figures of the report.

use std::fmt::Write as _;

use chrono::NaiveDateTime;

use super::html::esc;
use super::page::View;
use super::snapshot::Snapshot;
use crate::domain::Money;
use crate::ops::report::{budget_text, redemption_rate};
use crate::store::report::Figures;

pub(super) fn hm(at: NaiveDateTime) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

pub(super) fn alerts(snapshot: &Snapshot) -> String {
    let mut items = String::new();
    for m in &snapshot.marks {
        if let Some(at) = m.exhausted_at {
            let _ = write!(
                items,
                "<li class=\"bad\">campaign {} exhausted since {}</li>",
                esc(&m.campaign_id),
                hm(at)
            );
        }
        if let Some(at) = m.budget_reached_at {
            let _ = write!(
                items,
                "<li class=\"warn\">campaign {} reached its budget at {}</li>",
                esc(&m.campaign_id),
                hm(at)
            );
        }
    }
    for coupon in &snapshot.running_low {
        let _ = write!(
            items,
            "<li class=\"warn\">coupon {} is running low at its grant rate</li>",
            esc(coupon)
        );
    }
    for d in &snapshot.disabled {
        let _ = write!(
            items,
            "<li class=\"bad\">channel {} disabled{} ({})</li>",
            esc(&d.channel),
            d.disabled_at
                .map(|t| format!(" since {}", hm(t)))
                .unwrap_or_default(),
            esc(d.reason.as_deref().unwrap_or("no reason recorded"))
        );
    }
    match items.is_empty() {
        true => "<h3>Alerts</h3><p class=\"muted\">No alert stands.</p>".to_owned(),
        false => format!("<h3>Alerts</h3><ul class=\"alerts\">{items}</ul>"),
    }
}

pub(super) fn rotations(snapshot: &Snapshot, coupon: Option<&str>) -> String {
    let mut rows = String::new();
    let shown = snapshot
        .rotations
        .iter()
        .filter(|r| coupon.is_none_or(|c| r.from_coupon == c || r.to_coupon.as_deref() == Some(c)));
    for r in shown {
        let _ = write!(
            rows,
            "<tr class=\"rotation\"><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td class=\"n\">{}</td></tr>",
            r.rotated_at.format("%Y-%m-%d %H:%M:%S"),
            esc(&r.campaign_id),
            esc(&r.from_coupon),
            esc(r.to_coupon.as_deref().unwrap_or("nothing")),
            esc(&r.reason),
            r.remaining
        );
    }
    if rows.is_empty() {
        return "<h3>Recent rotations</h3><p class=\"muted\">No rotation in the last 6 hours.</p>"
            .to_owned();
    }
    format!(
        "<h3>Recent rotations</h3><table><tr><th>At (UTC)</th><th>Campaign</th><th>Rotation</th>\
         <th>Reason</th><th class=\"n\">Left</th></tr>{rows}</table>"
    )
}

pub(super) fn deliveries(out: &mut String, view: &View<'_>, snapshot: &Snapshot) {
    out.push_str(
        "<h2 id=\"deliveries\">Deliveries dead or held</h2><div class=\"card\"><table class=\"channels\">\
         <tr><th>Channel</th><th>State</th><th class=\"n\">Held</th><th class=\"n\">Dead</th></tr>",
    );
    let count = |list: &[(String, i64)], name: &str| {
        list.iter().find(|(c, _)| c == name).map_or(0, |(_, n)| *n)
    };
    let mut names: Vec<String> = view
        .catalog
        .channels
        .keys()
        .map(|c| c.to_string())
        .collect();
    for extra in snapshot
        .disabled
        .iter()
        .map(|d| &d.channel)
        .chain(snapshot.dead.iter().map(|(c, _)| c))
    {
        if !names.contains(extra) {
            names.push(extra.clone());
        }
    }
    for name in &names {
        let state = match snapshot.disabled.iter().find(|d| &d.channel == name) {
            Some(_) => "<span class=\"badge bad\">disabled</span>",
            None => "<span class=\"badge s-active\">enabled</span>",
        };
        let _ = write!(
            out,
            "<tr data-channel=\"{}\"><td>{}</td><td>{state}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(name),
            esc(name),
            count(&snapshot.held, name),
            count(&snapshot.dead, name)
        );
    }
    out.push_str("</table>");
    if snapshot.newest_dead.is_empty() {
        out.push_str("<p class=\"muted\">No dead deliveries.</p></div>");
        return;
    }
    out.push_str(
        "<h3>Newest dead deliveries</h3><table class=\"dead\"><tr><th class=\"n\">Id</th><th>Channel</th>\
         <th>Event</th><th class=\"n\">Attempts</th><th class=\"n\">Last</th><th>Created (UTC)</th><th>Last error</th></tr>",
    );
    for d in &snapshot.newest_dead {
        let error: String = d
            .last_error
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(120)
            .collect();
        let _ = write!(
            out,
            "<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            d.id,
            esc(&d.channel),
            esc(&d.event_type),
            d.attempts,
            d.last_status.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            d.created_at.format("%Y-%m-%d %H:%M:%S"),
            esc(&error)
        );
    }
    out.push_str("</table></div>");
}

pub(super) fn lifecycle(out: &mut String, snapshot: &Snapshot) {
    let (report, read_at) = &*snapshot.report;
    let _ = write!(
        out,
        "<h2 id=\"lifecycle\">Lifecycle</h2><div class=\"card\"><p class=\"muted\">Every grant, as \
         <code>couponsd report</code> counts it; read at {} UTC (at most once a minute).</p>",
        read_at.format("%H:%M:%S")
    );
    if report.campaigns.is_empty() {
        out.push_str("<p class=\"muted\">No grants yet.</p></div>");
        return;
    }
    out.push_str(
        "<table class=\"lifecycle\"><tr><th>Campaign</th><th>Coupon</th><th class=\"n\">Granted</th>\
         <th class=\"n\">Redeemed</th><th class=\"n\">Rate</th><th class=\"n\">Revoked</th><th class=\"n\">Expired</th>\
         <th class=\"n\">Value</th><th class=\"n\">Redeemed value</th><th>Budget used</th></tr>",
    );
    for k in &report.campaigns {
        let budget = budget_text(k);
        figures_row(out, &k.campaign, "all", &k.figures, &budget);
        for c in &k.coupons {
            figures_row(out, &k.campaign, &c.coupon, &c.figures, "");
        }
    }
    out.push_str("</table></div>");
}

fn figures_row(out: &mut String, campaign: &str, coupon: &str, f: &Figures, budget: &str) {
    let _ = write!(
        out,
        "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}%</td>\
         <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
        esc(campaign),
        esc(coupon),
        f.granted,
        f.redeemed,
        redemption_rate(f) * 100.0,
        f.revoked,
        f.expired,
        Money::from_cents(f.granted_face_value_cents),
        Money::from_cents(f.redeemed_face_value_cents),
        esc(budget)
    );
}
