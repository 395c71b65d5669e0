//! `couponsd init`: the real binary writes a starter installation from which a
//! newcomer's next commands (`check`, `rules test`, `migrate`, `run`) work as they are,
//! with the shipped rules byte for byte; it never overwrites without `--force`.

use std::path::Path;
use std::process::{Command, Output};

use axum::http::StatusCode;
use couponsd::config::Config;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_couponsd");

/// The files `init` writes besides `couponsd.yaml`, as they are in the source tree.
const RULE_FILES: [&str; 3] = [
    "rules/user_type.rhai",
    "rules/select_coupon.rhai",
    "rules/tests/shipped.yaml",
];

/// `couponsd ARGS` run from `cwd` as a newcomer would: no `--config`, nothing in the
/// environment.
fn couponsd_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("COUPONSD_CONFIG")
        .env_remove("COUPONSD_DATABASE_URL")
        .output()
        .expect("couponsd runs")
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of the first `secret: "…"` in the starter config.
fn secret_of(config: &str) -> String {
    let line = config
        .lines()
        .find(|l| l.trim_start().starts_with("secret: \""))
        .expect("the starter config has a secret");
    line.split('"').nth(1).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_runs_init_then_check_rules_test_migrate_and_run() {
    let tmp = TempDir::new("init");
    let said = assert_ok(&couponsd_in(&tmp.0, &["init", "mydir"]), "init mydir");
    assert!(said.contains("wrote mydir/couponsd.yaml"), "{said}");
    assert!(said.contains("cd mydir"), "{said}");
    let dir = tmp.0.join("mydir");

    let shipped_cases = std::fs::read_to_string(shipped_rules().join("tests/shipped.yaml"))
        .unwrap()
        .matches("\n  - name:")
        .count();
    let checked = assert_ok(&couponsd_in(&dir, &["check"]), "check");
    assert!(
        checked.contains(&format!("ok  {shipped_cases} rule test(s) in 1 file(s)")),
        "{checked}"
    );
    let tested = assert_ok(&couponsd_in(&dir, &["rules", "test"]), "rules test");
    assert!(!tested.is_empty());

    // Running it: the starter's channel pointed at a receiver that verifies with the
    // secret init made; one trigger goes all the way to a signed webhook.
    let yaml = std::fs::read_to_string(dir.join("couponsd.yaml")).unwrap();
    let receiver = Receiver::verifying_with(&secret_of(&yaml), |_, _| StatusCode::NO_CONTENT).await;
    let pointed = yaml.replace("http://127.0.0.1:9000", &receiver.base_url());
    assert_ne!(pointed, yaml, "the starter's channel is on 127.0.0.1:9000");
    // Port 0: tests run in parallel, and the starter's 9464 may be taken.
    let pointed = pointed.replace("listen: 127.0.0.1:9464", "listen: 127.0.0.1:0");
    std::fs::write(dir.join("couponsd.yaml"), pointed).unwrap();
    assert_ok(&couponsd_in(&dir, &["migrate"]), "migrate");
    assert!(
        dir.join("couponsd.db").exists(),
        "the SQLite file is made in the folder"
    );

    let url = format!("sqlite://{}", dir.join("couponsd.db").display());
    let text = std::fs::read_to_string(dir.join("couponsd.yaml")).unwrap();
    let config = Config::from_yaml_with_env(&text, &dir.join("couponsd.yaml"), &|name| {
        (name == "COUPONSD_DATABASE_URL").then(|| url.clone())
    })
    .unwrap();
    let ctx = context(config).await;
    insert(&ctx, "first", "u1", "app_open", None).await.unwrap();
    let run = tokio::task::spawn_blocking(move || couponsd_in(&dir, &["run", "--drain"]))
        .await
        .unwrap();
    assert_ok(&run, "run --drain");
    let grants = counts(&ctx, "coupon_id", "grants").await;
    assert_eq!(grants.get("NEW10"), Some(&1), "{grants:?}");
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].verified, "signed with the starter's secret");
    assert!(seen[0].body.contains("\"NEW10\""), "{}", seen[0].body);
}

#[test]
fn init_writes_the_shipped_rules_byte_for_byte() {
    let tmp = TempDir::new("init-rules");
    assert_ok(
        &couponsd_in(&tmp.0, &["init", tmp.0.to_str().unwrap()]),
        "init DIR",
    );
    for file in RULE_FILES {
        assert_eq!(
            std::fs::read(tmp.0.join(file)).unwrap(),
            std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap(),
            "{file} differs from the source tree's"
        );
    }
}

#[test]
fn a_second_init_refuses_naming_each_file_and_force_overwrites() {
    let tmp = TempDir::new("init-again");
    assert_ok(
        &couponsd_in(&tmp.0, &["init"]),
        "init in the current folder",
    );
    let config = tmp.0.join("couponsd.yaml");
    let mine = "# my own\ndatabase:\n  url: sqlite://mine.db\n";
    std::fs::write(&config, mine).unwrap();
    std::fs::remove_file(tmp.0.join("rules/select_coupon.rhai")).unwrap();

    let again = couponsd_in(&tmp.0, &["init"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    for existing in [
        "./couponsd.yaml",
        "./rules/user_type.rhai",
        "./rules/tests/shipped.yaml",
    ] {
        assert!(stderr.contains(existing), "{existing} not named: {stderr}");
    }
    assert!(!stderr.contains("select_coupon"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), mine);
    assert!(
        !tmp.0.join("rules/select_coupon.rhai").exists(),
        "a refused init writes nothing"
    );

    assert_ok(&couponsd_in(&tmp.0, &["init", "--force"]), "init --force");
    assert_ne!(std::fs::read_to_string(&config).unwrap(), mine);
    assert!(tmp.0.join("rules/select_coupon.rhai").exists());
    assert_ok(&couponsd_in(&tmp.0, &["check"]), "check after init --force");
}
