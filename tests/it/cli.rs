//! The real binary: `migrate`, `run --drain`, exit codes.

use std::path::Path;
use std::process::Command;

use crate::on_both_backends;
use crate::support::*;

fn couponsd(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_couponsd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("COUPONSD_DATABASE_URL")
        .output()
        .expect("couponsd runs")
}

fn write_config(dir: &Path, db: &TestDb, receiver: &Receiver) -> std::path::PathBuf {
    let yaml = format!(
        r#"database:
  url: "{url}"
rules:
  dir: "{rules}"
worker:
  poll_interval: 20ms
channels:
  wallet:
    url: "{base}/webhooks/wallet"
    secret: "{SECRET}"
campaigns:
{campaigns}
"#,
        url = db.url,
        rules = shipped_rules().display(),
        base = receiver.base_url(),
        campaigns = standard_campaigns(5)
    );
    let path = dir.join("couponsd.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn run_drain_leaves_nothing_queued_and_nothing_pending(db: TestDb) {
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("cli");
    let path = write_config(&dir.0, &db, &receiver);
    let out = couponsd(&path, &["migrate"]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctx = context(couponsd::config::Config::load(&path).unwrap()).await;
    for i in 0..40 {
        insert(
            &ctx,
            &format!("k{i}"),
            &format!("u{}", i % 30),
            "app_open",
            None,
        )
        .await
        .unwrap();
    }
    let run = tokio::task::spawn_blocking(move || couponsd(&path, &["run", "--drain"]))
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "run --drain: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let statuses = counts(&ctx, "status", "trigger_requests").await;
    assert_eq!(statuses.get("done"), Some(&40), "{statuses:?}");
    let deliveries = counts(&ctx, "status", "deliveries").await;
    assert_eq!(deliveries.get("pending"), None, "{deliveries:?}");
    assert_eq!(deliveries.get("delivered"), Some(&40));
    assert_eq!(receiver.seen().len(), 40);
}
on_both_backends!(
    run_drain_leaves_nothing_queued_and_nothing_pending,
    run_drain_leaves_nothing_queued_and_nothing_pending
);

#[test]
fn a_bad_config_exits_2_and_names_the_key() {
    let dir = TempDir::new("badcfg");
    let path = dir.0.join("couponsd.yaml");
    std::fs::write(&path, "worker:\n  poll_interval: soon\n").unwrap();
    let out = couponsd(&path, &["migrate"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("worker.poll_interval"), "{stderr}");
}

#[test]
fn a_broken_rule_exits_2_and_names_file_and_line() {
    let dir = TempDir::new("badrule");
    std::fs::create_dir_all(dir.0.join("rules")).unwrap();
    std::fs::write(
        dir.0.join("rules/user_type.rhai"),
        "let x = 1;\nlet y = ;\n",
    )
    .unwrap();
    std::fs::copy(
        shipped_rules().join("select_coupon.rhai"),
        dir.0.join("rules/select_coupon.rhai"),
    )
    .unwrap();
    let path = dir.0.join("couponsd.yaml");
    std::fs::write(
        &path,
        format!(
            "database:\n  url: \"sqlite://{}\"\n",
            dir.0.join("db.sqlite").display()
        ),
    )
    .unwrap();
    let migrate = couponsd(&path, &["migrate"]);
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    let out = couponsd(&path, &["run", "--drain"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("user_type.rhai:2:"), "{stderr}");
}
