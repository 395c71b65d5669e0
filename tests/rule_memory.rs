//! How much one rule evaluation allocates, measured by counting every allocation of
//! this test binary: the sandbox must refuse an oversized result before building it,
//! so that no evaluation takes more than `rules.limits.max_memory`.
//!
//! A binary of its own because it replaces the global allocator, and one test only, so
//! that no other test allocates while it measures. The allocator refuses to hold more
//! than [`HARD_CAP`] at once (the process aborts), so a regression fails fast instead
//! of taking the machine's memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use chrono::Utc;
use couponsd::config::RuleLimits;
use couponsd::domain::{Event, History, RequestId, RequestKey, TriggerRequest, UserId};
use couponsd::rules::{Rules, SELECT_COUPON_FILE, USER_TYPE_FILE};

const HARD_CAP: usize = 512 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

impl Counting {
    /// Counts `size` more bytes, or refuses them when that would pass [`HARD_CAP`].
    fn grow(size: usize) -> bool {
        let live = LIVE.fetch_add(size, Relaxed) + size;
        if live > HARD_CAP {
            LIVE.fetch_sub(size, Relaxed);
            return false;
        }
        PEAK.fetch_max(live, Relaxed);
        true
    }
}

// SAFETY: every call is passed on to `System` with the same arguments; only the
// counting is added, and a refused allocation returns null as the contract allows.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !Self::grow(new_size - old) {
            return std::ptr::null_mut();
        }
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() {
            LIVE.fetch_sub(new_size.saturating_sub(old), Relaxed);
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns what it returned and the most bytes it held at once.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(base))
}

fn request() -> TriggerRequest {
    TriggerRequest {
        id: RequestId(1),
        key: RequestKey::parse("req-1").unwrap(),
        user_id: UserId::parse("user-1").unwrap(),
        event: Event::parse("app_open").unwrap(),
        attributes: serde_json::Map::new(),
        created_at: Utc::now(),
    }
}

/// Loads `script` as `user_type.rhai` and returns its error, how long it took and the
/// most bytes the evaluation held at once.
fn evaluate(script: &str, limits: &RuleLimits) -> (String, Duration, usize) {
    let dir = std::env::temp_dir().join(format!("couponsd-rule-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(USER_TYPE_FILE), script).unwrap();
    std::fs::write(dir.join(SELECT_COUPON_FILE), "()").unwrap();
    let rules = Rules::load(&dir, limits).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let (request, history) = (request(), History::default());
    let started = Instant::now();
    let (result, peak) = peak_during(|| rules.user_type(&request, &history));
    let err = result.expect_err(script).to_string();
    (err, started.elapsed(), peak)
}

#[test]
fn no_rule_evaluation_allocates_past_max_memory() {
    let max_time = Duration::from_millis(500);
    let shipped = RuleLimits {
        max_operations: u64::MAX,
        max_time,
        ..RuleLimits::default()
    };
    // The largest sizes a 16 MiB max_memory allows.
    let largest = RuleLimits {
        max_string_size: shipped.string_size_cap(),
        max_array_size: shipped.item_count_cap(),
        max_map_size: shipped.item_count_cap(),
        ..shipped.clone()
    };
    let cases = [
        // The issue's case: 256 MB of result from a 16,000-character string.
        (
            r#"let s = ""; s.pad(16000, "x"); s.replace("x", s)"#,
            &shipped,
            "string too large",
        ),
        (
            r#"let s = ""; s.pad(2000000, "x"); s.replace("x", s)"#,
            &largest,
            "string too large",
        ),
        (
            r#"let s = ""; s.pad(2000000, "x"); s.split("")"#,
            &largest,
            "array too large",
        ),
        (
            r#"let s = ""; s.pad(2000000, "x"); s.to_chars()"#,
            &largest,
            "array too large",
        ),
        (
            r#"let s = ""; s.pad(2000000, '😀')"#,
            &largest,
            "string too large",
        ),
        (
            r#"let s = "x"; loop { s += s; }"#,
            &largest,
            "string too large",
        ),
        ("let a = [1]; loop { a += a; }", &largest, "array too large"),
        (
            "let a = []; a.pad(1000000000, 0)",
            &largest,
            "array too large",
        ),
    ];
    for (script, limits, expected) in cases {
        let (err, elapsed, peak) = evaluate(script, limits);
        eprintln!("{script}: {elapsed:?}, peak {peak} bytes: {err}");
        assert!(err.contains(expected), "{script}: {err}");
        assert!(err.contains(USER_TYPE_FILE), "{err}");
        assert!(
            peak <= limits.max_memory,
            "{script} held {peak} bytes, more than max_memory {}",
            limits.max_memory
        );
        assert!(elapsed < max_time * 2, "{script} ran for {elapsed:?}");
    }
}
