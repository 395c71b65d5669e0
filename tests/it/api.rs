//! The HTTP API (`api.listen`) on a real listener on 127.0.0.1:0, with the daemon's
//! grant workers and update loops running, on MariaDB and SQLite: bearer tokens and
//! scopes (401, 403), posted triggers (202 once committed, 200 the same again, 409
//! another body, 422 naming the field, 413 over 64 KiB), a batch, a long-polled GET,
//! grant updates answered with their outcome, concurrent posts of one key; and the
//! real binary, whose log never holds a token. Every answer is checked against the
//! OpenAPI document (`openapi::assert_conforms`).

use std::time::{Duration, Instant};

use couponsd::runtime::{run_loops, Daemon, Mode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::on_both_backends;
use crate::operations::harness::count;
use crate::support::*;

pub const SHOP: &str = "shop-token-7f3a9c";
pub const PARTNER: &str = "partner-token-41be02";

/// The SHA-256 of `token` in hex, as `api.clients.<name>.token_sha256` holds it.
pub fn sha256_hex(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// `api:` with the client `shop` (triggers) and `partner` (grant updates).
pub fn api_yaml() -> String {
    format!(
        "api:\n  listen: 127.0.0.1:0\n  clients:\n    shop: {{ token_sha256: \"{}\", scopes: [triggers] }}\n    \
         partner: {{ token_sha256: \"{}\", scopes: [grant_updates] }}\n",
        sha256_hex(SHOP),
        sha256_hex(PARTNER)
    )
}

/// NEW10 with generated codes, valid 7 days, then NEW8; BACK5 for the returning.
pub fn coded_campaigns() -> String {
    r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", stock: 100000, channel: wallet, codes: { generate: "NW-XXXX-XXXX" }, valid_for: 7d }
  - id: loyalty
    event: app_open
    audience: returning
    coupons:
      - { id: BACK5, face_value: "5.00", stock: 100000, channel: wallet }"#
        .to_owned()
}

/// A daemon in this process: the API on 127.0.0.1:0 and the loops, until dropped.
pub struct Running {
    pub base: String,
    pub ctx: Daemon,
    http: reqwest::Client,
    stop: CancellationToken,
    /// The documented operations called so far.
    called: std::sync::Mutex<std::collections::BTreeSet<String>>,
    _db: TestDb,
    _receiver: Receiver,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An answer: the status and the JSON body (`Null` for none).
pub type Answer = (u16, Value);

impl Running {
    pub async fn start(db: TestDb) -> Running {
        let receiver = Receiver::ok().await;
        let config = config(
            &db,
            &receiver,
            &shipped_rules(),
            &coded_campaigns(),
            &api_yaml(),
        );
        let ctx = context(config).await;
        let listener = couponsd::api::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let deps = couponsd::api::Deps {
            db: ctx.db.clone(),
            config: ctx.config.api.clone(),
        };
        couponsd::api::serve(deps, listener);
        let stop = CancellationToken::new();
        tokio::spawn(run_loops(ctx.clone(), Mode::Serve, stop.clone()));
        Running {
            base,
            ctx,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            stop,
            called: Default::default(),
            _db: db,
            _receiver: receiver,
        }
    }

    /// `POST path` with `body` (raw text) and `token`.
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: String) -> Answer {
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = answer(request.send().await.unwrap()).await;
        self.conforms("POST", path, &answer)
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Answer {
        self.post_raw(path, Some(token), body.to_string()).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = answer(request.send().await.unwrap()).await;
        self.conforms("GET", path, &answer)
    }

    /// Checks `answer` against the OpenAPI document and notes the operation called.
    fn conforms(&self, method: &str, path: &str, answer: &Answer) -> Answer {
        let operation = crate::openapi::assert_conforms(method, path, answer.0, &answer.1);
        self.called.lock().unwrap().insert(operation);
        answer.clone()
    }

    /// The documented operations called so far.
    pub fn called(&self) -> std::collections::BTreeSet<String> {
        self.called.lock().unwrap().clone()
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body)
}

fn trigger(key: &str, user: &str) -> Value {
    json!({ "request_key": key, "user_id": user, "event": "app_open", "attributes": { "country": "DE" } })
}

async fn tokens_and_scopes_decide_who_may_do_what(db: TestDb) {
    let api = Running::start(db).await;
    let body = trigger("auth-1", "u1").to_string();
    for token in [None, Some("wrong"), Some("")] {
        let (status, answer) = api.post_raw("/v1/triggers", token, body.clone()).await;
        assert_eq!(status, 401, "{token:?}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("bearer token"));
    }
    let (status, answer) = api
        .post("/v1/triggers", PARTNER, trigger("auth-1", "u1"))
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("scope triggers"),
        "{answer}"
    );
    let redeem = json!({ "update_key": "auth-u1" });
    let (status, _) = api
        .post("/v1/grants/NW-AAAA-AAAA/redeem", SHOP, redeem)
        .await;
    assert_eq!(status, 403);
    assert_eq!(api.get("/v1/triggers/auth-1", None).await.0, 401);
    assert_eq!(api.get("/v1/triggers/auth-1", Some(PARTNER)).await.0, 403);
    assert_eq!(
        count(&api.ctx, "trigger_requests").await,
        0,
        "nothing refused was written"
    );
    // The document is public.
    let (status, doc) = api.get("/v1/openapi.json", None).await;
    assert_eq!((status, doc["openapi"].as_str()), (200, Some("3.1.0")));
}
on_both_backends!(tokens_and_scopes, tokens_and_scopes_decide_who_may_do_what);

async fn a_trigger_is_acknowledged_once_committed_and_idempotent_by_key(db: TestDb) {
    let api = Running::start(db).await;
    let (status, created) = api.post("/v1/triggers", SHOP, trigger("k-1", "u1")).await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["status"], "queued");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(
        count(&api.ctx, &format!("trigger_requests WHERE id = {id} AND request_key = 'k-1' AND user_id = 'u1' AND event = 'app_open'")).await,
        1,
        "the row was committed before the answer"
    );
    // The same again: its current state; the attributes compare as JSON.
    let same = json!({ "attributes": { "country": "DE" }, "event": "app_open", "user_id": "u1", "request_key": "k-1" });
    let (status, again) = api.post("/v1/triggers", SHOP, same).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["id"].as_i64(), again["request_key"].as_str()),
        (Some(id), Some("k-1"))
    );
    // Another body under the key.
    let (status, conflict) = api.post("/v1/triggers", SHOP, trigger("k-1", "u2")).await;
    assert_eq!(status, 409, "{conflict}");
    assert!(conflict["error"].as_str().unwrap().contains("k-1"));

    // Long-polled until decided: granted, with the grant's coupon, code and validity.
    let (status, decided) = api.get("/v1/triggers/k-1?wait=10s", Some(SHOP)).await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(
        (decided["status"].as_str(), decided["outcome"].as_str()),
        (Some("done"), Some("granted")),
        "{decided}"
    );
    let grant = &decided["grant"];
    assert_eq!(
        (grant["coupon"].as_str(), grant["state"].as_str()),
        (Some("NEW10"), Some("granted"))
    );
    assert!(
        grant["code"].as_str().unwrap().starts_with("NW-"),
        "{grant}"
    );
    assert!(
        grant["expires_at"].as_str().unwrap().ends_with('Z'),
        "{grant}"
    );
    let (status, replay) = api.post("/v1/triggers", SHOP, trigger("k-1", "u1")).await;
    assert_eq!(
        (status, &replay["grant"]),
        (200, grant),
        "a replay shows the grant too"
    );

    let (status, missing) = api.get("/v1/triggers/nope", Some(SHOP)).await;
    assert_eq!(status, 404, "{missing}");
    let (status, bad) = api.get("/v1/triggers/k-1?wait=forever", Some(SHOP)).await;
    assert_eq!(
        (status, bad["field"].as_str()),
        (422, Some("wait")),
        "{bad}"
    );
    let (status, long) = api.get("/v1/triggers/k-1?wait=1h", Some(SHOP)).await;
    assert_eq!(
        (status, long["field"].as_str()),
        (422, Some("wait")),
        "{long}"
    );
}
on_both_backends!(
    posted_triggers,
    a_trigger_is_acknowledged_once_committed_and_idempotent_by_key
);

async fn what_intake_would_reject_is_refused_naming_the_field(db: TestDb) {
    let api = Running::start(db).await;
    let cases = [
        (
            json!({ "request_key": "b1", "user_id": "", "event": "app_open" }),
            "user_id",
            "is empty",
        ),
        (
            json!({ "request_key": "b2", "user_id": "alice ", "event": "app_open" }),
            "user_id",
            "white space",
        ),
        (
            json!({ "request_key": "b3", "user_id": "u", "event": "e".repeat(65) }),
            "event",
            "longer than the limit of 64",
        ),
        (
            json!({ "request_key": "b4", "user_id": "u", "event": "app_open", "attributes": [1] }),
            "attributes",
            "must be a JSON object, got an array",
        ),
        (
            json!({ "request_key": "b5", "user_id": "u", "event": "app_open", "attributes": { "x": "y".repeat(17_000) } }),
            "attributes",
            "longer than the limit of 16384",
        ),
        (
            json!({ "request_key": "k\u{0}", "user_id": "u", "event": "app_open" }),
            "request_key",
            "control character",
        ),
        (
            json!({ "request_key": "b7", "user_id": "u" }),
            "event",
            "is missing",
        ),
        (
            json!({ "request_key": "b8", "user_id": 7, "event": "app_open" }),
            "user_id",
            "must be a string",
        ),
        (
            json!({ "request_key": "b9", "user_id": "u", "event": "app_open", "user": "x" }),
            "user",
            "is not a field here",
        ),
        (json!([1]), "body", "must be a JSON object"),
    ];
    for (body, field, words) in cases {
        let (status, answer) = api.post("/v1/triggers", SHOP, body.clone()).await;
        assert_eq!(status, 422, "{body}: {answer}");
        assert_eq!(answer["field"].as_str(), Some(field), "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(words),
            "{body}: {answer}"
        );
    }
    let (status, answer) = api
        .post_raw("/v1/triggers", Some(SHOP), "{not json".into())
        .await;
    assert_eq!((status, answer["field"].as_str()), (422, Some("body")));
    let huge = json!({ "request_key": "big", "user_id": "u", "event": "app_open", "attributes": { "x": "y".repeat(70_000) } });
    let (status, answer) = api.post("/v1/triggers", SHOP, huge).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(count(&api.ctx, "trigger_requests").await, 0);
}
on_both_backends!(
    refused_bodies,
    what_intake_would_reject_is_refused_naming_the_field
);

async fn a_batch_answers_each_trigger_in_order(db: TestDb) {
    let api = Running::start(db).await;
    let (status, _) = api
        .post("/v1/triggers", SHOP, trigger("before", "u0"))
        .await;
    assert_eq!(status, 202);
    let batch = json!({ "triggers": [
        trigger("b-1", "u1"),
        trigger("b-2", "u2"),
        { "request_key": "b-3", "user_id": "", "event": "app_open" },
        trigger("before", "u0"),
        trigger("before", "someone else"),
        trigger("b-1", "u1"),
        "text",
    ]});
    let (status, answer) = api.post("/v1/triggers/batch", SHOP, batch).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let codes: Vec<i64> = results
        .iter()
        .map(|r| r["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [202, 202, 422, 200, 409, 200, 422], "{answer}");
    assert_eq!(results[2]["field"], "triggers[2].user_id");
    assert_eq!(results[6]["field"], "triggers[6]");
    assert_eq!(results[0]["id"], results[5]["id"], "one row for b-1");
    assert_eq!(count(&api.ctx, "trigger_requests").await, 3);

    let many: Vec<Value> = (0..1_001)
        .map(|i| json!({ "request_key": format!("m{i}"), "user_id": "u", "event": "e" }))
        .collect();
    let (status, answer) = api
        .post("/v1/triggers/batch", SHOP, json!({ "triggers": many }))
        .await;
    assert_eq!(
        (status, answer["field"].as_str()),
        (422, Some("triggers")),
        "{answer}"
    );
    let full: Vec<Value> = (0..1_000)
        .map(
            |i| json!({ "request_key": format!("f{i}"), "user_id": format!("f{i}"), "event": "e" }),
        )
        .collect();
    let (status, answer) = api
        .post("/v1/triggers/batch", SHOP, json!({ "triggers": full }))
        .await;
    assert_eq!(status, 200, "1,000 short triggers fit in 64 KiB: {answer}");
    assert!(answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["code"] == 202));
    assert_eq!(
        count(&api.ctx, "trigger_requests WHERE request_key LIKE 'f%'").await,
        1_000
    );
}
on_both_backends!(batches, a_batch_answers_each_trigger_in_order);

async fn concurrent_posts_of_one_key_insert_it_once(db: TestDb) {
    let api = std::sync::Arc::new(Running::start(db).await);
    // Fewer in flight than api.max_connections (64), which sheds connections past it.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..200 {
        let api = api.clone();
        let in_flight = in_flight.clone();
        // Every fifth post repeats the key of the one before it: they land in one group
        // or in the next.
        let key = format!("c-{}", i - (i % 5 == 1) as usize);
        posts.spawn(async move {
            let _place = in_flight.acquire().await.unwrap();
            (
                key.clone(),
                api.post("/v1/triggers", SHOP, trigger(&key, &key)).await,
            )
        });
    }
    let mut by_key: std::collections::HashMap<String, Vec<u16>> = Default::default();
    while let Some(done) = posts.join_next().await {
        let (key, (status, answer)) = done.unwrap();
        assert!(status == 202 || status == 200, "{key}: {status} {answer}");
        by_key.entry(key).or_default().push(status);
    }
    for (key, statuses) in &by_key {
        assert_eq!(
            statuses.iter().filter(|s| **s == 202).count(),
            1,
            "{key}: {statuses:?}"
        );
    }
    assert_eq!(
        count(&api.ctx, "trigger_requests").await,
        by_key.len() as i64
    );
}
on_both_backends!(concurrent_posts, concurrent_posts_of_one_key_insert_it_once);

async fn grant_updates_are_answered_with_their_outcome(db: TestDb) {
    let api = Running::start(db).await;
    api.post("/v1/triggers", SHOP, trigger("g-1", "u1")).await;
    let (_, decided) = api.get("/v1/triggers/g-1?wait=10s", Some(SHOP)).await;
    let code = decided["grant"]["code"].as_str().unwrap().to_owned();
    let redeem = format!("/v1/grants/{code}/redeem");
    let paid = json!({ "update_key": "order-1-paid", "reason": "order 1" });
    let (status, done) = api.post(&redeem, PARTNER, paid.clone()).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(
        (done["status"].as_str(), done["state"].as_str()),
        (Some("done"), Some("redeemed")),
        "{done}"
    );
    let (status, again) = api.post(&redeem, PARTNER, paid).await;
    assert_eq!(
        (status, again["id"].clone()),
        (200, done["id"].clone()),
        "the same update again: {again}"
    );
    let (status, conflict) = api
        .post(
            &redeem,
            PARTNER,
            json!({ "update_key": "order-1-paid", "reason": "other" }),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");
    let (status, twice) = api
        .post(&redeem, PARTNER, json!({ "update_key": "order-1-again" }))
        .await;
    assert_eq!(
        (status, twice["status"].as_str()),
        (200, Some("rejected")),
        "{twice}"
    );
    assert!(
        twice["error"]
            .as_str()
            .unwrap()
            .contains("already redeemed"),
        "{twice}"
    );
    let (status, unknown) = api
        .post(
            "/v1/grants/NW-0000-0000/revoke",
            PARTNER,
            json!({ "update_key": "x-1" }),
        )
        .await;
    assert_eq!(
        (status, unknown["status"].as_str()),
        (200, Some("rejected")),
        "{unknown}"
    );
    let (status, revoked) = api
        .post(
            &format!("/v1/grants/{code}/revoke"),
            PARTNER,
            json!({ "update_key": "fraud-1", "reason": "fraud" }),
        )
        .await;
    assert_eq!(
        (status, revoked["state"].as_str()),
        (200, Some("revoked")),
        "{revoked}"
    );
    let (status, _) = api.get("/v1/triggers/g-1", Some(SHOP)).await;
    assert_eq!(status, 200);
    let (status, bad) = api.post(&redeem, PARTNER, json!({ "reason": "r" })).await;
    assert_eq!(
        (status, bad["field"].as_str()),
        (422, Some("update_key")),
        "{bad}"
    );
    let (status, bad) = api
        .post(
            &redeem,
            PARTNER,
            json!({ "update_key": "k", "reason": "r".repeat(5000) }),
        )
        .await;
    assert_eq!(
        (status, bad["field"].as_str()),
        (422, Some("reason")),
        "{bad}"
    );
    assert_eq!(count(&api.ctx, "grant_updates").await, 4);
}
on_both_backends!(grant_updates, grant_updates_are_answered_with_their_outcome);

/// The real binary with `RUST_LOG=debug`: it answers on `api.listen`, and neither
/// token appears in its log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_the_api_and_never_logs_a_token() {
    use crate::operations::harness::{migrated, wait_for, wallet_channel, write_config, BIN};
    let Some(db) = fresh_db(Backend::Mysql).await else {
        return;
    };
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("api");
    let path = write_config(
        &dir.0,
        &db.url,
        &wallet_channel(&receiver.base_url()),
        &coded_campaigns(),
        &api_yaml(),
    );
    let _ctx = migrated(&path).await;
    let log = dir.0.join("d.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(BIN)
        .args(["--config", path.to_str().unwrap(), "run"])
        .env("RUST_LOG", "debug")
        .env_remove("COUPONSD_DATABASE_URL")
        .env_remove("NOTIFY_SOCKET")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let address = wait_for("api listening", Duration::from_secs(15), || async {
        text().lines().find_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            (v["fields"]["message"] == "api listening")
                .then(|| v["fields"]["address"].as_str().map(str::to_owned))?
        })
    })
    .await;
    let Some(address) = address else {
        let _ = child.kill();
        panic!("no api listener logged:\n{}", text());
    };
    let http = reqwest::Client::new();
    let post = |token: &'static str, key: &'static str| {
        http.post(format!("http://{address}/v1/triggers"))
            .bearer_auth(token)
            .body(trigger(key, "u1").to_string())
            .send()
    };
    let started = Instant::now();
    assert_eq!(post(SHOP, "bin-1").await.unwrap().status(), 202);
    assert_eq!(post("not-a-token", "bin-2").await.unwrap().status(), 401);
    assert_eq!(post(PARTNER, "bin-3").await.unwrap().status(), 403);
    let decided = http
        .get(format!("http://{address}/v1/triggers/bin-1?wait=10s"))
        .bearer_auth(SHOP)
        .send()
        .await
        .unwrap();
    let decided: Value = serde_json::from_str(&decided.text().await.unwrap()).unwrap();
    assert_eq!(decided["outcome"], "granted", "{decided}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let _ = child.kill();
    let _ = child.wait();
    let log = text();
    assert!(
        log.contains("api request"),
        "debug lines were written: {}",
        log.len()
    );
    for secret in [SHOP, PARTNER, "not-a-token"] {
        assert!(!log.contains(secret), "the log holds a token ({secret})");
    }
}
