//! The console's pages as HTML: the overview (`GET /`) and one coupon's page (`GET
//! /coupons/{id}`), rendered from a [`Snapshot`] and the catalog in force. Every
//! value that came from the config or the database is escaped.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::actions::{self, FormKeys};
use super::html::{document, esc};
use super::plot::{burn_down, Frame};
use super::snapshot::{Snapshot, PLOT_WINDOW};
use super::tables::{alerts, deliveries, hm, lifecycle, rotations};
use crate::config::Config;
use crate::domain::chain::CouponStock;
use crate::schedule::inventory::predicted_run_out;

/// What a page needs besides the snapshot.
pub struct View<'a> {
    /// The config whose campaigns and channels are in force.
    pub catalog: Arc<Config>,
    /// The rules' version in force.
    pub rules_version: String,
    /// The actions' form tokens.
    pub forms: &'a FormKeys,
}

/// The size of the plots on the overview.
const SMALL: (u32, u32) = (260, 64);
/// The size of the plot on a coupon's page.
const LARGE: (u32, u32) = (900, 260);

fn frame(snapshot: &Snapshot, (width, height): (u32, u32)) -> Frame {
    let to = snapshot.taken_at.naive_utc();
    Frame {
        width,
        height,
        from: to - PLOT_WINDOW,
        to,
    }
}

/// The overview: campaigns and chains with their plots, rotations and alerts,
/// deliveries dead or held, the lifecycle figures, and the actions.
pub fn overview(view: &View<'_>, snapshot: &Snapshot) -> String {
    let mut main = header(view, snapshot);
    main.push_str("<main>");
    campaigns(&mut main, view, snapshot);
    let _ = write!(
        main,
        "<h2 id=\"alerts\">Rotations and alerts</h2><div class=\"grid\">\
         <div class=\"card\">{}</div><div class=\"card\">{}</div></div>",
        alerts(snapshot),
        rotations(snapshot, None)
    );
    deliveries(&mut main, view, snapshot);
    lifecycle(&mut main, snapshot);
    main.push_str(&actions::section(view, snapshot));
    main.push_str("</main>");
    document("Console", &main)
}

/// One coupon's page: its plot at full size, its figures and its rotations; `None`
/// for a coupon not in stock.
pub fn coupon(view: &View<'_>, snapshot: &Snapshot, id: &str) -> Option<String> {
    let c = snapshot.coupons.iter().find(|c| c.id == id)?;
    let mut main = header(view, snapshot);
    let _ = write!(
        main,
        "<main><h2>Coupon {} <small class=\"muted\">campaign {}</small></h2><div class=\"card\">",
        esc(&c.id),
        esc(&c.campaign_id)
    );
    main.push_str(&plot(snapshot, c, LARGE));
    main.push_str("<table>");
    chain_head(&mut main);
    chain_row(&mut main, snapshot, c);
    main.push_str("</table></div><div class=\"card\">");
    main.push_str(&rotations(snapshot, Some(id)));
    main.push_str("</div></main>");
    Some(document(&format!("Coupon {id}"), &main))
}

fn header(view: &View<'_>, snapshot: &Snapshot) -> String {
    let mode = match view.forms.enabled() {
        true => "actions need the console token",
        false => "read-only (no http.console_token)",
    };
    format!(
        "<header><h1><a href=\"/\">couponsd console</a></h1><nav>\
         <a href=\"/#campaigns\">Campaigns</a><a href=\"/#alerts\">Rotations and alerts</a>\
         <a href=\"/#deliveries\">Deliveries</a><a href=\"/#lifecycle\">Lifecycle</a>\
         <a href=\"/#actions\">Actions</a></nav><span class=\"meta\">rules {} · read at {} UTC · {mode}</span></header>",
        esc(&view.rules_version),
        snapshot.taken_at.format("%Y-%m-%d %H:%M:%S")
    )
}

fn campaigns(out: &mut String, view: &View<'_>, snapshot: &Snapshot) {
    let mut chains: HashMap<&str, Vec<&CouponStock>> = HashMap::new();
    for c in &snapshot.coupons {
        chains.entry(c.campaign_id.as_str()).or_default().push(c);
    }
    let _ = write!(
        out,
        "<h2 id=\"campaigns\">Campaigns ({})</h2>",
        view.catalog.campaigns.len()
    );
    for campaign in &view.catalog.campaigns {
        let id = campaign.id.as_str();
        let chain = chains.remove(id).unwrap_or_default();
        let marks = snapshot.marks.iter().find(|m| m.campaign_id == id);
        let mut badges = String::new();
        if let Some(at) = marks.and_then(|m| m.exhausted_at) {
            let _ = write!(
                badges,
                " <span class=\"badge bad\">exhausted since {}</span>",
                hm(at)
            );
        } else if !chain.iter().any(|c| c.serves()) {
            badges.push_str(" <span class=\"badge bad\">nothing serves</span>");
        } else {
            badges.push_str(" <span class=\"badge s-active\">serving</span>");
        }
        if let Some(at) = marks.and_then(|m| m.budget_reached_at) {
            let _ = write!(
                badges,
                " <span class=\"badge warn\">budget reached {}</span>",
                hm(at)
            );
        }
        let _ = write!(
            out,
            "<section class=\"card campaign\" id=\"campaign-{}\"><h3>{} <small>{} · {}</small>{badges}</h3><table>",
            esc(id),
            esc(id),
            esc(campaign.event.as_str()),
            esc(campaign.audience.as_str())
        );
        chain_head(out);
        for c in chain {
            chain_row(out, snapshot, c);
        }
        out.push_str("</table></section>");
    }
}

fn chain_head(out: &mut String) {
    out.push_str(
        "<tr><th class=\"n\">#</th><th>Coupon</th><th>State</th><th class=\"n\">Stock</th>\
         <th class=\"n\">Granted</th><th class=\"n\">Remaining</th><th class=\"n\">Rate/min</th>\
         <th>Predicted run-out</th><th>Burn-down (last 6 h)</th></tr>",
    );
}

fn chain_row(out: &mut String, snapshot: &Snapshot, c: &CouponStock) {
    let rate = snapshot.rates.get(&c.id).copied().unwrap_or(0.0);
    let run_out = match predicted_run_out(c.remaining, rate, snapshot.taken_at) {
        Some(at) => run_out(at, snapshot.taken_at),
        None if c.remaining <= 0 => "<span class=\"bad\">out of stock</span>".to_owned(),
        None => "<span class=\"muted\">no grants lately</span>".to_owned(),
    };
    let low = match snapshot.running_low.contains(&c.id) {
        true => " <span class=\"badge warn\">running low</span>",
        false => "",
    };
    let state = c.state.as_str();
    let _ = write!(
        out,
        "<tr class=\"coupon\" data-coupon=\"{id}\"><td class=\"n\">{}</td><td><a href=\"/coupons/{id}\">{id}</a></td>\
         <td><span class=\"badge s-{state}\">{state}</span>{low}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td><td class=\"n\">{:.1}</td><td>{run_out}</td><td>{}</td></tr>",
        c.position,
        c.stock,
        c.granted,
        c.remaining,
        rate * 60.0,
        plot(snapshot, c, SMALL),
        id = esc(&c.id),
    );
}

fn plot(snapshot: &Snapshot, c: &CouponStock, size: (u32, u32)) -> String {
    let samples = snapshot
        .samples
        .get(&c.id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    burn_down(&c.id, samples, &snapshot.rotations, frame(snapshot, size))
}

fn run_out(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = (at - now).num_minutes();
    let left = match minutes {
        m if m < 1 => "under a minute".to_owned(),
        m if m < 120 => format!("{m} min"),
        m if m < 48 * 60 => format!("{} h", m / 60),
        m => format!("{} days", m / (24 * 60)),
    };
    let class = if minutes < 60 { "warn" } else { "" };
    format!(
        "<span class=\"{class}\">{} UTC (in {left})</span>",
        at.format("%Y-%m-%d %H:%M")
    )
}
