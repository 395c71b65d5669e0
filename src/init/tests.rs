use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;
use crate::config::Config;

/// Every file under `dir`, by its path relative to `root`.
fn files_under(root: &Path, dir: &Path, found: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(root, &path, found);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            found.insert(name, path);
        }
    }
}

#[test]
fn every_file_in_the_rules_folder_is_shipped_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut on_disk = BTreeMap::new();
    files_under(root, &root.join("rules"), &mut on_disk);
    let embedded: BTreeMap<&str, &str> = shipped::FILES.iter().copied().collect();
    let names: Vec<&str> = on_disk.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        embedded.keys().copied().collect::<Vec<_>>(),
        "rules/ and init::shipped::FILES name different files"
    );
    for (name, path) in &on_disk {
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            embedded[name.as_str()],
            "{name}"
        );
    }
}

#[test]
fn the_starter_config_loads_and_signs_with_a_key_of_its_own() {
    let first = starter_config();
    let config = Config::from_yaml_with_env(&first, Path::new("couponsd.yaml"), &|_| None)
        .unwrap_or_else(|e| panic!("{e}"));
    let campaigns: Vec<&str> = config.campaigns.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(campaigns, ["newcomer", "loyalty"]);
    assert!(!first.contains("@SECRET@"));
    assert_ne!(first, starter_config(), "each init makes its own key");
}

#[test]
fn a_refusal_names_every_file_that_exists() {
    let error = InitError::Exists(vec![
        "d/couponsd.yaml".into(),
        "d/rules/user_type.rhai".into(),
    ]);
    assert_eq!(
        error.to_string(),
        "init: refusing to overwrite d/couponsd.yaml, d/rules/user_type.rhai \
         (nothing was written; --force overwrites them)"
    );
}
