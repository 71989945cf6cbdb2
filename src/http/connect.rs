//! Reaching upstream (step 6): names resolved off the event loop, the TLS configuration for
//! upstream connections, and the check that keeps the client from dialling ringcache's own
//! listeners (a request loop).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::error::{Kind, OrErr, Result, Side};

/// Whether a connection to `addr` would reach one of `listeners`: the same socket address, or
/// a listener on an unspecified IP (`0.0.0.0`, `::`) on that port and `addr` a local address.
pub fn is_listener(addr: SocketAddr, listeners: &[SocketAddr]) -> bool {
    let ip = addr.ip().to_canonical();
    listeners.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip().to_canonical() == ip || (l.ip().is_unspecified() && is_local(ip)))
    })
}

/// Whether `ip` is an address of this host: loopback or unspecified, or one a socket can be
/// bound to (asked only when a listener on an unspecified IP shares the port).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Where the resolver thread leaves its answer.
type ResolveSlot = Mutex<Option<std::io::Result<Vec<SocketAddr>>>>;

/// Run getaddrinfo on a short-lived thread and wait for it without blocking the worker.
pub(super) async fn resolve_off_loop(host: String, port: u16) -> Result<Vec<SocketAddr>> {
    let slot: Arc<(ResolveSlot, event_listener::Event)> =
        Arc::new((Mutex::new(None), event_listener::Event::new()));
    let theirs = slot.clone();
    std::thread::Builder::new()
        .name("ringcache-dns".into())
        .spawn(move || {
            use std::net::ToSocketAddrs;
            let r = (host.as_str(), port).to_socket_addrs().map(|a| a.collect());
            *theirs.0.lock().unwrap() = Some(r);
            theirs.1.notify(usize::MAX);
        })
        .or_err(Kind::Internal, Side::Internal, "spawn resolver thread")?;
    loop {
        let listener = slot.1.listen();
        if let Some(r) = slot.0.lock().unwrap().take() {
            return r.or_err(
                Kind::Unavailable,
                Side::Upstream,
                "upstream name did not resolve",
            );
        }
        listener.await;
    }
}

/// The TLS configuration for upstream connections: the system's roots (rustls-native-certs)
/// plus an optional PEM CA file.
pub fn tls_config(
    ca_file: Option<&std::path::Path>,
) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_include_unspecified_binds() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let listeners = [a("127.0.0.1:5000"), a("0.0.0.0:6000"), a("[::]:7000")];
        let cases: &[(&str, bool)] = &[
            ("127.0.0.1:5000", true),
            ("127.0.0.2:5000", false),
            ("127.0.0.1:5001", false),
            ("127.0.0.1:6000", true),
            ("127.0.0.9:6000", true),
            ("0.0.0.0:6000", true),
            ("[::1]:7000", true),
            ("[::ffff:127.0.0.1]:5000", true),
            ("127.0.0.1:7000", true),
            ("192.0.2.1:6000", false),
            ("[::1]:5000", false),
        ];
        for (addr, want) in cases {
            assert_eq!(is_listener(a(addr), &listeners), *want, "{addr}");
        }
    }
}
