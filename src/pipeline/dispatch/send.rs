//! Sending one delivery over HTTP and classifying the answer.
//!
//! One attempt is one signed `POST` (Standard Webhooks headers, a fresh timestamp and
//! signature each time) and one [`Answer`] that tells the outbox what to do next:
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
    pub answer: Answer,
}

/// What an attempt means for the delivery. Every `reason` names the channel and the
/// status or error, and never contains the signing secret or the channel URL (which
/// may carry a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
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
        let (status_code, answer) = match request.send().await {
            Ok(response) => {
                let status = response.status();
                let answer = classify(channel, response, retry_max).await;
                (Some(status.as_u16()), answer)
            }
            Err(error) => (None, transport_failure(channel, error)),
        };
        Attempt {
            status_code,
            duration: started.elapsed(),
            answer,
        }
    }
}

/// The verdict for a response the partner gave.
async fn classify(channel: &ChannelConfig, response: Response, retry_max: Duration) -> Answer {
    let status = response.status();
    if status.is_success() {
        // Read the (usually empty) body so the connection goes back to the pool.
        read_prefix(response).await;
        return Answer::Delivered;
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
        return Answer::Permanent { reason };
    }
    let text = read_prefix(response).await;
    if !text.is_empty() {
        let _ = write!(reason, ": {text}");
    }
    match status {
        StatusCode::GONE => Answer::Gone { reason },
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Answer::Retryable { after, reason }
        }
        _ if status.is_server_error() => Answer::Retryable { after, reason },
        _ => Answer::Permanent { reason },
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
fn transport_failure(channel: &ChannelConfig, error: reqwest::Error) -> Answer {
    let error = error.without_url();
    let reason = |what: String| format!("channel {}: {what}", channel.name);
    if error.is_builder() {
        return Answer::Permanent {
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
    Answer::Retryable {
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
mod tests;
