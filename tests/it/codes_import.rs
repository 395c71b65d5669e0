//! `codes import` and `codes show`: a pool coupon's codes streamed in by chunks, its
//! stock raised by exactly the codes written, duplicates and invalid lines reported by
//! line, the same file twice adding nothing; through the library and the binary.

use std::path::{Path, PathBuf};

use couponsd::domain::codes::MAX_CODE_LEN;
use couponsd::ops::codes::lines::Invalid;
use couponsd::ops::codes::{self, Duplicate, FirstSeen, ImportReport, InvalidLine, CHUNK, DETAIL};
use couponsd::ops::OpsError;
use couponsd::runtime::Daemon;
use couponsd::store::codes::import::PoolStock;
use couponsd::store::codes::CodeCounts;

use crate::on_both_backends;
use crate::support::*;

/// NEW10 is a pool, NEW8 (after it in the chain) generates its codes, BACK5 counts its
/// stock, and BACK7 is a second pool.
const CAMPAIGNS: &str = r#"  - id: newcomer
    event: app_open
    audience: first_time
    coupons:
      - { id: NEW10, face_value: "10.00", channel: wallet, codes: { pool: true } }
      - { id: NEW8, face_value: "8.00", stock: 100, channel: wallet, codes: { generate: "NEW8-XXXX-XXXX" } }
  - id: loyalty
    event: app_open
    audience: returning
    coupons:
      - { id: BACK5, face_value: "5.00", stock: 100000, channel: wallet }
      - { id: BACK7, face_value: "7.00", channel: wallet, codes: { pool: true } }"#;

async fn pool_context(db: &TestDb, receiver: &Receiver) -> Daemon {
    context(config(db, receiver, &shipped_rules(), CAMPAIGNS, "")).await
}

fn write_file(dir: &TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.0.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

async fn import(ctx: &Daemon, coupon: &str, file: &Path) -> Result<ImportReport, OpsError> {
    codes::import(&installation(ctx), coupon, file).await
}

async fn stock_of(ctx: &Daemon, coupon: &str) -> PoolStock {
    store(ctx, async |c| c.pool_stock(coupon).await)
        .await
        .unwrap()
}

async fn counts_of(ctx: &Daemon, coupon: &str) -> CodeCounts {
    store(ctx, async |c| c.code_counts_of(coupon).await).await
}

fn duplicate(line: u64, code: &str, first: FirstSeen) -> Duplicate {
    Duplicate {
        line,
        code: code.to_owned(),
        first,
    }
}

fn invalid(line: u64, reason: Invalid) -> InvalidLine {
    InvalidLine { line, reason }
}

async fn importing_a_file_twice_adds_its_codes_once(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = pool_context(&db, &receiver).await;
    let dir = TempDir::new("codes");
    // Three chunks, and line 12,001 repeats line 10 from the first one.
    let n = 2 * CHUNK + 2_000;
    let mut text: String = (1..=n).map(|i| format!("CODE-{i:06}\n")).collect();
    text.push_str("CODE-000010\n");
    let file = write_file(&dir, "codes.txt", text.as_bytes());

    let first = import(&ctx, "NEW10", &file).await.unwrap();
    assert_eq!(first.imported, n as u64);
    assert_eq!((first.duplicates, first.invalid), (1, 0));
    assert_eq!(
        first.duplicate_lines,
        [duplicate(n as u64 + 1, "CODE-000010", FirstSeen::Line(10))],
        "a repeat of a code an earlier chunk wrote names that line"
    );
    let stock = PoolStock {
        stock: n as i64,
        remaining: n as i64,
    };
    assert_eq!(first.after, stock);
    assert_eq!(stock_of(&ctx, "NEW10").await, stock);

    let second = import(&ctx, "NEW10", &file).await.unwrap();
    assert_eq!(second.imported, 0);
    assert_eq!(second.duplicates, n as u64 + 1);
    assert_eq!(second.duplicate_lines.len(), DETAIL);
    assert_eq!(
        second.duplicate_lines[0],
        duplicate(1, "CODE-000001", FirstSeen::Table)
    );
    assert!(second
        .duplicate_lines
        .iter()
        .all(|d| d.first == FirstSeen::Table));
    assert_eq!(second.after, stock, "the stock was raised once");
    assert_eq!(stock_of(&ctx, "NEW10").await, stock);
    assert_eq!(
        counts_of(&ctx, "NEW10").await,
        CodeCounts {
            available: n as i64,
            issued: 0
        }
    );
    let rendered = second.to_string();
    assert!(
        rendered.contains(&format!("  … and {} more\n", n + 1 - DETAIL)),
        "{rendered}"
    );
}
on_both_backends!(
    importing_a_file_twice_adds_its_codes_once,
    importing_a_file_twice_adds_its_codes_once
);

async fn the_report_names_each_duplicate_and_invalid_line(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = pool_context(&db, &receiver).await;
    let dir = TempDir::new("codes");
    // A code another pool coupon holds is a duplicate too: codes are unique across all.
    let other = write_file(&dir, "other.txt", b"PRE1\n");
    assert_eq!(import(&ctx, "BACK7", &other).await.unwrap().imported, 1);
    let long = "L".repeat(MAX_CODE_LEN + 1);
    let most = "M".repeat(MAX_CODE_LEN);
    let text = format!("AAA\r\n  BBB  \nABC\n\n{long}\nA\u{7}B\nABC\nPRE1\n{most}\nCCC\n\n  \n");
    let file = write_file(&dir, "codes.txt", text.as_bytes());

    let report = import(&ctx, "NEW10", &file).await.unwrap();
    assert_eq!(report.imported, 5, "AAA BBB ABC MMM… CCC");
    assert_eq!(
        report.duplicate_lines,
        [
            duplicate(7, "ABC", FirstSeen::Line(3)),
            duplicate(8, "PRE1", FirstSeen::Table),
        ]
    );
    assert_eq!(
        report.invalid_lines,
        [
            invalid(4, Invalid::Empty),
            invalid(5, Invalid::TooLong(MAX_CODE_LEN + 1)),
            invalid(6, Invalid::Control('\u{7}')),
        ],
        "blank lines at the very end are not codes, and not invalid either"
    );
    assert_eq!((report.duplicates, report.invalid), (2, 3));
    assert_eq!(
        report.to_string(),
        "imported 5 codes into NEW10 (stock now 5, available 5)\n\
         duplicates: 2\n  \
           line 7: \"ABC\" (also at line 3)\n  \
           line 8: \"PRE1\" (already in coupon_codes)\n\
         invalid: 3\n  \
           line 4: empty\n  \
           line 5: over 64 bytes (65)\n  \
           line 6: control character U+0007\n"
    );
    assert_eq!(stock_of(&ctx, "NEW10").await.remaining, 5);
    assert_eq!(
        stock_of(&ctx, "BACK7").await.remaining,
        1,
        "the other pool keeps its code"
    );

    let csv = "code,batch\n\"Q,\"\"1\"\"\",a\nPLAIN , b\n\"Q,\"\"1\"\"\",c\n,d\nAAA,e\n";
    let csv_file = write_file(&dir, "codes.csv", csv.as_bytes());
    let report = import(&ctx, "NEW10", &csv_file).await.unwrap();
    assert_eq!(report.imported, 2, "Q,\"1\" and PLAIN");
    assert_eq!(
        report.duplicate_lines,
        [
            duplicate(4, "Q,\"1\"", FirstSeen::Line(2)),
            duplicate(6, "AAA", FirstSeen::Table),
        ],
        "line numbers count the header"
    );
    assert_eq!(report.invalid_lines, [invalid(5, Invalid::Empty)]);
    assert_eq!(report.after.remaining, 7);
    let present: Vec<String> = store(&ctx, async |c| {
        c.present_codes(&["Q,\"1\"".to_owned(), "PLAIN".to_owned()])
            .await
    })
    .await
    .into_iter()
    .collect();
    assert_eq!(present.len(), 2, "{present:?}");
}
on_both_backends!(
    the_report_names_each_duplicate_and_invalid_line,
    the_report_names_each_duplicate_and_invalid_line
);

async fn stock_rises_by_exactly_the_codes_imported_and_show_agrees(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = pool_context(&db, &receiver).await;
    let dir = TempDir::new("codes");
    let ten: String = (0..10).map(|i| format!("P{i}\n")).collect();
    let file = write_file(&dir, "ten.txt", ten.as_bytes());
    assert_eq!(import(&ctx, "NEW10", &file).await.unwrap().imported, 10);
    // Twelve newcomers: the pool's ten codes, then two generated ones from NEW8.
    for i in 0..12 {
        insert(&ctx, &format!("k{i}"), &format!("u{i}"), "app_open", None)
            .await
            .unwrap();
    }
    drain(&ctx).await;
    assert_eq!(
        counts_of(&ctx, "NEW10").await,
        CodeCounts {
            available: 0,
            issued: 10
        }
    );

    let more = write_file(&dir, "more.txt", b"P3\nQ1\nQ2\nP9\nQ3\nQ4\nQ5\n");
    let report = import(&ctx, "NEW10", &more).await.unwrap();
    assert_eq!((report.imported, report.duplicates), (5, 2));
    let stock = PoolStock {
        stock: 15,
        remaining: 5,
    };
    assert_eq!(report.after, stock);
    assert_eq!(stock_of(&ctx, "NEW10").await, stock);

    let show = codes::show(&installation(&ctx), "NEW10").await.unwrap();
    assert_eq!(
        show.counts,
        CodeCounts {
            available: 5,
            issued: 10
        }
    );
    assert_eq!(
        show.to_string(),
        "coupon     NEW10 (pool)\n\
         available  5\n\
         issued     10\n\
         remaining  5 of stock 15: agrees with the available codes\n"
    );
    let generated = codes::show(&installation(&ctx), "NEW8").await.unwrap();
    assert_eq!(
        generated.to_string(),
        "coupon     NEW8 (generated: NEW8-XXXX-XXXX)\n\
         available  n/a (generated)\n\
         issued     2\n"
    );
}
on_both_backends!(
    stock_rises_by_exactly_the_codes_imported_and_show_agrees,
    stock_rises_by_exactly_the_codes_imported_and_show_agrees
);

async fn only_a_pool_coupon_takes_codes(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = pool_context(&db, &receiver).await;
    let dir = TempDir::new("codes");
    let file = write_file(&dir, "codes.txt", b"X1\nX2\n");
    let refused = |result: Result<ImportReport, OpsError>| match result {
        Err(OpsError::Refused(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let generated = refused(import(&ctx, "NEW8", &file).await);
    assert!(
        generated.contains("coupon NEW8 is not a pool coupon: its codes are generated"),
        "{generated}"
    );
    assert!(
        generated.contains("campaigns[0].coupons[1].codes.generate"),
        "{generated}"
    );
    let counted = refused(import(&ctx, "BACK5", &file).await);
    assert!(
        counted.contains("coupon BACK5 is not a pool coupon: its stock is counted"),
        "{counted}"
    );
    let unknown = refused(import(&ctx, "NOPE", &file).await);
    assert!(unknown.contains("unknown coupon \"NOPE\""), "{unknown}");
    let missing = refused(import(&ctx, "NEW10", &dir.0.join("missing.txt")).await);
    assert!(
        missing.contains("cannot read") && missing.contains("missing.txt"),
        "{missing}"
    );
    assert_eq!(stock_of(&ctx, "BACK5").await.stock, 100_000);
    assert_eq!(stock_of(&ctx, "NEW10").await.stock, 0);
    let present = store(&ctx, async |c| {
        c.present_codes(&["X1".to_owned(), "X2".to_owned()]).await
    })
    .await;
    assert!(present.is_empty(), "nothing written: {present:?}");
}
on_both_backends!(
    only_a_pool_coupon_takes_codes,
    only_a_pool_coupon_takes_codes
);

async fn the_binary_imports_shows_and_refuses(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("codes-cli");
    let yaml = format!(
        "database:\n  url: \"{url}\"\nrules:\n  dir: \"{rules}\"\nchannels:\n  wallet:\n    \
         url: \"{base}/webhooks/wallet\"\n    secret: \"{SECRET}\"\ncampaigns:\n{CAMPAIGNS}\n",
        url = db.url,
        rules = shipped_rules().display(),
        base = receiver.base_url(),
    );
    let config = write_file(&dir, "couponsd.yaml", yaml.as_bytes());
    let codes = write_file(&dir, "codes.txt", b"A\nB\nC\nA\n\x01\n");
    let codes_arg = codes.to_str().unwrap();
    let run = |args: Vec<String>| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            couponsd(&config, &args)
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let migrate = run(args(&["migrate"])).await.unwrap();
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    let out = run(args(&["codes", "import", "NEW10", codes_arg]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "imported 3 codes into NEW10 (stock now 3, available 3)\n\
         duplicates: 1\n  line 4: \"A\" (also at line 1)\n\
         invalid: 1\n  line 5: control character U+0001\n"
    );
    let again = run(args(&["codes", "import", "NEW10", codes_arg]))
        .await
        .unwrap();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout)
            .starts_with("imported 0 codes into NEW10 (stock now 3, available 3)\nduplicates: 4\n"),
        "{}",
        text(&again.stdout)
    );
    let show = run(args(&["codes", "show", "NEW10"])).await.unwrap();
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    assert!(
        text(&show.stdout).contains("available  3\nissued     0\nremaining  3 of stock 3"),
        "{}",
        text(&show.stdout)
    );

    let counted = run(args(&["codes", "import", "BACK5", codes_arg]))
        .await
        .unwrap();
    assert_eq!(counted.status.code(), Some(1));
    assert!(
        text(&counted.stderr).contains("coupon BACK5 is not a pool coupon"),
        "{}",
        text(&counted.stderr)
    );
    let missing = dir.0.join("missing.txt");
    let missing = run(args(&[
        "codes",
        "import",
        "NEW10",
        missing.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("cannot read"),
        "{}",
        text(&missing.stderr)
    );
}
on_both_backends!(
    the_binary_imports_shows_and_refuses,
    the_binary_imports_shows_and_refuses
);

async fn concurrent_imports_of_the_same_codes_write_each_once(db: TestDb) {
    let receiver = Receiver::ok().await;
    let ctx = pool_context(&db, &receiver).await;
    let dir = TempDir::new("codes");
    let lines =
        |range: std::ops::Range<usize>| -> String { range.map(|i| format!("C{i:06}\n")).collect() };
    // The same codes in the same order, and one more chunk in the second: each chunk
    // of one meets the same chunk of the other, and one of the two writes it.
    let a = write_file(&dir, "a.txt", lines(0..3 * CHUNK).as_bytes());
    let b = write_file(&dir, "b.txt", lines(0..4 * CHUNK).as_bytes());
    let (into_new10, into_back7) =
        tokio::join!(import(&ctx, "NEW10", &a), import(&ctx, "BACK7", &b));
    let (into_new10, into_back7) = (into_new10.unwrap(), into_back7.unwrap());
    assert_eq!(
        into_new10.imported + into_back7.imported,
        4 * CHUNK as u64,
        "every code once"
    );
    assert_eq!(
        into_new10.duplicates + into_back7.duplicates,
        3 * CHUNK as u64,
        "the overlap once"
    );
    for (coupon, report) in [("NEW10", &into_new10), ("BACK7", &into_back7)] {
        let stock = stock_of(&ctx, coupon).await;
        let counts = counts_of(&ctx, coupon).await;
        assert_eq!(stock.remaining, report.imported as i64, "{coupon}");
        assert_eq!(counts.available, stock.remaining, "{coupon}: codes = stock");
    }
}
on_both_backends!(
    concurrent_imports_of_the_same_codes_write_each_once,
    concurrent_imports_of_the_same_codes_write_each_once
);
