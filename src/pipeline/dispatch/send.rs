//! Sending one delivery over HTTP and classifying the answer.
//!
//! One attempt is one signed `POST` (Standard Webhooks headers, a fresh timestamp and
//! signature each time) and one [`Verdict`] that tells the outbox what to do next:
//! mark it delivered, retry it, give up, or give up and disable the channel. This module
//! neither logs nor sleeps; the outbox worker records the attempt and schedules the
//! retry (see [`super::backoff`]).

use std::error::Error as _;
use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{redirect, Response, StatusCode};

use super::backoff::parse_retry_after;
use super::signing::signature_header;
use crate::config::ChannelConfig;

/// Most of a response body read for the error text. A partner's error page can be large;
/// a small read keeps a slow or huge body from holding a worker.
const BODY_READ_LIMIT: usize = 1024;
/// Characters of the response body quoted in a verdict's reason.
const BODY_QUOTE_CHARS: usize = 200;
/// Idle keep-alive connections kept per partner host. Deliveries to one partner run up
/// to `dispatch.concurrency` at a time; a pool at least that large means a burst reuses
/// warm connections instead of opening (and TLS-handshaking) new ones.
const POOL_MAX_IDLE_PER_HOST: usize = 256;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Sends signed webhooks. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
}

/// The record of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The HTTP status the partner answered, if the request got an answer.
    pub status_code: Option<u16>,
    /// From sending the request to reading the (bounded) response.
    pub duration: Duration,
    /// What to do with the delivery next.
    pub verdict: Verdict,
}

/// What an attempt means for the delivery. Every `reason` names the channel and the
/// status or error, and never contains the signing secret or the channel URL (which
/// may carry a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: the partner has it.
    Delivered,
    /// A 5xx, 408, 429, connection error or timeout: try again later.
    Retryable {
        /// The partner's `Retry-After`, already capped at `dispatch.retry_max`.
        after: Option<Duration>,
        /// What went wrong, for the attempt log.
        reason: String,
    },
    /// Another 4xx, a 3xx (redirects are not followed) or a request that cannot be
    /// built: retrying will not help.
    Permanent {
        /// What went wrong, for the attempt log.
        reason: String,
    },
    /// A 410 Gone: the partner removed the endpoint; give up and disable the channel.
    Gone {
        /// What went wrong, for the attempt log.
        reason: String,
    },
}

impl Sender {
    /// A sender with its own connection pool: redirects are not followed, idle
    /// keep-alive connections are kept per host, and requests say `couponsd/<version>`.
    pub fn new() -> Result<Sender, reqwest::Error> {
        let client = reqwest::Client::builder()
            // A redirect would send the signed body to a URL the partner did not
            // register; a 3xx is reported instead (see `classify`).
            .redirect(redirect::Policy::none())
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .tcp_nodelay(true)
            .user_agent(concat!("couponsd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Sender { client })
    }

    /// Sends `body` to `channel` as delivery `webhook_id`, signed with a timestamp taken
    /// now, and classifies the answer. A partner's `Retry-After` is capped at
    /// `retry_max`. The whole attempt, body read included, is bounded by
    /// `channel.timeout`.
    pub async fn send(
        &self,
        channel: &ChannelConfig,
        webhook_id: &str,
        body: &str,
        retry_max: Duration,
    ) -> Attempt {
        let started = Instant::now();
        let timestamp = unix_seconds(SystemTime::now());
        let signature = signature_header(&channel.secrets, webhook_id, timestamp, body.as_bytes());
        let request = self
            .client
            .post(&channel.url)
            .timeout(channel.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(WEBHOOK_ID, webhook_id)
            .header(WEBHOOK_TIMESTAMP, timestamp)
            .header(WEBHOOK_SIGNATURE, signature)
            .body(body.to_owned());
        let (status_code, verdict) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let verdict = classify(channel, response, retry_max).await;
                (Some(status.as_u16()), verdict)
            }
            Err(error) => (None, transport_failure(channel, error)),
        };
        Attempt {
            status_code,
            duration: started.elapsed(),
            verdict,
        }
    }
}

/// The verdict for a response the partner gave.
async fn classify(channel: &ChannelConfig, response: Response, retry_max: Duration) -> Verdict {
    let status = response.status();
    if status.is_success() {
        // Read the (usually empty) body so the connection goes back to the pool.
        read_prefix(response).await;
        return Verdict::Delivered;
    }
    let after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, SystemTime::now()))
        .map(|after| after.min(retry_max));
    let mut reason = format!("channel {}: HTTP {status}", channel.name);
    if status.is_redirection() {
        reason.push_str(": redirects are not followed");
        return Verdict::Permanent { reason };
    }
    let text = read_prefix(response).await;
    if !text.is_empty() {
        let _ = write!(reason, ": {text}");
    }
    match status {
        StatusCode::GONE => Verdict::Gone { reason },
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Verdict::Retryable { after, reason }
        }
        _ if status.is_server_error() => Verdict::Retryable { after, reason },
        _ => Verdict::Permanent { reason },
    }
}

/// The start of a response body as one line of text: at most [`BODY_READ_LIMIT`] bytes
/// read, [`BODY_QUOTE_CHARS`] characters kept, control characters (newlines of an HTML
/// error page) turned into spaces. A body that fails midway yields what was read.
async fn read_prefix(mut response: Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < BODY_READ_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = BODY_READ_LIMIT - bytes.len();
                bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&bytes)
        .chars()
        .take(BODY_QUOTE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The verdict when no response came back: retryable, since the partner may be
/// restarting, overloaded or briefly unreachable; except a request that could not even
/// be built (a malformed URL or id), which no retry will fix. The reason is built
/// without the URL, which `reqwest`'s own message would include.
fn transport_failure(channel: &ChannelConfig, error: reqwest::Error) -> Verdict {
    let error = error.without_url();
    let reason = |what: String| format!("channel {}: {what}", channel.name);
    if error.is_builder() {
        return Verdict::Permanent {
            reason: reason(format!("cannot build the request: {}", root_cause(&error))),
        };
    }
    let what = if error.is_timeout() {
        let timeout = humantime::format_duration(channel.timeout);
        format!("timed out after {timeout}")
    } else if io_error_kind(&error) == Some(io::ErrorKind::ConnectionRefused) {
        "connection refused".to_owned()
    } else if error.is_connect() {
        format!("cannot connect: {}", root_cause(&error))
    } else {
        format!("request failed: {}", root_cause(&error))
    };
    Verdict::Retryable {
        after: None,
        reason: reason(what),
    }
}

/// The kind of the `io::Error` somewhere in the error's chain, if any.
fn io_error_kind(error: &reqwest::Error) -> Option<io::ErrorKind> {
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// The innermost error of the chain: the most specific words (`dns error: ...`,
/// `invalid peer certificate: ...`), where the outer ones say "error sending request".
fn root_cause(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

fn unix_seconds(now: SystemTime) -> i64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
    })
}

// The tests stay in this file, past the house limit of about 400 lines, because the
// module's owner is this one file; each test serves a real receiver on 127.0.0.1:0.
#[cfg(test)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use axum::body::Bytes;
    use axum::extract::ConnectInfo;
    use axum::http::HeaderMap;
    use axum::routing::{any, post};
    use axum::Router;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use tokio::net::TcpListener;

    use crate::config::SigningKey;
    use crate::domain::ChannelName;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const BODY: &str = r#"{"coupon":"WELCOME10","user_id":"u-1"}"#;
    const RETRY_MAX: Duration = Duration::from_secs(3600);

    fn channel(url: String, timeout: Duration) -> ChannelConfig {
        let key = STANDARD
            .decode(SECRET.trim_start_matches("whsec_"))
            .unwrap();
        ChannelConfig {
            name: ChannelName::parse("wallet").unwrap(),
            url,
            secrets: vec![SigningKey(key)],
            timeout,
            max_attempts: 8,
        }
    }

    /// Serves `router` on a fresh port of 127.0.0.1; returns its base URL.
    async fn receiver(router: Router) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    /// One attempt against a receiver that answers `status` with `headers` and `body`.
    async fn attempt_answered(
        status: u16,
        headers: &[(&'static str, &str)],
        body: &str,
    ) -> Attempt {
        let status = StatusCode::from_u16(status).unwrap();
        let mut answer = HeaderMap::new();
        for (name, value) in headers {
            answer.insert(*name, value.parse().unwrap());
        }
        let body = body.to_owned();
        let router =
            Router::new().route("/hook", post(move || async move { (status, answer, body) }));
        let url = format!("{}/hook", receiver(router).await);
        let sender = Sender::new().unwrap();
        sender
            .send(
                &channel(url, Duration::from_secs(5)),
                "msg_1",
                BODY,
                RETRY_MAX,
            )
            .await
    }

    fn reason(verdict: &Verdict) -> &str {
        match verdict {
            Verdict::Delivered => "",
            Verdict::Retryable { reason, .. }
            | Verdict::Permanent { reason }
            | Verdict::Gone { reason } => reason,
        }
    }

    #[tokio::test]
    async fn a_delivered_webhook_carries_the_standard_headers_and_verifies() {
        let (seen, mut received) = tokio::sync::mpsc::unbounded_channel();
        let router = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| async move {
                seen.send((headers, body)).unwrap();
                "ok"
            }),
        );
        let url = format!("{}/hook", receiver(router).await);
        let sender = Sender::new().unwrap();
        let wallet = channel(url, Duration::from_secs(5));
        let webhook = standardwebhooks::Webhook::new(SECRET).unwrap();

        for _retry in 0..2 {
            let attempt = sender
                .clone()
                .send(&wallet, "msg_stable", BODY, RETRY_MAX)
                .await;
            assert_eq!(attempt.verdict, Verdict::Delivered);
            assert_eq!(attempt.status_code, Some(200));

            let (headers, body) = received.recv().await.unwrap();
            assert_eq!(body, BODY.as_bytes());
            assert_eq!(headers["webhook-id"], "msg_stable", "stable across retries");
            let timestamp: i64 = headers["webhook-timestamp"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((chrono::Utc::now().timestamp() - timestamp).abs() <= 5);
            assert!(headers["webhook-signature"]
                .to_str()
                .unwrap()
                .starts_with("v1,"));
            assert_eq!(headers["content-type"], "application/json");
            assert!(headers["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("couponsd/"));
            webhook
                .verify(&body, &headers)
                .expect("the receiver verifies the signature");
        }
    }

    #[tokio::test]
    async fn deliveries_to_one_host_reuse_a_kept_alive_connection() {
        let (seen, mut peers) = tokio::sync::mpsc::unbounded_channel();
        let router = Router::new().route(
            "/hook",
            post(
                move |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                    seen.send(peer).unwrap();
                    (StatusCode::SERVICE_UNAVAILABLE, "try later")
                },
            ),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
        let sender = Sender::new().unwrap();
        let wallet = channel(url, Duration::from_secs(5));

        for _ in 0..3 {
            let attempt = sender.send(&wallet, "msg_1", BODY, RETRY_MAX).await;
            assert!(
                matches!(attempt.verdict, Verdict::Retryable { .. }),
                "{attempt:?}"
            );
        }
        let first = peers.recv().await.unwrap();
        for _ in 0..2 {
            assert_eq!(peers.recv().await.unwrap(), first, "same client port");
        }
    }

    #[tokio::test]
    async fn a_server_error_is_retryable_and_quotes_the_start_of_the_body() {
        let page = format!("<html>\n{}</html>", "oops ".repeat(2000));
        let attempt = attempt_answered(500, &[], &page).await;
        assert_eq!(attempt.status_code, Some(500));
        let Verdict::Retryable { after, reason } = &attempt.verdict else {
            panic!("{attempt:?}");
        };
        assert_eq!(*after, None);
        assert!(
            reason.starts_with("channel wallet: HTTP 500 Internal Server Error: <html> oops"),
            "{reason}"
        );
        assert!(reason.len() < 300, "only the start of the body: {reason}");
    }

    #[tokio::test]
    async fn a_503_with_retry_after_is_retried_after_that_delay() {
        let attempt = attempt_answered(503, &[("retry-after", "7")], "down").await;
        let expected = Verdict::Retryable {
            after: Some(Duration::from_secs(7)),
            reason: "channel wallet: HTTP 503 Service Unavailable: down".to_owned(),
        };
        assert_eq!(attempt.verdict, expected);
    }

    #[tokio::test]
    async fn a_partners_retry_after_is_capped_at_retry_max() {
        let attempt = attempt_answered(429, &[("retry-after", "999999")], "").await;
        assert!(
            matches!(attempt.verdict, Verdict::Retryable { after: Some(after), .. } if after == RETRY_MAX),
            "{attempt:?}"
        );
    }

    #[tokio::test]
    async fn too_many_requests_and_request_timeout_are_retryable() {
        for status in [429, 408] {
            let attempt = attempt_answered(status, &[], "").await;
            assert!(
                matches!(attempt.verdict, Verdict::Retryable { .. }),
                "{attempt:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_404_is_permanent() {
        let attempt = attempt_answered(404, &[], "no such hook").await;
        let reason = "channel wallet: HTTP 404 Not Found: no such hook".to_owned();
        assert_eq!(attempt.verdict, Verdict::Permanent { reason });
    }

    #[tokio::test]
    async fn a_410_means_the_channel_is_gone() {
        let attempt = attempt_answered(410, &[], "").await;
        let reason = "channel wallet: HTTP 410 Gone".to_owned();
        assert_eq!(attempt.verdict, Verdict::Gone { reason });
    }

    #[tokio::test]
    async fn a_redirect_is_permanent_and_its_target_is_never_hit() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let router = Router::new()
            .route(
                "/hook",
                post(|| async { (StatusCode::FOUND, [("location", "/target")]) }),
            )
            .route(
                "/target",
                // `any`: a followed 302 would arrive as a GET.
                any(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async { StatusCode::OK }
                }),
            );
        let url = format!("{}/hook", receiver(router).await);
        let attempt = Sender::new()
            .unwrap()
            .send(
                &channel(url, Duration::from_secs(5)),
                "msg_1",
                BODY,
                RETRY_MAX,
            )
            .await;
        let reason = "channel wallet: HTTP 302 Found: redirects are not followed".to_owned();
        assert_eq!(attempt.verdict, Verdict::Permanent { reason });
        assert_eq!(attempt.status_code, Some(302));
        assert_eq!(hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_receiver_slower_than_the_timeout_is_retryable() {
        let router = Router::new().route(
            "/hook",
            post(|| async { tokio::time::sleep(Duration::from_secs(10)).await }),
        );
        let url = format!("{}/hook", receiver(router).await);
        let attempt = Sender::new()
            .unwrap()
            .send(
                &channel(url, Duration::from_millis(200)),
                "msg_1",
                BODY,
                RETRY_MAX,
            )
            .await;
        let reason = "channel wallet: timed out after 200ms".to_owned();
        assert_eq!(
            attempt.verdict,
            Verdict::Retryable {
                after: None,
                reason
            }
        );
        assert_eq!(attempt.status_code, None);
        assert!(attempt.duration < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_closed_port_is_retryable_and_the_url_is_not_quoted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = format!("http://{addr}/hook?token=url-secret");
        let attempt = Sender::new()
            .unwrap()
            .send(
                &channel(url, Duration::from_secs(5)),
                "msg_1",
                BODY,
                RETRY_MAX,
            )
            .await;
        let reason = "channel wallet: connection refused".to_owned();
        assert_eq!(
            attempt.verdict,
            Verdict::Retryable {
                after: None,
                reason
            }
        );
    }

    #[tokio::test]
    async fn a_malformed_url_is_permanent() {
        let attempt = Sender::new()
            .unwrap()
            .send(
                &channel("not a url".to_owned(), Duration::from_secs(5)),
                "msg_1",
                BODY,
                RETRY_MAX,
            )
            .await;
        let text = reason(&attempt.verdict);
        assert!(
            matches!(attempt.verdict, Verdict::Permanent { .. }),
            "{attempt:?}"
        );
        assert!(
            text.starts_with("channel wallet: cannot build the request"),
            "{text}"
        );
        assert!(!text.contains("not a url"), "{text}");
    }
}
