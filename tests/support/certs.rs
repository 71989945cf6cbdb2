//! Certificates made by the tests (the openssl CLI, which scripts/test.sh installs) and a small
//! blocking TLS client on rustls: for ringcache's `http.tls`, mutual TLS and token signing.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::http::{read_response, Resp};
use super::require;

/// Run openssl in `dir`; panics with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    require("openssl");
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req -newkey` arguments for a key type: `rsa`, `ec` (P-256) or `ed25519`.
fn newkey(kind: &str) -> Vec<&'static str> {
    match kind {
        "rsa" => vec!["-newkey", "rsa:2048"],
        "ec" => vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "ed25519" => vec!["-newkey", "ed25519"],
        other => panic!("no key type {other}"),
    }
}

/// A CA: `<name>.pem` and `<name>.key` in `dir`.
pub fn ca(dir: &Path, name: &str) -> PathBuf {
    let (pem, key) = (format!("{name}.pem"), format!("{name}.key"));
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(newkey("ec"));
    args.extend([
        "-keyout",
        &key,
        "-out",
        &pem,
        "-subj",
        "/CN=ringcache test CA",
    ]);
    openssl(dir, &args);
    dir.join(pem)
}

/// A certificate `<name>.pem` / `<name>.key` of key type `kind`, issued by the CA `issuer`
/// (made by [`ca`] or this, with `ext` = `ca`), for `use_` = `server` (127.0.0.1),
/// `client`, or `ca` (an intermediate).
pub fn issue(dir: &Path, name: &str, kind: &str, issuer: &str, use_: &str) -> (PathBuf, PathBuf) {
    let (pem, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let mut args = vec!["req", "-nodes"];
    args.extend(newkey(kind));
    let subj = format!("/CN={name}");
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    let ext = match use_ {
        "server" => {
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        }
        "client" => "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        "ca" => "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
        other => panic!("no use {other}"),
    };
    let extfile = format!("{name}.ext");
    std::fs::write(dir.join(&extfile), ext).unwrap();
    let (ipem, ikey) = (format!("{issuer}.pem"), format!("{issuer}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ipem,
            "-CAkey",
            &ikey,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    );
    (dir.join(pem), dir.join(key))
}

/// A private key PEM as PKCS#8 DER (what ring signs with).
pub fn pkcs8_der(dir: &Path, key_pem: &Path) -> Vec<u8> {
    let out = dir.join("key.p8.der");
    openssl(
        dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            key_pem.to_str().unwrap(),
            "-outform",
            "DER",
            "-out",
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

/// The DER certificates of a PEM file.
pub fn certs(pem: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(pem)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// A rustls client trusting the CAs in `roots`, with a client certificate if given.
pub fn client_config(roots: &[&Path], client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
    client_config_versions(roots, client, rustls::DEFAULT_VERSIONS)
}

pub fn client_config_versions(
    roots: &[&Path],
    client: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        for c in certs(r) {
            store.add(c).unwrap();
        }
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(store);
    let mut c = match client {
        Some((cert, key)) => b
            .with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect and finish the handshake (an error if ringcache refuses it).
pub fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    tcp.set_read_timeout(Some(Duration::from_secs(20)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(20)))?;
    let conn =
        rustls::ClientConnection::new(config.clone(), ServerName::IpAddress(addr.ip().into()))
            .unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// One GET on an open TLS connection.
pub fn get_on(s: &mut Tls, path: &str, headers: &[(&str, &str)]) -> std::io::Result<Resp> {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut r = BufReader::new(ReadOnly(s));
    let resp = read_response(&mut r, false)?;
    assert!(r.buffer().is_empty(), "no bytes past the response");
    Ok(resp)
}

/// One GET on a new TLS connection.
pub fn get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut s = connect(addr, config).unwrap_or_else(|e| panic!("TLS to {addr}: {e}"));
    get_on(&mut s, path, headers).unwrap_or_else(|e| panic!("GET {path} over TLS: {e}"))
}

/// Reads through a borrowed stream (so the connection stays usable after a response).
pub struct ReadOnly<'a, R: Read>(pub &'a mut R);

impl<R: Read> Read for ReadOnly<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}
