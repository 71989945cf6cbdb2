//! The front door's settings: `http.tls` (TLS to clients) and `auth` (client authentication),
//! in the reference registry's shape. Only read and checked here (names, values, which
//! combinations); the files they name are loaded by [`crate::tls`] and [`crate::auth`] at start
//! and on SIGHUP, so `check-config` and `serve` report a missing or bad file the same way.

use std::path::PathBuf;

use serde_json::{Map, Value};

use super::yaml::{get, string};
use super::{err, ConfigError};

/// `http.tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM: the server certificate, then its chain.
    pub certificate: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC; RSA, ECDSA or Ed25519).
    pub key: PathBuf,
    /// PEM bundles of CAs: when any, a client must present a certificate issued by one of
    /// them (mutual TLS), checked during the handshake.
    pub client_cas: Vec<PathBuf>,
    pub minimum: TlsVersion,
    /// `http.tls.ciphersuites`, as IANA codes (empty: rustls's defaults). Each named one was
    /// checked against [`CIPHER_SUITES`].
    pub cipher_suites: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "tls1.2",
            TlsVersion::Tls13 => "tls1.3",
        }
    }
}

/// The cipher suites rustls (ring provider) offers, by the names the reference registry's
/// config takes (Go's `crypto/tls` names, which are IANA's), with their IANA codes. Go's
/// legacy short names for the ChaCha20 suites are accepted too. Anything else (CBC, RSA key
/// exchange, 3DES, RC4) rustls does not implement: refused by name.
pub const CIPHER_SUITES: &[(&str, u16)] = &[
    ("TLS_AES_128_GCM_SHA256", 0x1301),
    ("TLS_AES_256_GCM_SHA384", 0x1302),
    ("TLS_CHACHA20_POLY1305_SHA256", 0x1303),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", 0xc02b),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", 0xc02c),
    ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", 0xc02f),
    ("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", 0xc030),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", 0xcca8),
    ("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305", 0xcca8),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", 0xcca9),
    ("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305", 0xcca9),
];

/// `auth`: one scheme, as in the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `auth.htpasswd`: Basic credentials checked against bcrypt entries of a file.
    Htpasswd { realm: String, path: PathBuf },
    /// `auth.token`: Bearer JWTs issued by a token server, verified with the public keys of
    /// the certificates in `root_cert_bundle`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert_bundle: PathBuf,
    },
}

impl AuthConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            AuthConfig::Htpasswd { .. } => "htpasswd",
            AuthConfig::Token { .. } => "token",
        }
    }
}

fn path(root: &Map<String, Value>, key: &str) -> Result<PathBuf, ConfigError> {
    match get(root, key) {
        Some(v) => {
            let s = string(key, v)?;
            if s.is_empty() {
                return Err(err(key, "must not be empty"));
            }
            Ok(PathBuf::from(s))
        }
        None => Err(err(key, "required")),
    }
}

fn text(root: &Map<String, Value>, key: &str) -> Result<String, ConfigError> {
    match get(root, key) {
        Some(v) if !string(key, v)?.is_empty() => Ok(string(key, v)?.to_string()),
        _ => Err(err(key, "required")),
    }
}

/// A list of strings (a single string is a list of one, as an environment variable sets it).
fn strings(root: &Map<String, Value>, key: &str) -> Result<Vec<String>, ConfigError> {
    match get(root, key) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()),
        Some(Value::Array(a)) => a.iter().map(|v| string(key, v).map(String::from)).collect(),
        Some(_) => Err(err(key, "must be a list of strings")),
    }
}

/// `http.tls`, when it configures anything (the key walk already refused unknown keys and
/// `letsencrypt`).
pub(super) fn tls(root: &Map<String, Value>) -> Result<Option<TlsConfig>, ConfigError> {
    match get(root, "http.tls") {
        None => return Ok(None),
        Some(Value::Object(m)) if m.is_empty() => return Ok(None),
        Some(Value::Object(_)) => {}
        Some(_) => return Err(err("http.tls", "must be a mapping")),
    }
    let minimum = match get(root, "http.tls.minimumtls") {
        None => TlsVersion::Tls12,
        Some(v) => match string("http.tls.minimumtls", v)? {
            "tls1.2" => TlsVersion::Tls12,
            "tls1.3" => TlsVersion::Tls13,
            "tls1.0" | "tls1.1" => {
                return Err(err(
                    "http.tls.minimumtls",
                    "TLS below 1.2 is not offered (rustls speaks tls1.2 and tls1.3)",
                ))
            }
            other => {
                return Err(err(
                    "http.tls.minimumtls",
                    format!("{other:?} is not tls1.2 or tls1.3"),
                ))
            }
        },
    };
    // The reference spells it `ciphersuites`; `cipherSuites` is taken as the same key.
    let mut names = strings(root, "http.tls.ciphersuites")?;
    names.extend(strings(root, "http.tls.cipherSuites")?);
    let mut cipher_suites = Vec::new();
    for name in &names {
        let Some((_, code)) = CIPHER_SUITES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            return Err(err(
                "http.tls.ciphersuites",
                format!(
                    "{name:?} is not offered by rustls (only AEAD suites with forward secrecy are); choose from: {}",
                    CIPHER_SUITES.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if !cipher_suites.contains(code) {
            cipher_suites.push(*code);
        }
    }
    if minimum == TlsVersion::Tls13
        && !cipher_suites.is_empty()
        && cipher_suites.iter().all(|c| *c >> 8 != 0x13)
    {
        return Err(err(
            "http.tls.ciphersuites",
            "lists only TLS 1.2 suites while minimumtls is tls1.3: no suite would be left",
        ));
    }
    let client_cas = strings(root, "http.tls.clientcas")?
        .into_iter()
        .map(PathBuf::from)
        .collect();
    Ok(Some(TlsConfig {
        certificate: path(root, "http.tls.certificate")?,
        key: path(root, "http.tls.key")?,
        client_cas,
        minimum,
        cipher_suites,
    }))
}

/// `auth`, when it configures anything: exactly one of `htpasswd` and `token` (the key walk
/// already refused `silly` and unknown schemes).
pub(super) fn auth(root: &Map<String, Value>) -> Result<Option<AuthConfig>, ConfigError> {
    let Some(Value::Object(m)) = get(root, "auth") else {
        return Ok(None);
    };
    let set: Vec<&String> = m
        .iter()
        .filter(|(_, v)| !super::schema::is_empty(v))
        .map(|(k, _)| k)
        .collect();
    match set.as_slice() {
        [] => Ok(None),
        [k] if k.as_str() == "htpasswd" => Ok(Some(AuthConfig::Htpasswd {
            realm: text(root, "auth.htpasswd.realm")?,
            path: path(root, "auth.htpasswd.path")?,
        })),
        [k] if k.as_str() == "token" => Ok(Some(AuthConfig::Token {
            realm: text(root, "auth.token.realm")?,
            service: text(root, "auth.token.service")?,
            issuer: text(root, "auth.token.issuer")?,
            root_cert_bundle: path(root, "auth.token.rootcertbundle")?,
        })),
        [k] => Err(err(&format!("auth.{k}"), "unknown auth type")),
        _ => Err(err(
            "auth",
            "configure one scheme only (htpasswd or token), as the reference registry does",
        )),
    }
}

/// `http.tls` for `check-config` (paths only; nothing secret is in the config itself).
pub(super) fn effective_tls(tls: Option<&TlsConfig>) -> Value {
    let Some(t) = tls else {
        return Value::Null;
    };
    serde_json::json!({
        "certificate": t.certificate.display().to_string(),
        "key": t.key.display().to_string(),
        "clientcas": t.client_cas.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "minimumtls": t.minimum.name(),
        "ciphersuites": t.cipher_suites.iter()
            .filter_map(|c| CIPHER_SUITES.iter().find(|(_, k)| k == c).map(|(n, _)| *n))
            .collect::<Vec<_>>(),
    })
}

/// `auth` for `check-config`.
pub(super) fn effective_auth(auth: Option<&AuthConfig>) -> Value {
    match auth {
        None => Value::Null,
        Some(AuthConfig::Htpasswd { realm, path }) => serde_json::json!({
            "htpasswd": {"realm": realm, "path": path.display().to_string()}
        }),
        Some(AuthConfig::Token {
            realm,
            service,
            issuer,
            root_cert_bundle,
        }) => serde_json::json!({
            "token": {"realm": realm, "service": service, "issuer": issuer,
                      "rootcertbundle": root_cert_bundle.display().to_string()}
        }),
    }
}
