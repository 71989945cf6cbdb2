//! TLS to clients (`http.tls`, the front door before data path step 2): the certificate and key,
//! the client CAs (mutual TLS), the minimum version and cipher suites, made into one rustls
//! [`ServerConfig`] ([`Tls`]) that new connections take; SIGHUP loads the files again
//! ([`Tls::reload`]: a pair that fails to load keeps the running one). [`stream`]: one
//! connection, its handshake within the head deadline, and its reads and writes.
//!
//! Session resumption: stateless tickets (TLS 1.2 and 1.3) from one ticketer, and a bounded
//! session cache for TLS 1.2 clients without tickets; both outlive a reload that keeps the
//! client CAs, so a client resumes across a certificate rotation. A reload that changes the
//! client CAs (`clientcas` added, removed or rotated) starts a new ticketer and cache: a
//! resumed session carries the client certificate (or its absence) it was first verified
//! with, and rustls does not verify it again, so an old ticket would walk past the new CAs.
//! ALPN: `http/1.1` only (ringcache speaks nothing else).

pub mod stream;

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsConfig, TlsVersion};
use crate::limits::{PEM_BYTES_MAX, TLS_SESSIONS_MAX};

pub use stream::TlsStream;

/// The running TLS settings: what a new connection's handshake uses.
pub struct Tls {
    current: RwLock<Arc<ServerConfig>>,
    /// Kept across reloads that keep the client CAs (see the module docs).
    resumption: RwLock<Resumption>,
}

/// Session tickets and cache, and the client CAs the sessions they resume were verified under.
struct Resumption {
    tickets: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
    /// sha256 over the client CA certificates (empty: no client authentication).
    client_cas: Vec<u8>,
}

impl Resumption {
    fn new(client_cas: Vec<u8>) -> Result<Resumption, String> {
        Ok(Resumption {
            tickets: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("http.tls: session tickets: {e}"))?,
            sessions: ServerSessionMemoryCache::new(TLS_SESSIONS_MAX),
            client_cas,
        })
    }
}

/// What the client CAs of `config` are, as one digest (empty when there are none).
fn client_cas_digest(config: &TlsConfig) -> Result<Vec<u8>, String> {
    if config.client_cas.is_empty() {
        return Ok(Vec::new());
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for path in &config.client_cas {
        for cert in certificates("http.tls.clientcas", path)? {
            ctx.update(&(cert.len() as u64).to_le_bytes());
            ctx.update(&cert);
        }
    }
    Ok(ctx.finish().as_ref().to_vec())
}

impl Tls {
    /// Load the files `config` names; every error names the key and the file.
    pub fn load(config: &TlsConfig) -> Result<Tls, String> {
        let resumption = Resumption::new(client_cas_digest(config)?)?;
        let server = server_config(config, &resumption.tickets, &resumption.sessions)?;
        Ok(Tls {
            current: RwLock::new(server),
            resumption: RwLock::new(resumption),
        })
    }

    /// The settings for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap().clone()
    }

    /// Load `config`'s files again (SIGHUP). On error the running settings stay. New client
    /// CAs end every session issued under the old ones.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        let cas = client_cas_digest(config)?;
        let mut resumption = self.resumption.write().unwrap();
        if resumption.client_cas == cas {
            let server = server_config(config, &resumption.tickets, &resumption.sessions)?;
            *self.current.write().unwrap() = server;
            return Ok(());
        }
        let fresh = Resumption::new(cas)?;
        let server = server_config(config, &fresh.tickets, &fresh.sessions)?;
        tracing::info!("http.tls.clientcas changed: sessions issued before are not resumed");
        *resumption = fresh;
        *self.current.write().unwrap() = server;
        Ok(())
    }
}

/// Read a PEM file whole, within [`PEM_BYTES_MAX`].
fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    let mut out = Vec::new();
    f.take(PEM_BYTES_MAX + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if out.len() as u64 > PEM_BYTES_MAX {
        return Err(format!(
            "{key}: {}: larger than {PEM_BYTES_MAX} bytes; not a PEM file",
            path.display()
        ));
    }
    Ok(out)
}

/// Every certificate of a PEM file (at least one).
pub fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {}: no CERTIFICATE in the file",
            path.display()
        ));
    }
    Ok(certs)
}

fn server_config(
    config: &TlsConfig,
    tickets: &Arc<dyn ProducesTickets>,
    sessions: &Arc<dyn StoresServerSessions + Send + Sync>,
) -> Result<Arc<ServerConfig>, String> {
    let chain = certificates("http.tls.certificate", &config.certificate)?;
    let pem = read_pem("http.tls.key", &config.key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "http.tls.key: {}: no usable private key ({e})",
            config.key.display()
        )
    })?;
    let mut provider = rustls::crypto::ring::default_provider();
    if !config.cipher_suites.is_empty() {
        let listed =
            |s: &rustls::SupportedCipherSuite| config.cipher_suites.contains(&u16::from(s.suite()));
        // As the reference (Go) does: the list restricts TLS 1.2 suites; TLS 1.3's are all
        // kept unless the list names some of them.
        let names_tls13 = provider
            .cipher_suites
            .iter()
            .any(|s| s.tls13().is_some() && listed(s));
        provider
            .cipher_suites
            .retain(|s| listed(s) || (s.tls13().is_some() && !names_tls13));
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match config.minimum {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(provider);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| format!("http.tls.ciphersuites: {e}"))?;
    let builder = if config.client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for path in &config.client_cas {
            for cert in certificates("http.tls.clientcas", path)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("http.tls.clientcas: {}: {e}", path.display()))?;
            }
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("http.tls.clientcas: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut server = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "http.tls: the key in {} does not go with the certificate in {}: {e}",
            config.key.display(),
            config.certificate.display()
        )
    })?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server.ticketer = tickets.clone();
    server.session_storage = sessions.clone();
    Ok(Arc::new(server))
}
