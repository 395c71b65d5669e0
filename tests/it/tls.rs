//! TLS to the database: a MariaDB of the test's own that requires secure transport and
//! shows a certificate from a CA the test made, reached through `database.url`'s
//! `ssl-mode` and `ssl-ca`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use couponsd::store::{connect, Access, Conn, Db, MysqlConn, Settings};
use diesel::sql_types::Text;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::support::TempDir;

/// A CA, written to `ca.pem`, and a server certificate it signed for `localhost` only
/// (`server.pem`, `server-key.pem`).
fn make_certificates(dir: &Path, ca_name: &str) -> PathBuf {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let key = KeyPair::generate().unwrap();
    let certificate = server.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), certificate.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

/// mariadbd with `require_secure_transport=ON` and the certificates of `certs`, on a
/// free loopback port; killed, with its folder removed, when dropped.
struct TlsServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl TlsServer {
    /// `None` (with the reason printed) when mariadbd is not installed, outside CI.
    fn install_and_start(certs: &Path) -> Option<TlsServer> {
        if !crate::operations::harness::mariadbd_installed() {
            return None;
        }
        let dir = TempDir::new("mariadbd-tls");
        let data = dir.0.join("data");
        let user = format!("--user={}", whoami());
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(&user)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.0.join("server.log")).unwrap();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", dir.0.join("sock").display()))
            .arg(format!("--pid-file={}", dir.0.join("pid").display()))
            .arg(&user)
            .arg(format!("--ssl-ca={}", certs.join("ca.pem").display()))
            .arg(format!("--ssl-cert={}", certs.join("server.pem").display()))
            .arg(format!(
                "--ssl-key={}",
                certs.join("server-key.pem").display()
            ))
            .args([
                "--require-secure-transport=ON",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Some(TlsServer { child, port, dir })
    }

    /// Waits until the server answers over TLS, at most 20 s.
    async fn wait_until_up(&self) {
        let url = self.url("127.0.0.1", "mysql", "ssl-mode=REQUIRED");
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = connect::establish(&url, &settings()).await {
            if Instant::now() > deadline {
                panic!(
                    "mariadbd did not answer over TLS within 20 s ({e}): {}",
                    std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, host: &str, database: &str, parameters: &str) -> String {
        format!("mysql://root@{host}:{}/{database}?{parameters}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn settings() -> Settings {
    Settings::new(2, Access::ReadWrite)
}

#[derive(diesel::QueryableByName)]
struct Status {
    #[diesel(sql_type = Text, column_name = Value)]
    value: String,
}

/// The cipher of `conn`'s session; empty when it is not encrypted.
async fn ssl_cipher(conn: &mut MysqlConn) -> String {
    let rows: Vec<Status> = diesel::sql_query("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .load(conn)
        .await
        .unwrap();
    rows.into_iter().map(|r| r.value).collect()
}

async fn refusal(url: &str) -> String {
    match connect::establish(url, &settings()).await {
        Ok(_) => panic!("connected without the TLS it should have refused"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_server_requiring_tls_is_reached_only_with_a_trusted_certificate_naming_it() {
    let certs = TempDir::new("tls-certs");
    let ca = make_certificates(&certs.0, "couponsd test CA");
    let Some(server) = TlsServer::install_and_start(&certs.0) else {
        return;
    };
    server.wait_until_up().await;
    let verified = |host: &str, database: &str| {
        let ca = ca.display();
        server.url(
            host,
            database,
            &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"),
        )
    };

    // The certificate names localhost, and chains to the CA given: encrypted.
    let mut conn = connect::establish(&verified("localhost", "mysql"), &settings())
        .await
        .unwrap();
    assert!(!ssl_cipher(&mut conn).await.is_empty());
    conn.batch_execute("CREATE DATABASE couponsd_tls")
        .await
        .unwrap();

    // The daemon's own pool: migrate, ping, and every pooled session encrypted.
    let db = Db::open(&verified("localhost", "couponsd_tls"), settings()).unwrap();
    assert!(!db.migrate().await.unwrap().is_empty());
    db.ping().await.unwrap();
    match db.get().await.unwrap() {
        Conn::Mysql(mut pooled) => assert!(!ssl_cipher(&mut pooled).await.is_empty()),
        Conn::Sqlite(_) => unreachable!("a mysql:// URL"),
    }

    // REQUIRED encrypts without looking at the certificate, as the mysql client does.
    let url = server.url("127.0.0.1", "mysql", "ssl-mode=REQUIRED");
    let mut conn = connect::establish(&url, &settings()).await.unwrap();
    assert!(!ssl_cipher(&mut conn).await.is_empty());

    // Without TLS the server refuses the same account that just logged in over TLS.
    // MariaDB 10.11 says so as access denied (1045), later versions name the
    // transport.
    let e = refusal(&server.url("127.0.0.1", "mysql", "ssl-mode=DISABLED")).await;
    assert!(
        e.contains("insecure transport") || e.contains("(1045): Access denied"),
        "{e}"
    );

    // A CA that did not sign the server's certificate: not trusted.
    let other = TempDir::new("tls-other-ca");
    let other_ca = make_certificates(&other.0, "some other CA");
    let url = server.url(
        "localhost",
        "mysql",
        &format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", other_ca.display()),
    );
    let e = refusal(&url).await;
    assert!(e.contains("the server's certificate is not trusted"), "{e}");

    // The right CA, but a host the certificate does not name.
    let e = refusal(&verified("127.0.0.1", "mysql")).await;
    assert!(
        e.contains("the server's certificate does not name the host"),
        "{e}"
    );
}
