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
async fn attempt_answered(status: u16, headers: &[(&'static str, &str)], body: &str) -> Attempt {
    let status = StatusCode::from_u16(status).unwrap();
    let mut answer = HeaderMap::new();
    for (name, value) in headers {
        answer.insert(*name, value.parse().unwrap());
    }
    let body = body.to_owned();
    let router = Router::new().route("/hook", post(move || async move { (status, answer, body) }));
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

fn reason(verdict: &Answer) -> &str {
    match verdict {
        Answer::Delivered => "",
        Answer::Retryable { reason, .. }
        | Answer::Permanent { reason }
        | Answer::Gone { reason } => reason,
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
        assert_eq!(attempt.answer, Answer::Delivered);
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
            matches!(attempt.answer, Answer::Retryable { .. }),
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
    let Answer::Retryable { after, reason } = &attempt.answer else {
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
    let expected = Answer::Retryable {
        after: Some(Duration::from_secs(7)),
        reason: "channel wallet: HTTP 503 Service Unavailable: down".to_owned(),
    };
    assert_eq!(attempt.answer, expected);
}

#[tokio::test]
async fn a_partners_retry_after_is_capped_at_retry_max() {
    let attempt = attempt_answered(429, &[("retry-after", "999999")], "").await;
    assert!(
        matches!(attempt.answer, Answer::Retryable { after: Some(after), .. } if after == RETRY_MAX),
        "{attempt:?}"
    );
}

#[tokio::test]
async fn too_many_requests_and_request_timeout_are_retryable() {
    for status in [429, 408] {
        let attempt = attempt_answered(status, &[], "").await;
        assert!(
            matches!(attempt.answer, Answer::Retryable { .. }),
            "{attempt:?}"
        );
    }
}

#[tokio::test]
async fn a_404_is_permanent() {
    let attempt = attempt_answered(404, &[], "no such hook").await;
    let reason = "channel wallet: HTTP 404 Not Found: no such hook".to_owned();
    assert_eq!(attempt.answer, Answer::Permanent { reason });
}

#[tokio::test]
async fn a_410_means_the_channel_is_gone() {
    let attempt = attempt_answered(410, &[], "").await;
    let reason = "channel wallet: HTTP 410 Gone".to_owned();
    assert_eq!(attempt.answer, Answer::Gone { reason });
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
    assert_eq!(attempt.answer, Answer::Permanent { reason });
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
        attempt.answer,
        Answer::Retryable {
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
        attempt.answer,
        Answer::Retryable {
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
    let text = reason(&attempt.answer);
    assert!(
        matches!(attempt.answer, Answer::Permanent { .. }),
        "{attempt:?}"
    );
    assert!(
        text.starts_with("channel wallet: cannot build the request"),
        "{text}"
    );
    assert!(!text.contains("not a url"), "{text}");
}
