use super::*;
use crate::store::Access;
use std::time::Duration;

fn settings() -> Settings {
    Settings::new(1, Access::ReadWrite)
}

fn refusal(url: &str) -> String {
    match options(url, &settings()) {
        Ok(_) => panic!("accepted {url}"),
        Err(e) => e.to_string(),
    }
}

fn tls_of(url: &str) -> Tls {
    split_parameters(&reqwest::Url::parse(url).unwrap())
        .unwrap()
        .0
}

/// A CA file made for the test, removed when dropped.
struct CaFile(PathBuf);

impl CaFile {
    fn new(tag: &str, contents: &str) -> CaFile {
        let path =
            std::env::temp_dir().join(format!("couponsd-connect-{tag}-{}.pem", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        CaFile(path)
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n";

#[test]
fn a_url_without_parameters_is_plain_and_keeps_its_address() {
    let opts = Opts::from(options("mysql://u:pw@db.example:3307/shop", &settings()).unwrap());
    assert!(opts.ssl_opts().is_none());
    assert_eq!(opts.ip_or_hostname(), "db.example");
    assert_eq!(opts.tcp_port(), 3307);
    assert_eq!(opts.user(), Some("u"));
    assert_eq!(opts.pass(), Some("pw"));
    assert_eq!(opts.db_name(), Some("shop"));
    assert_eq!(opts.stmt_cache_size(), 0);
    assert!(opts.client_found_rows());
}

#[test]
fn tcp_keepalive_comes_from_the_settings() {
    let mut s = settings();
    s.tcp_keepalive = Duration::from_secs(7);
    let opts = Opts::from(options("mysql://db/shop", &s).unwrap());
    assert_eq!(opts.tcp_keepalive(), Some(7_000));
}

#[test]
fn ssl_mode_names_the_three_modes_in_any_case() {
    assert_eq!(tls_of("mysql://db/x").mode, SslMode::Disabled);
    assert_eq!(
        tls_of("mysql://db/x?ssl-mode=disabled").mode,
        SslMode::Disabled
    );
    assert_eq!(
        tls_of("mysql://db/x?ssl-mode=REQUIRED").mode,
        SslMode::Required
    );
    assert_eq!(
        tls_of("mysql://db/x?ssl-mode=Verify_Identity").mode,
        SslMode::VerifyIdentity
    );
}

#[test]
fn required_encrypts_without_checking_the_certificate() {
    let opts = Opts::from(options("mysql://127.0.0.1/x?ssl-mode=REQUIRED", &settings()).unwrap());
    let ssl = opts.ssl_opts().expect("TLS is on");
    assert!(ssl.accept_invalid_certs());
    assert!(
        !opts.prefer_socket(),
        "a loopback URL must not move to the socket"
    );
}

#[test]
fn verify_identity_checks_chain_and_name_against_the_ca_file_only() {
    let ca = CaFile::new("good", CERTIFICATE);
    let url = format!(
        "mysql://db/x?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        ca.0.display()
    );
    let opts = Opts::from(options(&url, &settings()).unwrap());
    let ssl = opts.ssl_opts().expect("TLS is on");
    assert!(!ssl.accept_invalid_certs());
    assert!(!ssl.skip_domain_validation());
    assert!(ssl.disable_built_in_roots());
    assert_eq!(ssl.root_certs().len(), 1);
}

#[test]
fn verify_identity_without_a_ca_file_trusts_the_public_roots() {
    let opts = Opts::from(options("mysql://db/x?ssl-mode=VERIFY_IDENTITY", &settings()).unwrap());
    let ssl = opts.ssl_opts().expect("TLS is on");
    assert!(!ssl.disable_built_in_roots());
    assert!(ssl.root_certs().is_empty());
}

#[test]
fn other_parameters_reach_the_client() {
    let opts = Opts::from(
        options(
            "mysql://db/x?ssl-mode=REQUIRED&compression=fast&tcp_nodelay=false",
            &settings(),
        )
        .unwrap(),
    );
    assert!(opts.compression().is_some());
    assert!(!opts.tcp_nodelay());
}

#[test]
fn unknown_and_replaced_parameters_are_refused_by_name_never_showing_the_password() {
    for (url, expected) in [
        (
            "mysql://u:hunter2@db/x?sslmode=REQUIRED",
            "unknown parameter `sslmode`",
        ),
        (
            "mysql://u:hunter2@db/x?require_ssl=true",
            "`require_ssl` is not accepted: use ssl-mode",
        ),
        (
            "mysql://u:hunter2@db/x?tcp_keepalive=1",
            "set database.tcp_keepalive",
        ),
        (
            "mysql://u:hunter2@db/x?ssl-mode=SOMETIMES",
            "got `SOMETIMES`",
        ),
        (
            "mysql://u:hunter2@db/x?ssl-mode=PREFERRED",
            "PREFERRED is not accepted",
        ),
        (
            "mysql://u:hunter2@db/x?ssl-mode=VERIFY_CA",
            "VERIFY_CA is not supported",
        ),
        (
            "mysql://u:hunter2@db/x?ssl-mode=REQUIRED&ssl-mode=DISABLED",
            "`ssl-mode` is given twice",
        ),
        (
            "mysql://u:hunter2@db/x?ssl-ca=/tmp/ca.pem",
            "only read with ssl-mode=VERIFY_IDENTITY",
        ),
        (
            "mysql://u:hunter2@db/x?ssl-mode=VERIFY_IDENTITY&ssl-ca=",
            "ssl-ca needs the path",
        ),
    ] {
        let message = refusal(url);
        assert!(message.contains(expected), "{url}: {message}");
        assert!(!message.contains("hunter2"), "{url}: {message}");
    }
}

#[test]
fn a_missing_or_empty_ca_file_is_refused_naming_ssl_ca() {
    let missing = "/nonexistent/couponsd/ca.pem";
    let message = refusal(&format!(
        "mysql://db/x?ssl-mode=VERIFY_IDENTITY&ssl-ca={missing}"
    ));
    assert!(
        message.starts_with(&format!("ssl-ca: {missing}: ")),
        "{message}"
    );

    let empty = CaFile::new("empty", "not a certificate\n");
    let url = format!(
        "mysql://db/x?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
        empty.0.display()
    );
    let message = refusal(&url);
    assert!(message.contains("holds no PEM certificate"), "{message}");
}
