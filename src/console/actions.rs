//! The console's actions: `stock add`, replaying dead deliveries and `channels
//! enable`, each run by the operator command's own code ([`crate::ops`]).
//!
//! An action is refused (403, and the page says why; nothing changes) unless, in this
//! order: the request is not cross-site (`Sec-Fetch-Site` is `same-origin` or `none`
//! when sent, `Origin` is this host when sent); `http.console_token` is set; the form
//! carries that token (compared in constant time, never logged); and the form's own
//! token is the one this daemon put in the page, an HMAC of the form's name under the
//! console token and a key drawn at start-up, so that a form outlives neither a
//! restart nor a change of the token.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tracing::{info, warn};

use super::html::{esc, message, page};
use super::page::View;
use super::snapshot::Snapshot;
use super::Console;
use crate::config::Secret;
use crate::ops::{self, OpsError};
use crate::store::deliveries::Replay;

/// The largest form body taken.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// The actions' names, as their paths and form tokens name them.
const STOCK_ADD: &str = "stock-add";
const REPLAY: &str = "replay";
const CHANNELS_ENABLE: &str = "channels-enable";

type HmacSha256 = Hmac<Sha256>;

/// The console token and this daemon's key for form tokens.
pub struct FormKeys {
    token: Option<Secret>,
    key: [u8; 32],
}

impl FormKeys {
    /// Keys for `token` (`http.console_token`), with a key drawn now.
    pub fn new(token: Option<Secret>) -> Self {
        FormKeys {
            token,
            key: rand::random(),
        }
    }

    /// Whether actions can be taken at all (`http.console_token` is set).
    pub fn enabled(&self) -> bool {
        self.token.is_some()
    }

    /// The form token of the form `form`, hex; `None` without a console token.
    pub fn form_token(&self, form: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        let mut mac = HmacSha256::new_from_slice(token.expose().as_bytes()).ok()?;
        mac.update(&self.key);
        mac.update(b"couponsd console form\0");
        mac.update(form.as_bytes());
        let tag = mac.finalize().into_bytes();
        Some(tag.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }))
    }

    /// Whether `given` is the console token, in time that does not depend on where
    /// they differ: both are put through an HMAC under this daemon's key and the
    /// tags compared by `verify_slice`.
    fn is_token(&self, given: &str) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let tag = |text: &str| {
            let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
            mac.update(text.as_bytes());
            mac
        };
        let expected = tag(token.expose()).finalize().into_bytes();
        tag(given).verify_slice(&expected).is_ok()
    }

    /// Whether `given` is the form token of `form`, compared in constant time.
    fn is_form_token(&self, form: &str, given: &str) -> bool {
        let Some(expected) = self.form_token(form) else {
            return false;
        };
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("any key length");
        mac.update(given.as_bytes());
        let mut again = HmacSha256::new_from_slice(&self.key).expect("any key length");
        again.update(expected.as_bytes());
        mac.verify_slice(&again.finalize().into_bytes()).is_ok()
    }
}

/// Why an action was refused before it ran.
fn refuse(status: StatusCode, why: &str) -> Response {
    page(
        status,
        message(
            "Action refused",
            &format!("Refused: {why} Nothing was changed."),
            None,
        ),
    )
}

/// Refuses a cross-site request or one without the right tokens: the status and why.
fn guard(
    console: &Console,
    headers: &HeaderMap,
    form: &str,
    fields: &Guarded,
) -> Result<(), (StatusCode, &'static str)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return Err((StatusCode::FORBIDDEN, "the request came from another site."));
        }
    }
    if let Some(origin) = header("origin") {
        let host = header("host").unwrap_or("");
        let same = [format!("http://{host}"), format!("https://{host}")];
        if host.is_empty() || !same.iter().any(|s| s == origin) {
            return Err((
                StatusCode::FORBIDDEN,
                "the request came from another origin.",
            ));
        }
    }
    if !console.forms.enabled() {
        return Err((
            StatusCode::FORBIDDEN,
            "actions are off: the console is read-only until http.console_token is set.",
        ));
    }
    if !console.forms.is_token(&fields.token) {
        return Err((
            StatusCode::FORBIDDEN,
            "the console token is missing or wrong.",
        ));
    }
    if !console.forms.is_form_token(form, &fields.form_token) {
        return Err((
            StatusCode::FORBIDDEN,
            "the form is stale or was not made by this console: reload the page and try again.",
        ));
    }
    Ok(())
}

/// The fields every action's form carries.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Guarded {
    /// The console token, as typed.
    token: String,
    /// The form's token, from the page.
    form_token: String,
}

/// `POST /actions/stock-add`: `coupon`, `count`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StockAddForm {
    #[serde(flatten)]
    guarded: Guarded,
    coupon: String,
    count: String,
}

/// `POST /actions/replay`: `id` (one dead delivery) or `channel` (its dead ones; every
/// dead delivery when empty).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ReplayForm {
    #[serde(flatten)]
    guarded: Guarded,
    id: String,
    channel: String,
}

/// `POST /actions/channels-enable`: `channel`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EnableForm {
    #[serde(flatten)]
    guarded: Guarded,
    channel: String,
}

/// Adds stock to a coupon, as `couponsd stock add COUPON COUNT`.
pub async fn stock_add(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<StockAddForm>,
) -> Response {
    if let Err((status, why)) = guard(&console, &headers, STOCK_ADD, &form.guarded) {
        return refuse(status, why);
    }
    let Ok(count) = form.count.trim().parse::<i64>() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            &format!("count: {:?} is not a whole number.", form.count),
        );
    };
    info!(coupon = %form.coupon, count, "console: stock add");
    let done = ops::stock::add(&console.deps.installation(), form.coupon.trim(), count).await;
    outcome(&console, "stock add", done).await
}

/// Replays dead deliveries, as `couponsd deliveries replay ID | --dead [--channel C]`.
pub async fn replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<ReplayForm>,
) -> Response {
    if let Err((status, why)) = guard(&console, &headers, REPLAY, &form.guarded) {
        return refuse(status, why);
    }
    let (id, channel) = (form.id.trim(), form.channel.trim());
    let which = match (id, channel) {
        ("", "") => Replay::AllDead,
        ("", channel) => Replay::Channel(channel),
        (id, _) => match id.parse::<i64>() {
            Ok(id) => Replay::One(id),
            Err(_) => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    &format!("id: {id:?} is not a delivery id."),
                )
            }
        },
    };
    info!(?which, "console: replay");
    let done = ops::deliveries::replay(&console.deps.installation(), which).await;
    outcome(&console, "replay", done).await
}

/// Enables a channel a 410 disabled, as `couponsd channels enable NAME`.
pub async fn channels_enable(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<EnableForm>,
) -> Response {
    if let Err((status, why)) = guard(&console, &headers, CHANNELS_ENABLE, &form.guarded) {
        return refuse(status, why);
    }
    info!(channel = %form.channel, "console: channels enable");
    let done = ops::deliveries::enable(&console.deps.installation(), form.channel.trim()).await;
    outcome(&console, "channels enable", done).await
}

async fn outcome(console: &Console, action: &str, done: Result<String, OpsError>) -> Response {
    console.forget().await;
    match done {
        Ok(output) => page(
            StatusCode::OK,
            message(&format!("{action}: done"), "Done.", Some(&output)),
        ),
        Err(OpsError::Refused(why)) => page(
            StatusCode::CONFLICT,
            message(&format!("{action}: refused"), &why, None),
        ),
        Err(OpsError::Store(e)) => {
            warn!(action, error = %e, "console action failed");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                message(
                    &format!("{action}: failed"),
                    "The database failed; see the daemon's log.",
                    None,
                ),
            )
        }
    }
}

/// The actions' section of the overview: three forms, greyed out without a console
/// token (a request sent anyway is refused).
pub fn section(view: &View<'_>, snapshot: &Snapshot) -> String {
    let forms = view.forms;
    let mut out = String::from("<h2 id=\"actions\">Actions</h2><div class=\"card\">");
    out.push_str(match forms.enabled() {
        true => "<p class=\"muted\">Each action asks for the console token (<code>http.console_token</code>).</p>",
        false => "<p class=\"warn\">Read-only: set <code>http.console_token</code> to enable these actions.</p>",
    });
    let fieldset = match forms.enabled() {
        true => "<fieldset>",
        false => "<fieldset disabled>",
    };
    let guard = |form: &str| {
        format!(
            "<input type=\"hidden\" name=\"form_token\" value=\"{}\"><label>Console token\
             <input type=\"password\" name=\"token\" autocomplete=\"current-password\"></label>",
            forms.form_token(form).unwrap_or_default()
        )
    };
    let mut coupons = String::new();
    for k in &view.catalog.campaigns {
        for c in k.coupons.iter().filter(|c| !c.is_pool()) {
            let _ = write!(
                coupons,
                "<option value=\"{0}\">{0} ({1})</option>",
                esc(c.id.as_str()),
                esc(k.id.as_str())
            );
        }
    }
    let mut channels = String::new();
    for name in view.catalog.channels.keys() {
        let _ = write!(
            channels,
            "<option value=\"{0}\">{0}</option>",
            esc(name.as_str())
        );
    }
    let dead: i64 = snapshot.dead.iter().map(|(_, n)| n).sum();
    let _ = write!(
        out,
        "<form class=\"action\" id=\"stock-add\" method=\"post\" action=\"/actions/stock-add\">{fieldset}\
         <label>Coupon<select name=\"coupon\">{coupons}</select></label>\
         <label>Count<input name=\"count\" type=\"number\" min=\"1\" value=\"100\"></label>{}\
         <button type=\"submit\">Add stock</button></fieldset></form>\
         <form class=\"action\" id=\"replay\" method=\"post\" action=\"/actions/replay\">{fieldset}\
         <label>Delivery id<input name=\"id\" type=\"number\" min=\"1\" placeholder=\"every dead one\"></label>\
         <label>or channel<select name=\"channel\"><option value=\"\">any</option>{channels}</select></label>{}\
         <button type=\"submit\">Replay dead ({dead})</button></fieldset></form>\
         <form class=\"action\" id=\"channels-enable\" method=\"post\" action=\"/actions/channels-enable\">{fieldset}\
         <label>Channel<select name=\"channel\">{channels}</select></label>{}\
         <button type=\"submit\">Enable channel</button></fieldset></form></div>",
        guard(STOCK_ADD),
        guard(REPLAY),
        guard(CHANNELS_ENABLE)
    );
    out
}
