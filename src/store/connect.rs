//! How a `mysql://` URL becomes a MySQL connection: TLS as the `mysql` command-line
//! client spells it (`ssl-mode`, `ssl-ca`), TCP keepalive from `database.tcp_keepalive`,
//! and the options diesel-async's own `establish` sets.
//!
//! The client library (mysql_async) has TLS switches but no URL parameter for a CA
//! file, and names them differently from every MySQL tool, so couponsd reads the TLS
//! parameters itself and passes the others on. The same parsing runs when the config
//! is checked and for every new connection, so a bad parameter stops the start, and a
//! replaced CA file is read by the next connection without a restart.

use std::path::{Path, PathBuf};

use diesel::result::{ConnectionError, ConnectionResult};
use mysql_async::{Opts, OptsBuilder, SslOpts};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::{MysqlConn, Settings};

/// Why `database.url`'s parameters were refused. The message never holds the URL,
/// which may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

impl UrlError {
    pub(super) fn new(message: String) -> Self {
        UrlError(message)
    }
}

/// `ssl-mode`: what a connection asks of TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    /// No TLS (the default when `ssl-mode` is absent).
    Disabled,
    /// TLS, but the server's certificate is not checked, as the `mysql` client does:
    /// protects against listening, not against a server that pretends.
    Required,
    /// TLS, the certificate must chain to a trusted CA (`ssl-ca`, or the built-in
    /// public roots without it) and name the host of the URL.
    VerifyIdentity,
}

/// What the URL says about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tls {
    /// `ssl-mode`.
    mode: SslMode,
    /// `ssl-ca`: the PEM file of the CAs to trust instead of the built-in roots.
    ca: Option<PathBuf>,
}

/// The client's own parameters that couponsd sets from elsewhere, with where.
const REPLACED: &[(&str, &str)] = &[
    ("require_ssl", "use ssl-mode"),
    ("verify_ca", "use ssl-mode"),
    ("verify_identity", "use ssl-mode"),
    ("built_in_roots", "use ssl-mode and ssl-ca"),
    ("tcp_keepalive", "set database.tcp_keepalive"),
    ("stmt_cache_size", "couponsd sets it"),
    ("client_found_rows", "couponsd sets it"),
];

/// Reads the TLS parameters of `url` and passes the rest to the client: the options
/// of one new connection.
pub fn options(url: &str, settings: &Settings) -> Result<OptsBuilder, UrlError> {
    let mut parsed = reqwest::Url::parse(url)
        .map_err(|e| UrlError(format!("is not a valid mysql:// URL: {e}")))?;
    let (tls, rest) = split_parameters(&parsed)?;
    if rest.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(&rest);
    }
    let opts = Opts::from_url(parsed.as_str()).map_err(|e| match e {
        mysql_async::UrlError::UnknownParameter { param } => UrlError(format!(
            "unknown parameter `{param}` (couponsd knows ssl-mode, ssl-ca and the \
             mysql_async client's own)"
        )),
        other => UrlError(other.to_string()),
    })?;
    let keepalive = u32::try_from(settings.tcp_keepalive.as_millis()).unwrap_or(u32::MAX);
    let builder = OptsBuilder::from_opts(opts)
        .tcp_keepalive(Some(keepalive))
        // What diesel-async's `establish` sets: it keeps its own statement cache, and
        // UPDATE counts the rows matched, as on the other backends.
        .stmt_cache_size(0)
        .client_found_rows(true);
    Ok(match tls.mode {
        SslMode::Disabled => builder,
        // TLS asked for is TLS had: on a loopback address the client would otherwise
        // move to the server's Unix socket, where it does not encrypt.
        _ => builder.prefer_socket(false).ssl_opts(ssl_opts(&tls)?),
    })
}

/// Checks the parameters of a one-host `url` (and reads `ssl-ca`) as a connection
/// would, without connecting: for the config's validation, which checks each host of
/// a list ([`super::cluster::split_hosts`]) so that a bad one stops the start.
pub fn check(url: &str) -> Result<(), UrlError> {
    options(url, &Settings::new(1, super::Access::ReadOnly)).map(drop)
}

/// Establishes one connection for `url`, then runs diesel-async's session set-up.
pub async fn establish(url: &str, settings: &Settings) -> ConnectionResult<MysqlConn> {
    let builder = options(url, settings)
        .map_err(|e| ConnectionError::InvalidConnectionUrl(format!("database.url: {e}")))?;
    let conn = mysql_async::Conn::new(builder)
        .await
        .map_err(|e| ConnectionError::BadConnection(describe(&e)))?;
    MysqlConn::try_from(conn).await
}

/// Separates `ssl-mode` and `ssl-ca` from the parameters the client reads itself.
fn split_parameters(url: &reqwest::Url) -> Result<(Tls, Vec<(String, String)>), UrlError> {
    let (mut mode, mut ca) = (None, None);
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        let once = |seen: bool| match seen {
            true => Err(UrlError(format!("parameter `{key}` is given twice"))),
            false => Ok(()),
        };
        match &*key {
            "ssl-mode" => {
                once(mode.is_some())?;
                mode = Some(ssl_mode(&value)?);
            }
            "ssl-ca" => {
                once(ca.is_some())?;
                if value.is_empty() {
                    return Err(UrlError("ssl-ca needs the path of a PEM file".to_owned()));
                }
                ca = Some(PathBuf::from(&*value));
            }
            _ => match REPLACED.iter().find(|(name, _)| *name == key) {
                Some((name, instead)) => {
                    return Err(UrlError(format!(
                        "parameter `{name}` is not accepted: {instead}"
                    )))
                }
                None => rest.push((key.into_owned(), value.into_owned())),
            },
        }
    }
    let mode = mode.unwrap_or(SslMode::Disabled);
    if ca.is_some() && mode != SslMode::VerifyIdentity {
        return Err(UrlError(
            "ssl-ca is only read with ssl-mode=VERIFY_IDENTITY (REQUIRED checks no \
             certificate)"
                .to_owned(),
        ));
    }
    Ok((Tls { mode, ca }, rest))
}

/// Parses `ssl-mode`, in any case as the `mysql` client does.
fn ssl_mode(value: &str) -> Result<SslMode, UrlError> {
    match value.to_ascii_uppercase().as_str() {
        "DISABLED" => Ok(SslMode::Disabled),
        "REQUIRED" => Ok(SslMode::Required),
        "VERIFY_IDENTITY" => Ok(SslMode::VerifyIdentity),
        // A downgrade to plain text that anyone on the path can force protects
        // against nothing; say which one is meant.
        "PREFERRED" => Err(UrlError(
            "ssl-mode=PREFERRED is not accepted: choose REQUIRED or VERIFY_IDENTITY, \
             or DISABLED"
                .to_owned(),
        )),
        // mysql_async 0.36 (the version diesel-async uses) cannot check the chain
        // without the name: its switch for skipping the name check does not
        // recognise rustls's name-mismatch error (blackbeam/mysql_async#404).
        "VERIFY_CA" => Err(UrlError(
            "ssl-mode=VERIFY_CA is not supported by this build's MySQL client, which \
             cannot skip the host-name check: use VERIFY_IDENTITY with a host the \
             certificate names"
                .to_owned(),
        )),
        _ => Err(UrlError(format!(
            "ssl-mode must be DISABLED, REQUIRED or VERIFY_IDENTITY, got `{value}`"
        ))),
    }
}

/// The client's TLS options for a mode other than `Disabled`.
fn ssl_opts(tls: &Tls) -> Result<SslOpts, UrlError> {
    let opts = SslOpts::default();
    Ok(match (&tls.mode, &tls.ca) {
        (SslMode::VerifyIdentity, Some(ca)) => opts
            .with_root_certs(vec![read_ca(ca)?.into()])
            .with_disable_built_in_roots(true),
        (SslMode::VerifyIdentity, None) => opts,
        // The client builds its verifier before it is told to accept anything, and
        // refuses to build one with no roots: keep the built-in ones, never consulted.
        _ => opts.with_danger_accept_invalid_certs(true),
    })
}

/// The contents of the `ssl-ca` file, once it is known to hold a PEM certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, UrlError> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| UrlError(format!("ssl-ca: {shown}: {e}")))?;
    let mut certificates = CertificateDer::pem_slice_iter(&pem);
    match certificates.next() {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Err(UrlError(format!("ssl-ca: {shown}: {e}"))),
        None => {
            return Err(UrlError(format!(
                "ssl-ca: {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
            )))
        }
    }
    if let Some(Err(e)) = certificates.find(Result::is_err) {
        return Err(UrlError(format!("ssl-ca: {shown}: {e}")));
    }
    Ok(pem)
}

/// The client's error, with a certificate the server showed and couponsd refused
/// said in words (rustls's own names, such as `UnknownIssuer`, mean little to an
/// operator).
fn describe(error: &mysql_async::Error) -> String {
    use rustls::CertificateError as Cert;
    let Some(refused) = certificate_error(error) else {
        return error.to_string();
    };
    let why = match refused {
        Cert::UnknownIssuer | Cert::BadSignature => {
            "the server's certificate is not trusted: it is not signed by a CA in \
             ssl-ca (or, without ssl-ca, by a public root)"
        }
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
            "the server's certificate does not name the host of database.url"
        }
        Cert::Expired | Cert::ExpiredContext { .. } => "the server's certificate has expired",
        _ => "the server's certificate was refused",
    };
    format!("TLS: {why} ({refused})")
}

/// The certificate error inside a client error, wherever TLS put it (tokio-rustls
/// wraps it in an `io::Error`, whose `source` skips it).
fn certificate_error(error: &mysql_async::Error) -> Option<&rustls::CertificateError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let tls = e.downcast_ref::<rustls::Error>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(refused)) = tls {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests;
