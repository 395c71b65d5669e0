//! `couponsd demo`: the whole pipeline on the embedded default, with nothing
//! configured. An SQLite database in a temp folder, the shipped rules, a webhook
//! receiver on loopback that verifies every signature, and a few thousand synthetic
//! triggers — new and returning users, a hot coupon that rotates out, a pool of
//! imported codes that runs dry, a coupon whose validity has ended, and generated codes
//! valid for a week. Prints what happened, with the codes the first returning users got.

mod lifecycle;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::config::{Config, SigningKey};
use crate::domain::codes::CodeSource;
use crate::pipeline::dispatch::signing::sign;
use crate::runtime::{self, Mode};
use crate::schedule::inventory;
use crate::store::requests::NewRequest;
use crate::store::StoreError;

/// The shipped rules, built into the binary so that the demo runs from anywhere.
pub use crate::init::shipped::{
    SELECT_COUPON as SHIPPED_SELECT_COUPON, USER_TYPE as SHIPPED_USER_TYPE,
};

/// The demo's secret; a demo, so it may be printed.
const SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLWNvdXBvbnNkLWRlbW8=";

/// The pool coupon of the loyalty chain, and how many codes the demo imports into it.
const POOL: (&str, usize) = ("BACK5", 5);

/// The returning users' requests whose codes the demo prints: the pool's, and two after
/// it ran dry.
const SHOWN: usize = POOL.1 + 2;

/// What the demo's receiver saw.
#[derive(Default)]
pub struct Received {
    /// Requests whose signature verified.
    pub verified: AtomicUsize,
    /// Requests whose signature did not.
    pub rejected: AtomicUsize,
    /// Verified events by type.
    pub by_type: Mutex<BTreeMap<String, usize>>,
}

/// Runs the demo with `users` new users (half of whom come back).
pub async fn run(users: usize) -> Result<(), AppError> {
    let dir = demo_dir();
    std::fs::create_dir_all(dir.join("rules")).map_err(|e| io(&dir, e))?;
    std::fs::write(dir.join("rules/user_type.rhai"), SHIPPED_USER_TYPE).map_err(|e| io(&dir, e))?;
    std::fs::write(dir.join("rules/select_coupon.rhai"), SHIPPED_SELECT_COUPON)
        .map_err(|e| io(&dir, e))?;
    let received = Arc::new(Received::default());
    let port = start_receiver(received.clone()).await?;
    let yaml = demo_config(&dir, port, users);
    let config_path = dir.join("couponsd.yaml");
    std::fs::write(&config_path, &yaml).map_err(|e| io(&dir, e))?;
    let config = Arc::new(Config::load(&config_path)?);
    println!("couponsd demo");
    println!("  workspace  {}", dir.display());
    println!("  receiver   http://127.0.0.1:{port}/webhooks/{{wallet,ops}} (verifies signatures)");
    app::migrate(&config).await?;
    let ctx = app::start(config).await?;
    import_pool(&ctx).await?;
    let (wave1, wave2) = synthetic_triggers(users);
    let total = wave1.len() + wave2.len();
    println!(
        "  queued     {} trigger requests in two waves ({users} new users, {} come back, 3 malformed)",
        total,
        users / 2
    );
    let started = Instant::now();
    enqueue(&ctx, &wave1).await?;
    runtime::run_loops(ctx.clone(), Mode::Drain, CancellationToken::new()).await;
    // Between the waves the scheduled inventory check runs, as it would every 10 s: the
    // hot newcomer coupon is at its watermark and rotates before it runs out.
    let first_check = inventory::check(&ctx.schedule()).await?;
    enqueue(&ctx, &wave2).await?;
    runtime::run_loops(ctx.clone(), Mode::Drain, CancellationToken::new()).await;
    let second_check = inventory::check(&ctx.schedule()).await?;
    runtime::run_loops(ctx.clone(), Mode::Drain, CancellationToken::new()).await;
    let elapsed = started.elapsed();
    lifecycle::partner_updates(&ctx).await?;
    runtime::run_loops(ctx.clone(), Mode::Drain, CancellationToken::new()).await;
    println!("\nrotations by the inventory check");
    for r in first_check.rotations.iter().chain(&second_check.rotations) {
        // An expired coupon's stock can never be granted: it is no reserve.
        let left = match r.reason.as_str() {
            "expired" => "never granted",
            _ => "as reserve",
        };
        println!(
            "  {:<10} {} -> {} ({}, {} left {left})",
            r.campaign_id,
            r.from_coupon,
            r.to_coupon.as_deref().unwrap_or("-"),
            r.reason,
            r.remaining
        );
    }
    report(&ctx, &received, total, elapsed).await?;
    lifecycle::report(&ctx).await
}

/// The partner's codes for the pool coupon, imported as `codes import` imports them: the
/// code rows and the coupon's stock raised by as many, in one transaction.
async fn import_pool(ctx: &runtime::Daemon) -> Result<(), AppError> {
    let (coupon, count) = POOL;
    let codes: Vec<String> = (1..=count)
        .map(|n| format!("{coupon}-DEMO-{n:04}"))
        .collect();
    let mut conn = ctx.db.get().await?;
    let imported = conn
        .import_chunk(coupon, &codes, crate::store::now())
        .await
        .map_err(StoreError::from)?;
    if imported.is_none() {
        return Err(AppError::Other(format!("demo: no coupon {coupon}")));
    }
    println!("  imported   {count} codes into the pool of {coupon} ({coupon}-DEMO-0001 ...)");
    Ok(())
}

/// The codes each coupon issued, and the first returning users' grants: the pool's
/// codes, then the generated coupon after the pool ran dry, with the detail that says
/// why the coupon between them was passed over.
async fn report_codes(ctx: &runtime::Daemon) -> Result<(), AppError> {
    let conn = &mut ctx.db.get().await?;
    println!("\ncodes by coupon");
    let coupons = || ctx.config.campaigns.iter().flat_map(|c| &c.coupons);
    for (id, counts) in conn.code_counts().await.map_err(StoreError::from)? {
        let source = match coupons()
            .find(|c| c.id.as_str() == id)
            .and_then(|c| c.codes.as_ref())
        {
            Some(CodeSource::Pool) if counts.available == 0 => {
                "from its pool, which ran dry".to_owned()
            }
            Some(CodeSource::Pool) => format!("from its pool, {} left", counts.available),
            Some(CodeSource::Generate(pattern)) => format!("generated from {}", pattern.as_str()),
            None => String::new(),
        };
        println!("  {id:<8} {:>6} issued, {source}", counts.issued);
    }
    println!(
        "\nthe first returning users' codes ({} in the pool of {})",
        POOL.1, POOL.0
    );
    for u in 0..SHOWN {
        let key = format!("again-{u}");
        let Some(request) = conn.request_by_key(&key).await.map_err(StoreError::from)? else {
            continue;
        };
        let grant = conn.grant_of_request(request.id).await;
        let Some(grant) = grant.map_err(StoreError::from)? else {
            println!("  {key:<9} {}", request.outcome.unwrap_or_default());
            continue;
        };
        let expires = grant.expires_at.map_or_else(
            || "no expiry".to_owned(),
            |t| format!("expires {}", crate::pipeline::dispatch::events::rfc3339(t)),
        );
        println!(
            "  {key:<9} {:<6} {:<16} {expires}",
            grant.coupon_id,
            grant.code.as_deref().unwrap_or("-")
        );
        if let Some(detail) = request.detail {
            println!("            detail: {detail}");
        }
    }
    Ok(())
}

async fn report(
    ctx: &runtime::Daemon,
    received: &Received,
    total: usize,
    elapsed: std::time::Duration,
) -> Result<(), AppError> {
    let (outcomes, per_coupon, deliveries) = {
        let conn = &mut ctx.db.get().await?;
        (
            conn.count_by_outcome().await.map_err(StoreError::from)?,
            conn.grants_per_coupon().await.map_err(StoreError::from)?,
            conn.count_deliveries().await.map_err(StoreError::from)?,
        )
    };
    println!("\nrequests by outcome");
    for (status, outcome, n) in outcomes {
        println!(
            "  {:<10} {:<14} {n:>6}",
            status,
            outcome.unwrap_or_default()
        );
    }
    println!("\ngrants per coupon");
    for (campaign, coupon, n) in per_coupon {
        println!("  {campaign:<10} {coupon:<8} {n:>6}");
    }
    report_codes(ctx).await?;
    println!("\ndeliveries");
    for (status, n) in deliveries {
        println!("  {status:<10} {n:>6}");
    }
    println!(
        "  receiver verified {} signatures, rejected {}",
        received.verified.load(Ordering::Relaxed),
        received.rejected.load(Ordering::Relaxed)
    );
    for (kind, n) in received
        .by_type
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("    {kind:<18} {n:>6}");
    }
    println!(
        "\nthroughput  {total} requests claimed, decided, granted and delivered in {:.2} s ({:.0} requests/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

fn demo_dir() -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    std::env::temp_dir().join(format!("couponsd-demo-{}-{stamp}", std::process::id()))
}

fn io(dir: &Path, e: std::io::Error) -> AppError {
    AppError::Other(format!("{}: {e}", dir.display()))
}

/// The demo's config: NEW10 has stock for a fifth of the newcomers and a watermark the
/// first wave reaches. BACK5 is a pool of [`POOL`] imported codes that runs dry at the
/// head of the returning users; BACK4 ended last year, so the grant step passes it over
/// and says so; BACK3 generates a code per grant, valid for a week.
fn demo_config(dir: &Path, port: u16, users: usize) -> String {
    let hot = (users / 5).max(2);
    format!(
        r#"database:
  url: "sqlite://{db}"
rules:
  dir: rules
worker:
  batch_size: 200
  poll_interval: 50ms
dispatch:
  retry_base: 100ms
channels:
  wallet:
    url: "http://127.0.0.1:{port}/webhooks/wallet"
    secret: "{SECRET}"
  ops:
    url: "http://127.0.0.1:{port}/webhooks/ops"
    secret: "{SECRET}"
alerts:
  channel: ops
campaigns:
  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - {{ id: NEW10, face_value: "10.00", stock: {hot}, low_stock: {low}, channel: wallet }}
      - {{ id: NEW8, face_value: "8.00", stock: {users}, low_stock: 10, channel: wallet }}
  - id: loyalty
    event: app_open
    audience: returning
    per_user_limit: 1
    coupons:
      - {{ id: BACK5, face_value: "5.00", codes: {{ pool: true }}, channel: wallet }}
      - {{ id: BACK4, face_value: "4.00", stock: {users}, valid_until: "2025-12-31T23:59:59Z", channel: wallet }}
      - {{ id: BACK3, face_value: "3.00", stock: {users}, low_stock: 10, channel: wallet,
           codes: {{ generate: "BACK3-XXXX-XXXX" }}, valid_for: 7d }}
"#,
        db = dir.join("couponsd.db").display(),
        low = hot / 4,
    )
}

async fn enqueue(ctx: &runtime::Daemon, rows: &[NewRequest]) -> Result<(), AppError> {
    let mut conn = ctx.db.get().await?;
    for chunk in rows.chunks(1000) {
        conn.enqueue(chunk).await.map_err(StoreError::from)?;
    }
    Ok(())
}

/// Wave one: the first 15% of the new users. Wave two: the other new users, then half
/// of all users coming back, and three malformed requests.
fn synthetic_triggers(users: usize) -> (Vec<NewRequest>, Vec<NewRequest>) {
    let split = users * 15 / 100;
    let wave1: Vec<NewRequest> = (0..split)
        .map(|u| request(format!("first-{u}"), format!("user-{u}")))
        .collect();
    let new = (split..users).map(|u| (format!("first-{u}"), format!("user-{u}")));
    let back = (0..users / 2).map(|u| (format!("again-{u}"), format!("user-{u}")));
    let mut rows: Vec<NewRequest> = new
        .chain(back)
        .map(|(key, user)| request(key, user))
        .collect();
    for (key, user, attributes) in [
        ("bad-empty-user", "", None),
        ("bad-attributes", "user-x", Some("[1,2,3]")),
        ("bad-json", "user-y", Some("{not json")),
    ] {
        rows.push(NewRequest {
            request_key: key.into(),
            user_id: user.into(),
            event: "app_open".into(),
            attributes: attributes.map(str::to_owned),
        });
    }
    (wave1, rows)
}

fn request(key: String, user: String) -> NewRequest {
    NewRequest {
        request_key: key,
        user_id: user,
        event: "app_open".into(),
        attributes: Some(r#"{"platform":"ios"}"#.into()),
    }
}

async fn start_receiver(received: Arc<Received>) -> Result<u16, AppError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| AppError::Other(format!("demo receiver: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| AppError::Other(format!("demo receiver: {e}")))?
        .port();
    let app = Router::new()
        .route("/webhooks/{channel}", post(receive))
        .with_state(received);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn receive(
    State(received): State<Arc<Received>>,
    UrlPath(_channel): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let key = crate::config::signing_key(SECRET).unwrap_or(SigningKey(Vec::new()));
    let timestamp: i64 = header("webhook-timestamp").parse().unwrap_or(0);
    let expected = sign(&key, header("webhook-id"), timestamp, &body);
    if header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
    {
        received.verified.fetch_add(1, Ordering::Relaxed);
        let kind = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *received
            .by_type
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
        StatusCode::NO_CONTENT
    } else {
        received.rejected.fetch_add(1, Ordering::Relaxed);
        StatusCode::UNAUTHORIZED
    }
}
