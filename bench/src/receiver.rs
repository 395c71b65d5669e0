//! The benchmarks' partner: an axum server on `127.0.0.1:0` inside the bench process that
//! verifies the Standard Webhooks signature of every delivery it is sent (with
//! [`sign`] and the channel's key, the way a partner's library does) and records when
//! each arrived and for which request key.
//!
//! It answers 204 at once and does as little as it can besides, so that it measures
//! the daemon, not itself; what it costs in CPU is reported with the bench process's
//! own CPU time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::BenchError;
use couponsd::config::{signing_key, SigningKey};
use couponsd::pipeline::dispatch::signing::sign;

/// How far a `webhook-timestamp` may be from now, as Standard Webhooks libraries allow.
const TIMESTAMP_TOLERANCE_SECS: i64 = 300;

/// One verified delivery.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When the receiver had read it.
    pub at: Instant,
    /// The same moment on the wall clock, to set beside the database's timestamps.
    pub wall: chrono::NaiveDateTime,
    /// The body's `data.request_key`, when it has one (grants do; alerts do not).
    pub request_key: Option<String>,
}

/// What the receiver saw.
#[derive(Default)]
pub struct Received {
    verified: AtomicU64,
    granted: AtomicU64,
    rejected: AtomicU64,
    duplicates: AtomicU64,
    seen: Mutex<HashSet<String>>,
    arrivals: Mutex<Vec<Arrival>>,
    codes: Mutex<CodeLedger>,
}

/// What the `coupon.granted` bodies said about codes: each code seen, and the bodies
/// that broke a rule of a codes run.
#[derive(Default)]
struct CodeLedger {
    /// Every code of a first delivery (a retry repeats its own code; it is not counted).
    seen: HashSet<String>,
    /// The codes a pool run seeded, when it set them: any other code is unknown.
    seeded: Option<HashSet<String>>,
    tally: CodeTally,
}

/// The `coupon.granted` deliveries of a run, checked for their codes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeTally {
    /// First deliveries of `coupon.granted` (retries not counted).
    pub granted: u64,
    /// Of those, with a `code`.
    pub with_code: u64,
    /// With an `expires_at`.
    pub with_expiry: u64,
    /// Whose code an earlier grant's delivery carried already.
    pub repeated: u64,
    /// Whose code is not one the run seeded (pool runs only).
    pub unknown: u64,
}

impl Received {
    /// Deliveries whose signature verified.
    pub fn verified(&self) -> u64 {
        self.verified.load(Ordering::Relaxed)
    }

    /// Deliveries refused: a bad signature, a stale timestamp or an unknown channel.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Verified deliveries whose `webhook-id` had been received before (a retry of a
    /// delivery the partner already had).
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Every verified arrival so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.arrivals).clone()
    }

    /// The first and last arrival, if any.
    pub fn span(&self) -> Option<(Instant, Instant)> {
        let arrivals = lock(&self.arrivals);
        Some((arrivals.first()?.at, arrivals.last()?.at))
    }

    /// Waits until `count` grant deliveries (those with a request key) verified or
    /// `limit` passed; true when they did. Alerts do not count: a daemon running its
    /// scheduler sends `coupon.rotated` and the like beside its grants.
    pub async fn wait_for_grants(&self, count: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.granted.load(Ordering::Relaxed) < count {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// What the grants' bodies said about codes so far.
    pub fn codes(&self) -> CodeTally {
        lock(&self.codes).tally
    }

    /// From now on, a code not in `seeded` counts as unknown (a pool run's codes).
    /// Cleared by [`Received::reset`].
    pub fn expect_codes(&self, seeded: HashSet<String>) {
        lock(&self.codes).seeded = Some(seeded);
    }

    /// Forgets everything seen, for the next scenario.
    pub fn reset(&self) {
        self.verified.store(0, Ordering::Relaxed);
        self.granted.store(0, Ordering::Relaxed);
        self.rejected.store(0, Ordering::Relaxed);
        self.duplicates.store(0, Ordering::Relaxed);
        lock(&self.seen).clear();
        lock(&self.arrivals).clear();
        *lock(&self.codes) = CodeLedger::default();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Shared {
    keys: HashMap<String, SigningKey>,
    received: Arc<Received>,
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// The port it listens on.
    pub port: u16,
    /// What it saw.
    pub received: Arc<Received>,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Receiver {
    /// Serves `POST /webhooks/{channel}` for the channels in `secrets` (name, `whsec_`
    /// secret).
    pub async fn start(secrets: &[(&str, &str)]) -> Result<Receiver, BenchError> {
        let keys = secrets
            .iter()
            .map(|(name, secret)| {
                let key = signing_key(secret)
                    .map_err(|e| BenchError::Setup(format!("channel {name}: secret {e}")))?;
                Ok(((*name).to_owned(), key))
            })
            .collect::<Result<HashMap<_, _>, BenchError>>()?;
        let received = Arc::new(Received::default());
        let shared = Arc::new(Shared {
            keys,
            received: received.clone(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| BenchError::Setup(format!("receiver: bind 127.0.0.1:0: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| BenchError::Setup(format!("receiver: {e}")))?
            .port();
        let app = Router::new()
            .route("/webhooks/{channel}", post(receive))
            .with_state(shared);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await
        });
        Ok(Receiver {
            port,
            received,
            stop,
        })
    }

    /// The URL of a channel's endpoint.
    pub fn url(&self, channel: &str) -> String {
        format!("http://127.0.0.1:{}/webhooks/{channel}", self.port)
    }
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    UrlPath(channel): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let (at, wall) = (Instant::now(), chrono::Utc::now().naive_utc());
    let received = &shared.received;
    let Some(webhook_id) = verified_id(&shared, &channel, &headers, &body) else {
        received.rejected.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    };
    let first = lock(&received.seen).insert(webhook_id);
    if !first {
        received.duplicates.fetch_add(1, Ordering::Relaxed);
    }
    let body = serde_json::from_slice::<Body>(&body).ok();
    if let Some(body) = body.as_ref().filter(|b| first && b.kind == GRANTED) {
        lock(&received.codes).record(&body.data);
    }
    let request_key = body.and_then(|b| b.data.request_key);
    if request_key.is_some() {
        received.granted.fetch_add(1, Ordering::Relaxed);
    }
    lock(&received.arrivals).push(Arrival {
        at,
        wall,
        request_key,
    });
    received.verified.fetch_add(1, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// The `webhook-id` of a delivery whose signature and timestamp verify.
fn verified_id(shared: &Shared, channel: &str, headers: &HeaderMap, body: &[u8]) -> Option<String> {
    let key = shared.keys.get(channel)?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?.parse().ok()?;
    if (chrono::Utc::now().timestamp() - timestamp).abs() > TIMESTAMP_TOLERANCE_SECS {
        return None;
    }
    let expected = sign(key, id, timestamp, body);
    header("webhook-signature")?
        .split(' ')
        .any(|s| s == expected)
        .then(|| id.to_owned())
}

/// The event type whose bodies carry codes.
const GRANTED: &str = "coupon.granted";

#[derive(serde::Deserialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    data: Data,
}

#[derive(serde::Deserialize)]
struct Data {
    request_key: Option<String>,
    code: Option<String>,
    expires_at: Option<String>,
}

impl CodeLedger {
    fn record(&mut self, data: &Data) {
        let tally = &mut self.tally;
        tally.granted += 1;
        tally.with_expiry += u64::from(data.expires_at.is_some());
        let Some(code) = &data.code else {
            return;
        };
        tally.with_code += 1;
        if self.seeded.as_ref().is_some_and(|s| !s.contains(code)) {
            tally.unknown += 1;
        }
        if !self.seen.insert(code.clone()) {
            tally.repeated += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(code: Option<&str>) -> Data {
        Data {
            request_key: Some("k".into()),
            code: code.map(str::to_owned),
            expires_at: code.map(|_| "2026-12-10T00:00:00Z".to_owned()),
        }
    }

    #[test]
    fn codes_count_repeats_unknowns_and_grants_without_one() {
        let mut ledger = CodeLedger {
            seeded: Some(["A", "B"].into_iter().map(String::from).collect()),
            ..CodeLedger::default()
        };
        for code in [Some("A"), Some("B"), Some("A"), Some("Z"), None] {
            ledger.record(&granted(code));
        }
        let expected = CodeTally {
            granted: 5,
            with_code: 4,
            with_expiry: 4,
            repeated: 1,
            unknown: 1,
        };
        assert_eq!(ledger.tally, expected);
    }
}
