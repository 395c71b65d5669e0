use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};

use super::*;
use crate::domain::{CampaignId, ChannelName, Event, Money, RequestId, RequestKey, UserId};

const NOT_ELIGIBLE: &str = "()";

/// A folder under the system temp dir holding two rule files, removed when dropped.
struct RulesDir(PathBuf);

impl RulesDir {
    fn new(user_type: &str, select_coupon: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("couponsd-rules-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Self(dir);
        dir.write(USER_TYPE_FILE, user_type);
        dir.write(SELECT_COUPON_FILE, select_coupon);
        dir
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.0.join(file), text).unwrap();
    }

    fn load(&self, limits: &RuleLimits) -> Result<Rules, Vec<RuleError>> {
        Rules::load_with_clock(&self.0, limits, fixed_clock())
    }
}

impl Drop for RulesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 10, 12, 0, 0).unwrap()
}

fn fixed_clock() -> Clock {
    Arc::new(now)
}

fn shipped() -> Rules {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
    Rules::load(&dir, &RuleLimits::default()).unwrap()
}

fn request() -> TriggerRequest {
    let attributes =
        serde_json::json!({ "country": "DE", "tags": ["vip", "beta"], "score": 7, "ratio": 0.5 });
    TriggerRequest {
        id: RequestId(1),
        key: RequestKey::parse("req-1").unwrap(),
        user_id: UserId::parse("user-1").unwrap(),
        event: Event::parse("app_open").unwrap(),
        attributes: attributes.as_object().unwrap().clone(),
        created_at: now(),
    }
}

fn history(grants_for_event: i64) -> History {
    History {
        grants_for_event,
        last_grant_at: (grants_for_event > 0).then(|| now() - chrono::Duration::hours(50)),
        grants_by_campaign: HashMap::from([(
            CampaignId::parse("welcome").unwrap(),
            grants_for_event,
        )]),
        ..History::default()
    }
}

fn campaign() -> CampaignView {
    CampaignView {
        id: CampaignId::parse("welcome").unwrap(),
        event: Event::parse("app_open").unwrap(),
        audience: UserType::parse("first_time").unwrap(),
        per_user_limit: 1,
    }
}

fn coupon(id: &str, remaining: i64) -> CouponView {
    CouponView {
        id: CouponId::parse(id).unwrap(),
        face_value: Money::parse("10.00").unwrap(),
        remaining,
        valid_until: None,
        channel: ChannelName::parse("wallet").unwrap(),
    }
}

fn first_time() -> UserType {
    UserType::parse("first_time").unwrap()
}

/// Loads `select_coupon` (with a trivial user type rule) and runs it.
fn select_with(script: &str, coupons: &[CouponView]) -> Result<Option<CouponId>, RuleError> {
    let dir = RulesDir::new(r#""first_time""#, script);
    let rules = dir.load(&RuleLimits::default()).unwrap();
    rules.select_coupon(&request(), &first_time(), &campaign(), coupons)
}

/// Loads `user_type` (with a trivial selection rule) and runs it, timing the run.
fn user_type_with(script: &str, limits: &RuleLimits) -> (Result<UserType, RuleError>, Duration) {
    let dir = RulesDir::new(script, NOT_ELIGIBLE);
    let rules = dir.load(limits).unwrap();
    let started = Instant::now();
    let result = rules.user_type(&request(), &history(0));
    (result, started.elapsed())
}

/// Runs a hostile `user_type` script and returns its error, which must come quickly.
fn stopped(script: &str, limits: &RuleLimits) -> RuleError {
    let (result, elapsed) = user_type_with(script, limits);
    let err = result.unwrap_err();
    // Without its limit such a script runs for minutes or forever; 10 s leaves room for
    // a machine busy with other work (1 s failed once under a parallel release build).
    assert!(
        elapsed < Duration::from_secs(10),
        "{script:?} ran for {elapsed:?}"
    );
    assert_eq!(err.file.file_name().unwrap(), USER_TYPE_FILE);
    err
}

#[test]
fn rules_are_send_and_sync_so_workers_can_share_them() {
    fn shared<T: Send + Sync>() {}
    shared::<Rules>();
}

#[test]
fn shipped_rules_decide_first_time_versus_returning() {
    let rules = shipped();
    assert_eq!(
        rules.user_type(&request(), &history(0)).unwrap().as_str(),
        "first_time"
    );
    assert_eq!(
        rules.user_type(&request(), &history(2)).unwrap().as_str(),
        "returning"
    );
}

#[test]
fn shipped_rules_pick_the_first_coupon_with_stock() {
    let rules = shipped();
    let pick = |coupons: &[CouponView]| {
        rules
            .select_coupon(&request(), &first_time(), &campaign(), coupons)
            .unwrap()
    };
    let chain = [coupon("gold", 0), coupon("silver", 3), coupon("bronze", 9)];
    assert_eq!(pick(&chain).unwrap().as_str(), "silver");
    assert_eq!(pick(&[coupon("gold", 0), coupon("silver", 0)]), None);
    assert_eq!(pick(&[]), None);
}

#[test]
fn a_rule_that_changes_a_coupon_it_loops_over_does_not_change_the_chain() {
    let script = r#"
        for c in coupons { c.remaining = 0; c.id = "X"; }
        if coupons[1].remaining == 5 && coupons[1].id == "B" { "B" } else { "A" }
    "#;
    let chain = [coupon("A", 1), coupon("B", 5)];
    let chosen = select_with(script, &chain).unwrap();
    assert_eq!(
        chosen.unwrap().as_str(),
        "B",
        "the chain as given, whatever the loop did"
    );
}

#[test]
fn a_syntax_error_in_each_file_is_reported_with_its_file_and_line() {
    let dir = RulesDir::new("// first\nlet x = ;\nx", "// one\n// two\n\nif {\n");
    let errors = dir.load(&RuleLimits::default()).err().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].file, dir.0.join(USER_TYPE_FILE));
    assert_eq!(errors[0].line, 2);
    assert!(errors[0].column > 0);
    assert_eq!(errors[1].file, dir.0.join(SELECT_COUPON_FILE));
    assert_eq!(errors[1].line, 4);
    let shown = errors[0].to_string();
    assert!(
        shown.starts_with(&format!("{}:2:", dir.0.join(USER_TYPE_FILE).display())),
        "{shown}"
    );
}

#[test]
fn a_missing_rule_file_is_reported_with_its_path() {
    let dir = RulesDir::new(r#""first_time""#, NOT_ELIGIBLE);
    std::fs::remove_file(dir.0.join(SELECT_COUPON_FILE)).unwrap();
    let errors = dir.load(&RuleLimits::default()).err().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].file, dir.0.join(SELECT_COUPON_FILE));
    assert!(
        errors[0].message.starts_with("cannot read"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_runtime_error_names_the_file_and_line() {
    let script = "let n = history.grants_for_event;\n\nlet x = 10 / n;\n\"first_time\"";
    let err = user_type_with(script, &RuleLimits::default())
        .0
        .unwrap_err();
    assert_eq!(err.file.file_name().unwrap(), USER_TYPE_FILE);
    assert_eq!(err.line, 3, "{err}");
    assert!(err.message.contains("Division by zero"), "{err}");
}

#[test]
fn a_runtime_error_inside_a_function_names_the_line_in_the_function() {
    let script = "fn pick(n) {\n    throw \"no type for \" + n;\n}\npick(1)";
    let err = user_type_with(script, &RuleLimits::default())
        .0
        .unwrap_err();
    assert_eq!(err.line, 2, "{err}");
    assert!(
        err.message.contains("no type for 1") && err.message.contains("`pick`"),
        "{err}"
    );
}

#[test]
fn an_endless_loop_is_stopped_by_the_operations_limit() {
    let err = stopped("loop {}", &RuleLimits::default());
    assert!(
        err.message.contains("too many operations (limit 100000"),
        "{err}"
    );
    assert_eq!(err.line, 1);
}

#[test]
fn a_busy_loop_under_a_huge_operations_limit_is_stopped_by_the_time_limit() {
    let limits = RuleLimits {
        max_operations: u64::MAX,
        max_time: Duration::from_millis(20),
        ..RuleLimits::default()
    };
    let (result, elapsed) = user_type_with("while true {}", &limits);
    let err = result.unwrap_err();
    assert!(
        err.message.contains("exceeded the time limit of 20ms"),
        "{err}"
    );
    // Far beyond the limit, still proof that the time limit stopped an endless loop.
    assert!(elapsed < Duration::from_secs(2), "ran for {elapsed:?}");
}

#[test]
fn the_time_limit_applies_to_each_evaluation_not_to_the_rules_lifetime() {
    // Each evaluation takes a few milliseconds; the rules live longer than the limit
    // between them. The limit is generous so that a loaded CI machine running the
    // debug build in parallel with other tests still evaluates well within it.
    let limits = RuleLimits {
        max_time: Duration::from_millis(300),
        ..RuleLimits::default()
    };
    let dir = RulesDir::new(
        r#"let i = 0; while i < 100 { i += 1; } "first_time""#,
        NOT_ELIGIBLE,
    );
    let rules = dir.load(&limits).unwrap();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(350));
        let result = rules.user_type(&request(), &history(0));
        assert!(result.is_ok(), "{result:?}");
    }
}

#[test]
fn runaway_recursion_is_stopped_by_the_call_depth_limit() {
    let err = stopped("fn f(x) { f(x + 1) }\nf(0)", &RuleLimits::default());
    assert!(
        err.message.contains("call depth exceeded (limit 32"),
        "{err}"
    );
}

fn with_many_operations() -> RuleLimits {
    // So that the size limit, not the operations limit, is what stops the script.
    RuleLimits {
        max_operations: 10_000_000,
        max_time: Duration::from_secs(5),
        ..RuleLimits::default()
    }
}

#[test]
fn a_string_doubling_forever_is_stopped_by_the_string_size_limit() {
    let err = stopped(r#"let s = "x"; loop { s += s; }"#, &with_many_operations());
    assert!(
        err.message.contains("string too large (limit 16384 bytes"),
        "{err}"
    );
}

#[test]
fn a_huge_array_is_stopped_by_the_array_size_limit() {
    let err = stopped("let a = []; loop { a.push(1); }", &with_many_operations());
    assert!(
        err.message.contains("array too large (limit 10000 items"),
        "{err}"
    );
    let err = stopped(
        "let a = []; a.pad(1000000000, 0); 1",
        &with_many_operations(),
    );
    assert!(err.message.contains("array too large"), "{err}");
}

#[test]
fn a_huge_map_is_stopped_by_the_map_size_limit() {
    let err = stopped(
        "let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }",
        &with_many_operations(),
    );
    assert!(
        err.message.contains("map too large (limit 10000 entries"),
        "{err}"
    );
    // Merging checks the whole map each time, so keep this one small for debug builds.
    let limits = RuleLimits {
        max_map_size: 500,
        ..with_many_operations()
    };
    let script = "let m = #{}; let i = 0; loop { let n = #{}; n[`k${i}`] = i; m += n; i += 1; }";
    let err = stopped(script, &limits);
    assert!(
        err.message.contains("map too large (limit 500 entries"),
        "{err}"
    );
}

#[test]
fn a_map_growing_inside_another_value_is_still_stopped_by_the_operations_or_time_limit() {
    // Rhai does not count keys added by index to a nested map against max_map_size.
    let script = "let m = #{ a: #{} }; let i = 0; loop { m.a[`k${i}`] = i; i += 1; }";
    let err = stopped(script, &RuleLimits::default());
    let limit_hit =
        err.message.contains("too many operations") || err.message.contains("time limit");
    assert!(limit_hit, "{err}");
}

#[test]
fn eval_is_refused_when_the_rules_load() {
    let dir = RulesDir::new(r#"eval("\"first_time\"")"#, NOT_ELIGIBLE);
    let errors = dir.load(&RuleLimits::default()).err().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].column), (1, 1));
    assert!(errors[0].message.contains("eval"), "{}", errors[0]);
}

#[test]
fn import_is_refused_when_the_rules_load() {
    let dir = RulesDir::new("import \"/etc/passwd\" as p;\n\"first_time\"", NOT_ELIGIBLE);
    let errors = dir.load(&RuleLimits::default()).err().unwrap();
    assert_eq!(errors[0].line, 1);
    assert!(errors[0].message.contains("import"), "{}", errors[0]);
}

#[test]
fn a_misspelt_input_is_refused_when_the_rules_load() {
    let dir = RulesDir::new(
        r#"if histroy.grants_for_event == 0 { "first_time" } else { "returning" }"#,
        NOT_ELIGIBLE,
    );
    let errors = dir.load(&RuleLimits::default()).err().unwrap();
    assert!(errors[0].message.contains("histroy"), "{}", errors[0]);
}

#[test]
fn user_type_must_be_a_non_empty_string() {
    for (script, shown) in [
        ("42", "got 42 (i64)"),
        ("()", "got ()"),
        (r#""""#, r#"got """#),
    ] {
        let err = user_type_with(script, &RuleLimits::default())
            .0
            .unwrap_err();
        assert_eq!(err.file.file_name().unwrap(), USER_TYPE_FILE);
        assert!(
            err.message.starts_with("must return a string user type"),
            "{err}"
        );
        assert!(err.message.contains(shown), "{err}");
    }
}

#[test]
fn select_coupon_returning_an_unknown_coupon_is_an_error() {
    let err = select_with(r#""platinum""#, &[coupon("gold", 1)]).unwrap_err();
    assert_eq!(err.file.file_name().unwrap(), SELECT_COUPON_FILE);
    assert!(
        err.message
            .contains(r#"returned unknown coupon "platinum""#),
        "{err}"
    );
    let err = select_with("7", &[coupon("gold", 1)]).unwrap_err();
    assert!(
        err.message.contains("must return a coupon id string or ()"),
        "{err}"
    );
}

#[test]
fn select_coupon_returning_unit_means_not_eligible() {
    assert_eq!(select_with("()", &[coupon("gold", 1)]).unwrap(), None);
}

#[test]
fn scripts_see_every_documented_input() {
    let script = r#"
        if request.key != "req-1" || request.user_id != "user-1" || request.event != "app_open" { throw "request"; }
        if request.attributes.country != "DE" || request.attributes.score != 7 || !("beta" in request.attributes.tags) { throw "attributes"; }
        if request.attributes.missing != () { throw "missing attribute"; }
        if user_type != "first_time" { throw "user_type"; }
        if campaign.id != "welcome" || campaign.event != "app_open" || campaign.audience != "first_time" || campaign.per_user_limit != 1 { throw "campaign"; }
        let c = coupons[1];
        if c.face_value != "10.00" || c.face_value_cents != 1000 || c.remaining != 5 || c.channel != "wallet" { throw "coupon"; }
        c.id
    "#;
    let picked = select_with(script, &[coupon("gold", 0), coupon("silver", 5)]).unwrap();
    assert_eq!(picked.unwrap().as_str(), "silver");

    let script = r#"
        if history.grants_for_event != 2 || history.grants_by_campaign.welcome != 2 { throw "counts"; }
        if history.last_grant_at != "2025-03-08T10:00:00Z" || hours_since(history.last_grant_at) != 50 { throw "last grant"; }
        "returning"
    "#;
    let dir = RulesDir::new(script, NOT_ELIGIBLE);
    let rules = dir.load(&RuleLimits::default()).unwrap();
    assert_eq!(
        rules.user_type(&request(), &history(2)).unwrap().as_str(),
        "returning"
    );
}

#[test]
fn version_digest_changes_when_a_script_changes_and_is_stable_otherwise() {
    let dir = RulesDir::new(r#""first_time""#, NOT_ELIGIBLE);
    let first = dir.load(&RuleLimits::default()).unwrap().version().clone();
    assert_eq!(first.0.len(), 16);
    assert!(first
        .0
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(dir.load(&RuleLimits::default()).unwrap().version(), &first);

    // What `sha256sum user_type.rhai select_coupon.rhai | sha256sum | cut -c1-16` prints.
    let listing = format!(
        "{}  user_type.rhai\n{}  select_coupon.rhai\n",
        hex(&Sha256::digest(br#""first_time""#)),
        hex(&Sha256::digest(b"()"))
    );
    assert_eq!(first.0, hex(&Sha256::digest(listing.as_bytes()))[..16]);

    dir.write(SELECT_COUPON_FILE, "();");
    let second = dir.load(&RuleLimits::default()).unwrap().version().clone();
    assert_ne!(second, first);
    // The same text split differently between the two files is a different rule set.
    dir.write(USER_TYPE_FILE, r#""first_time";"#);
    dir.write(SELECT_COUPON_FILE, "()");
    let moved = dir.load(&RuleLimits::default()).unwrap().version().clone();
    dir.write(USER_TYPE_FILE, r#""first_time""#);
    dir.write(SELECT_COUPON_FILE, ";()");
    assert_ne!(dir.load(&RuleLimits::default()).unwrap().version(), &moved);
}

#[test]
fn bucket_is_stable_and_within_0_to_99() {
    // Pinned: a change here silently moves users between experiment groups.
    assert_eq!(functions::bucket("user-1", None), 94);
    assert_eq!(functions::bucket("user-1", Some("spring")), 60);
    assert_eq!(functions::bucket("", None), 52);
    let mut seen = [false; 100];
    for i in 0..2000 {
        let b = functions::bucket(&format!("user-{i}"), None);
        assert!((0..=99).contains(&b));
        seen[b as usize] = true;
    }
    assert!(
        seen.iter().all(|s| *s),
        "2000 users should reach every bucket"
    );

    let script = r#"if bucket(request.user_id) == 94 && bucket(request.user_id, "spring") == 60 { "a" } else { "b" }"#;
    assert_eq!(
        user_type_with(script, &RuleLimits::default())
            .0
            .unwrap()
            .as_str(),
        "a"
    );
}

#[test]
fn time_helpers_count_whole_units_back_from_the_clock() {
    let script = r#"
        if now() != "2025-03-10T12:00:00Z" { throw "now " + now(); }
        if days_since("2025-03-08T12:00:01Z") != 1 || days_since("2025-03-08T14:00:00+02:00") != 2 { throw "days"; }
        if hours_since("2025-03-10T10:30:00Z") != 1 || hours_since("2025-03-11T12:00:00Z") != -24 { throw "hours"; }
        if days_since(()) != 1000000000 || hours_since(()) <= 1000000 { throw "never"; }
        "ok"
    "#;
    assert_eq!(
        user_type_with(script, &RuleLimits::default())
            .0
            .unwrap()
            .as_str(),
        "ok"
    );

    let err = user_type_with("days_since(\"yesterday\")", &RuleLimits::default())
        .0
        .unwrap_err();
    assert!(
        err.message
            .contains(r#"days_since: "yesterday" is not an RFC 3339 timestamp"#),
        "{err}"
    );
    assert_eq!(err.line, 1);
}

#[test]
fn contains_any_matches_items_of_the_same_value_and_type() {
    let script = r#"
        if !contains_any(request.attributes.tags, ["staff", "vip"]) { throw "strings"; }
        if contains_any(request.attributes.tags, ["staff"]) || contains_any([], ["vip"]) || contains_any(["vip"], []) { throw "none"; }
        if !contains_any([1, 2, 3], [3]) || contains_any([1], ["1"]) || contains_any([1.0], [1.0]) { throw "types"; }
        "ok"
    "#;
    assert_eq!(
        user_type_with(script, &RuleLimits::default())
            .0
            .unwrap()
            .as_str(),
        "ok"
    );
}

#[test]
fn print_and_debug_do_not_break_a_rule() {
    let script = r#"print("hello"); debug(request); "first_time""#;
    assert_eq!(
        user_type_with(script, &RuleLimits::default())
            .0
            .unwrap()
            .as_str(),
        "first_time"
    );
}

/// Generous limits for the built-in bound tests: the time bound is 200 ms and the
/// operations limit does not stop anything first.
fn with_200ms() -> RuleLimits {
    RuleLimits {
        max_operations: u64::MAX,
        max_time: Duration::from_millis(200),
        ..RuleLimits::default()
    }
}

/// Runs a hostile `user_type` script under [`with_200ms`] and returns its error, which
/// must come within twice the time limit.
fn stopped_within_twice_max_time(script: &str) -> RuleError {
    let limits = with_200ms();
    let (result, elapsed) = user_type_with(script, &limits);
    let err = result.unwrap_err();
    assert!(
        elapsed < limits.max_time * 2,
        "{script:?} ran for {elapsed:?}: {err}"
    );
    err
}

#[test]
fn replacing_each_character_of_a_long_string_with_the_string_is_refused_before_it_is_built() {
    for replace in [
        r#"s.replace("x", s)"#,
        r#"s.replace('x', s)"#,
        r#"s.replace("", s)"#,
    ] {
        let script = format!(r#"let s = ""; s.pad(16000, "x"); {replace}; "first_time""#);
        let err = stopped_within_twice_max_time(&script);
        assert!(
            err.message
                .contains("string too large (limit 16384 bytes, rules.limits.max_string_size)"),
            "{err}"
        );
    }
}

#[test]
fn padding_is_counted_in_bytes_and_an_empty_padding_changes_nothing() {
    // 16,000 characters is under the limit of 16,384, but at 3 bytes each it is not.
    let err = stopped_within_twice_max_time(r#"let s = "x"; s.pad(16000, "€"); "first_time""#);
    assert!(err.message.contains("string too large"), "{err}");
    let err = stopped_within_twice_max_time(r#"let s = "x"; s.pad(16000, '€'); "first_time""#);
    assert!(err.message.contains("string too large"), "{err}");
    // Rhai's own `pad` loops forever on an empty padding.
    let (result, elapsed) =
        user_type_with(r#"let s = "first_time"; s.pad(100, ""); s"#, &with_200ms());
    assert_eq!(result.unwrap().as_str(), "first_time");
    assert!(elapsed < Duration::from_millis(400), "ran for {elapsed:?}");
}

#[test]
fn splitting_a_string_into_more_items_than_an_array_holds_is_refused_before_it_is_built() {
    for split in [
        r#"s.split("")"#,
        r#"s.split_rev("")"#,
        r#"s.split("", 20000)"#,
        "s.to_chars()",
    ] {
        let script = format!(r#"let s = ""; s.pad(16000, "x"); let a = {split}; "first_time""#);
        let err = stopped_within_twice_max_time(&script);
        assert!(
            err.message
                .contains("array too large (limit 10000 items, rules.limits.max_array_size)"),
            "{split}: {err}"
        );
    }
}

#[test]
fn a_sort_whose_comparer_runs_past_the_deadline_stops_at_the_deadline() {
    let script = "let a = []; a.pad(10000, 0);
        for i in 0..10000 { a[i] = (i * 7919) % 10007; }
        a.sort(|x, y| { let i = 0; while i < 100 { i += 1; } x - y });
        \"first_time\"";
    let err = stopped_within_twice_max_time(script);
    assert!(
        err.message.contains("exceeded the time limit of 200ms"),
        "{err}"
    );
}

#[test]
fn an_error_in_a_sort_comparer_is_the_sorts_error() {
    let script = r#"let a = [3, 1, 2]; a.sort(|x, y| throw "cannot compare"); "first_time""#;
    let err = stopped_within_twice_max_time(script);
    assert!(err.message.contains("cannot compare"), "{err}");
}

#[test]
fn the_bounded_built_ins_give_the_same_results_as_rhais_own() {
    let ours = sandbox::engine(&RuleLimits::default(), fixed_clock());
    let rhais = rhai::Engine::new();
    for expr in [
        r#"let s = "hello, world"; s.replace("l", "LL"); s"#,
        r#"let s = "hello"; s.replace("", "-"); s"#,
        r#"let s = ""; s.replace("", "-"); s"#,
        r#"let s = "hello"; s.replace("l", '*'); s"#,
        r#"let s = "hello"; s.replace('l', "(^)"); s"#,
        r#"let s = "héllo"; s.replace('é', 'e'); s"#,
        r#"let s = "ab"; s.pad(7, "xyz"); s"#,
        r#"let s = "ab"; s.pad(5, '€'); s"#,
        r#"let s = "abcdef"; s.pad(3, "x"); s"#,
        r#"let s = "ab"; s.pad(-1, "x"); s"#,
        r#""a b  c".split()"#,
        r#""".split()"#,
        r#""a,b,,c".split(",")"#,
        r#""a,b,,c".split(',')"#,
        r#""abc".split("")"#,
        r#""".split(",")"#,
        r#""a,b,c".split(",", 2)"#,
        r#""a,b,c".split(',', 0)"#,
        r#""a,b,c".split_rev(",")"#,
        r#""a,b,c".split_rev(',', 2)"#,
        r#""a,b,c".split_rev(",", 1)"#,
        r#""héllo".to_chars()"#,
        "let a = [3, 1, 2]; a.sort(|x, y| x - y); a",
        "let a = [3, 1, 2]; a.sort_by(|x, y| x > y); a",
        // Those that change a value refuse a constant; the others take it.
        r#"const c = "abc"; c.replace("a", "b"); c"#,
        r#"const c = "abc"; c.pad(5, "x"); c"#,
        "const c = [2, 1]; c.sort(|x, y| x - y); c",
        r#"const c = "a-b"; c.split("-")"#,
        r#"const c = "a-b"; c.to_chars()"#,
    ] {
        let ours = ours.eval::<rhai::Dynamic>(expr).map(|v| format!("{v:?}"));
        let rhais = rhais.eval::<rhai::Dynamic>(expr).map(|v| format!("{v:?}"));
        assert_eq!(
            ours.map_err(|e| e.to_string()),
            rhais.map_err(|e| e.to_string()),
            "{expr}"
        );
    }
}

#[test]
fn limits_built_in_code_are_lowered_to_what_max_memory_allows() {
    let limits = RuleLimits {
        max_string_size: usize::MAX,
        max_array_size: usize::MAX,
        max_map_size: usize::MAX,
        max_memory: 8 << 20,
        ..with_200ms()
    };
    let err = stopped(r#"let s = "x"; loop { s += s; }"#, &limits);
    assert!(
        err.message
            .contains("string too large (limit 1048576 bytes"),
        "{err}"
    );
    let err = stopped("let a = []; a.pad(1000000, 0); 1", &limits);
    assert!(
        err.message.contains("array too large (limit 16384 items"),
        "{err}"
    );
}
