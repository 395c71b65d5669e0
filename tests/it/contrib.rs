//! The files in `contrib/` cannot drift from the code: every `couponsd_` metric the
//! alert rules and the Grafana dashboard name is served by a real daemon's `/metrics`;
//! every alert has a promtool unit test that fires it; the dashboard is a Grafana model
//! over a Prometheus data source variable whose queries parse as PromQL.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::operations::harness::*;
use crate::support::*;

fn contrib(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(contrib(file)).unwrap_or_else(|e| panic!("contrib/{file}: {e}"))
}

fn yaml(file: &str) -> serde_yaml::Value {
    serde_yaml::from_str(&read(file)).unwrap_or_else(|e| panic!("contrib/{file}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/couponsd.json"))
        .unwrap_or_else(|e| panic!("contrib/grafana/couponsd.json: {e}"))
}

/// Every `couponsd_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("couponsd_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // "couponsd_" alone is prose ("every couponsd_ metric"), not a name.
        if name.len() > "couponsd_".len() {
            names.insert(name);
        }
    }
    names
}

/// The names a query or a description may use for each family in an exposition: the
/// family's; a counter `x` is sampled as `x_total`, a histogram as `x_bucket`, `x_sum`
/// and `x_count`. A family with no labelled child yet is not in the exposition at all.
fn sample_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(family), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        names.insert(family.to_owned());
        names.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    names
}

/// Each alert of `contrib/prometheus/alerts.yml` with its expression.
fn alerts() -> Vec<(String, String)> {
    let rules = yaml("prometheus/alerts.yml");
    let groups = rules["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").iter())
        .map(|r| {
            let name = r["alert"].as_str().expect("an alert rule").to_owned();
            (name, r["expr"].as_str().expect("expr").to_owned())
        })
        .collect()
}

/// Every panel of the dashboard, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        all.push(p);
        all.extend(p["panels"].as_array().into_iter().flatten());
    }
    all
}

fn queries(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_contrib_files_name_is_served_by_a_real_daemon() {
    let db = fresh_db(Backend::Sqlite).await.unwrap();
    let receiver = Receiver::ok().await;
    let dir = TempDir::new("contrib");
    let channels = wallet_channel(&receiver.base_url());
    // A budget, so that the budget gauges have a child to show.
    let campaigns = standard_campaigns(5).replacen(
        "audience: first_time\n",
        "audience: first_time\n    budget: \"1000.00\"\n",
        1,
    );
    assert_ne!(campaigns, standard_campaigns(5));
    let path = write_config(&dir.0, &db.url, &channels, &campaigns, "");
    let ctx = migrated(&path).await;
    let daemon = Daemon::start(&path, &dir.0.join("d.log"));
    let address = daemon.http_address().await;
    burst(&ctx, "contrib", 8).await;
    wait_until_all_done(&ctx, 8, Duration::from_secs(15), &[&daemon]).await;
    let exposition = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let served = sample_names(&exposition);
    assert!(served.contains("couponsd_grants_total"), "{exposition}");

    for file in ["prometheus/alerts.yml", "grafana/couponsd.json"] {
        let used = metric_names(&read(file));
        assert!(used.len() >= 8, "contrib/{file} names only {used:?}");
        let unknown: Vec<&String> = used.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "contrib/{file} names metrics the daemon does not serve: {unknown:?}\nserved: {served:?}"
        );
    }
}

#[test]
fn every_alert_has_a_promtool_test_that_fires_it() {
    let tests = yaml("prometheus/alerts_test.yml");
    let mut fired = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let expected = case["exp_alerts"].as_sequence().map_or(0, Vec::len);
            if expected > 0 {
                fired.insert(case["alertname"].as_str().unwrap().to_owned());
            }
        }
    }
    let names: BTreeSet<String> = alerts().into_iter().map(|(name, _)| name).collect();
    assert!(names.len() >= 8, "{names:?}");
    let untested: Vec<&String> = names.difference(&fired).collect();
    assert!(untested.is_empty(), "no test fires {untested:?}");
}

#[test]
fn the_dashboard_is_a_grafana_model_over_a_prometheus_data_source_variable() {
    let d = dashboard();
    assert_eq!(d["uid"], "couponsd");
    assert!(d["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = d["templating"]["list"].as_array().expect("templating.list");
    let source = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a data source variable");
    assert_eq!(source["query"], "prometheus");
    let reference = format!("${{{}}}", source["name"].as_str().unwrap());
    let mut ids = BTreeSet::new();
    for panel in panels(&d) {
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} twice");
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].is_u64(), "panel {id}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["type"], "prometheus", "panel {id}");
        assert_eq!(panel["datasource"]["uid"], reference.as_str(), "panel {id}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {id} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], reference.as_str(), "panel {id}");
        }
    }
    assert!(queries(&d).len() >= 20);
}

/// The dashboard's queries with Grafana's variables replaced, as recording rules that
/// `promtool check rules` parses.
fn dashboard_queries_as_rules() -> String {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in queries(&dashboard()).iter().enumerate() {
        let query = query
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*")
            .replace("$campaign", ".*")
            .replace("$channel", ".*");
        assert!(!query.contains('$'), "an unknown variable in {query}");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        ));
    }
    rules
}

#[test]
fn the_dashboard_queries_and_the_alerts_parse_as_promql() {
    if Command::new("promtool").arg("--version").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "promtool is missing in CI (.ci/run installs Debian's prometheus)"
        );
        eprintln!("SKIPPED: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let dir = TempDir::new("promql");
    let rules = dir.0.join("dashboard.yml");
    std::fs::write(&rules, dashboard_queries_as_rules()).unwrap();
    for file in [rules, contrib("prometheus/alerts.yml")] {
        let out = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
