//! TLS to clients (`http.tls`, the front door before data path step 2): the certificate and key,
//! the client CAs (mutual TLS), the minimum version and cipher suites, made into one rustls
//! [`ServerConfig`] ([`Tls`]) that new connections take; SIGHUP loads the files again
//! ([`Tls::reload`]: a pair that fails to load keeps the running one). [`stream`]: one
//! connection, its handshake within the head deadline, and its reads and writes.
//!
//! Session resumption: stateless tickets (TLS 1.2 and 1.3) from one ticketer, and a bounded
//! session cache for TLS 1.2 clients without tickets; both outlive reloads, so a client
//! resumes across a certificate rotation. ALPN: `http/1.1` only (ringcache speaks nothing else).

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
    /// Kept across reloads (see the module docs).
    tickets: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
}

impl Tls {
    /// Load the files `config` names; every error names the key and the file.
    pub fn load(config: &TlsConfig) -> Result<Tls, String> {
        let tickets = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| format!("http.tls: session tickets: {e}"))?;
        let sessions: Arc<dyn StoresServerSessions + Send + Sync> =
            ServerSessionMemoryCache::new(TLS_SESSIONS_MAX);
        let server = server_config(config, &tickets, &sessions)?;
        Ok(Tls {
            current: RwLock::new(server),
            tickets,
            sessions,
        })
    }

    /// The settings for a connection accepted now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap().clone()
    }

    /// Load `config`'s files again (SIGHUP). On error the running settings stay.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), String> {
        let server = server_config(config, &self.tickets, &self.sessions)?;
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
