//! `auth.token`: Bearer tokens as the reference registry takes them. A client without one is
//! challenged with `Bearer realm="…",service="…",scope="repository:<name>:pull"`, gets a JWT
//! from the token server, and sends it; the token is checked here (pure: `now` is an
//! argument):
//!
//! - signed (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA) by the key of a certificate in
//!   `rootcertbundle`: the one whose libtrust key id is the header's `kid`, or whose
//!   certificate is the header's `x5c[0]`, else any of them;
//! - `iss` is the configured issuer, `aud` names the configured service;
//! - `exp` is not past and `nbf` not ahead, each within [`TOKEN_CLOCK_SKEW`];
//! - `access` grants `pull` (or `*`) on the repository asked for, `*` on `registry:catalog`
//!   for `_catalog`; `/v2/` only needs a valid token.

use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::Engine;
use serde_json::Value;

use super::{Access, Reason};
use crate::limits::{TOKEN_CLOCK_SKEW, TOKEN_KEYS_MAX};

pub struct Token {
    settings: RwLock<Arc<Settings>>,
}

struct Settings {
    realm: String,
    service: String,
    issuer: String,
    keys: Vec<Key>,
}

/// A trusted public key, from a certificate of the root bundle.
#[derive(Debug, Clone)]
pub struct Key {
    /// libtrust's key id of the SubjectPublicKeyInfo (what token servers put in `kid`).
    pub kid: String,
    /// The certificate (compared with a token's `x5c[0]`).
    pub cert: Vec<u8>,
    pub kind: KeyKind,
    /// The key as ring takes it: RSAPublicKey DER, an uncompressed EC point, Ed25519 bytes.
    pub public: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Token {
    pub fn load(realm: &str, service: &str, issuer: &str, bundle: &Path) -> Result<Token, String> {
        Ok(Token {
            settings: RwLock::new(Arc::new(settings(realm, service, issuer, bundle)?)),
        })
    }

    pub fn reload(
        &self,
        realm: &str,
        service: &str,
        issuer: &str,
        bundle: &Path,
    ) -> Result<(), String> {
        let s = settings(realm, service, issuer, bundle)?;
        *self.settings.write().unwrap() = Arc::new(s);
        Ok(())
    }

    fn current(&self) -> Arc<Settings> {
        self.settings.read().unwrap().clone()
    }

    /// The challenge for `access` (with the RFC 6750 error when a token was refused).
    pub fn challenge(&self, access: Access<'_>, reason: Reason) -> String {
        let s = self.current();
        let mut c = format!("Bearer realm=\"{}\",service=\"{}\"", s.realm, s.service);
        match access {
            Access::Base => {}
            Access::Pull(name) => c.push_str(&format!(",scope=\"repository:{name}:pull\"")),
            Access::Catalog => c.push_str(",scope=\"registry:catalog:*\""),
        }
        match reason {
            Reason::Missing => {}
            Reason::Scope => c.push_str(",error=\"insufficient_scope\""),
            _ => c.push_str(",error=\"invalid_token\""),
        }
        c
    }

    pub fn check(
        &self,
        access: Access<'_>,
        authorization: Option<&[u8]>,
        now: i64,
    ) -> Result<(), Reason> {
        let value = authorization.ok_or(Reason::Missing)?;
        let value = std::str::from_utf8(value)
            .map_err(|_| Reason::Malformed)?
            .trim();
        let (scheme, token) = value.split_once(' ').ok_or(Reason::Malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            // Basic credentials to a token-auth registry: as if none (the client must go to
            // the token server).
            return Err(Reason::Missing);
        }
        let s = self.current();
        verify(&s, token.trim(), access, now)
    }
}

fn settings(realm: &str, service: &str, issuer: &str, bundle: &Path) -> Result<Settings, String> {
    let key = "auth.token.rootcertbundle";
    let certs = crate::tls::certificates(key, bundle)?;
    if certs.len() > TOKEN_KEYS_MAX {
        return Err(format!(
            "{key}: {}: more than {TOKEN_KEYS_MAX} certificates",
            bundle.display()
        ));
    }
    let keys = certs
        .iter()
        .map(|c| key_of(c.as_ref()).map_err(|e| format!("{key}: {}: {e}", bundle.display())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Settings {
        realm: realm.to_string(),
        service: service.to_string(),
        issuer: issuer.to_string(),
        keys,
    })
}

/// Verify a compact JWS and its claims for `access` at `now` (seconds since the epoch).
fn verify(s: &Settings, token: &str, access: Access<'_>, now: i64) -> Result<(), Reason> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    let header: Value = serde_json::from_slice(&b64url(h)?).map_err(|_| Reason::Malformed)?;
    let signature = b64url(sig)?;
    let alg = header["alg"].as_str().ok_or(Reason::Malformed)?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let by_kid = header["kid"].as_str();
    let by_cert = header["x5c"][0]
        .as_str()
        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok());
    let candidates = s.keys.iter().filter(|k| match (by_kid, &by_cert) {
        (Some(kid), _) => k.kid == kid,
        (None, Some(cert)) => &k.cert == cert,
        (None, None) => true,
    });
    let mut verified = false;
    for k in candidates {
        if let Some(alg) = algorithm(alg, k.kind) {
            let key = ring::signature::UnparsedPublicKey::new(alg, &k.public);
            if key.verify(signed, &signature).is_ok() {
                verified = true;
                break;
            }
        }
    }
    if !verified {
        return Err(Reason::Signature);
    }
    let claims: Value = serde_json::from_slice(&b64url(p)?).map_err(|_| Reason::Malformed)?;
    if claims["iss"].as_str() != Some(s.issuer.as_str()) {
        return Err(Reason::Issuer);
    }
    let aud_ok = match &claims["aud"] {
        Value::String(a) => *a == s.service,
        Value::Array(a) => a.iter().any(|v| v.as_str() == Some(s.service.as_str())),
        _ => false,
    };
    if !aud_ok {
        return Err(Reason::Audience);
    }
    let skew = TOKEN_CLOCK_SKEW.as_secs() as i64;
    let exp = claims["exp"].as_i64().ok_or(Reason::Expired)?;
    if now > exp.saturating_add(skew) {
        return Err(Reason::Expired);
    }
    if let Some(nbf) = claims["nbf"].as_i64() {
        if now < nbf.saturating_sub(skew) {
            return Err(Reason::NotYetValid);
        }
    }
    if grants(&claims["access"], access) {
        Ok(())
    } else {
        Err(Reason::Scope)
    }
}

/// Whether a token's `access` list covers `access`.
fn grants(list: &Value, access: Access<'_>) -> bool {
    let (ty, name, action) = match access {
        Access::Base => return true,
        Access::Pull(name) => ("repository", name, "pull"),
        Access::Catalog => ("registry", "catalog", "*"),
    };
    let Some(list) = list.as_array() else {
        return false;
    };
    list.iter().any(|a| {
        a["type"].as_str() == Some(ty)
            && a["name"].as_str() == Some(name)
            && a["actions"].as_array().is_some_and(|acts| {
                acts.iter()
                    .any(|x| x.as_str() == Some(action) || x.as_str() == Some("*"))
            })
    })
}

fn b64url(s: &str) -> Result<Vec<u8>, Reason> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    ENGINE.decode(s).map_err(|_| Reason::Malformed)
}

/// The ring algorithm for a JWS `alg` with a key of `kind`; `None` when they do not go
/// together (`none` and HMAC are never accepted: the keys here are public).
fn algorithm(
    alg: &str,
    kind: KeyKind,
) -> Option<&'static dyn ring::signature::VerificationAlgorithm> {
    use ring::signature as s;
    Some(match (alg, kind) {
        ("RS256", KeyKind::Rsa) => &s::RSA_PKCS1_2048_8192_SHA256,
        ("RS384", KeyKind::Rsa) => &s::RSA_PKCS1_2048_8192_SHA384,
        ("RS512", KeyKind::Rsa) => &s::RSA_PKCS1_2048_8192_SHA512,
        ("PS256", KeyKind::Rsa) => &s::RSA_PSS_2048_8192_SHA256,
        ("PS384", KeyKind::Rsa) => &s::RSA_PSS_2048_8192_SHA384,
        ("PS512", KeyKind::Rsa) => &s::RSA_PSS_2048_8192_SHA512,
        ("ES256", KeyKind::P256) => &s::ECDSA_P256_SHA256_FIXED,
        ("ES384", KeyKind::P384) => &s::ECDSA_P384_SHA384_FIXED,
        ("EdDSA", KeyKind::Ed25519) => &s::ED25519,
        _ => return None,
    })
}

// ---- X.509, as little as it takes: the SubjectPublicKeyInfo of a DER certificate ----

/// One DER element: (tag, contents, the rest after it).
fn tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let bad = || "not a DER certificate".to_string();
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, rest) = rest.split_first().ok_or_else(bad)?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(bad());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// The trusted key of a DER certificate.
pub fn key_of(cert: &[u8]) -> Result<Key, String> {
    let (_, certificate, _) = tlv(cert)?;
    let (_, mut tbs, _) = tlv(certificate)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..5 {
        tbs = tlv(tbs)?.2;
    }
    let spki_len = tbs.len() - tlv(tbs)?.2.len();
    let spki_der = &tbs[..spki_len];
    let (_, spki, _) = tlv(spki_der)?;
    let (_, alg, rest) = tlv(spki)?;
    let (tag, bits, _) = tlv(rest)?;
    if tag != 0x03 || bits.first() != Some(&0) {
        return Err("the public key is not a bit string".into());
    }
    let public = bits[1..].to_vec();
    let (_, oid, params) = tlv(alg)?;
    let kind = match oid {
        OID_RSA => KeyKind::Rsa,
        OID_ED25519 => KeyKind::Ed25519,
        OID_EC => match tlv(params)?.1 {
            OID_P256 => KeyKind::P256,
            OID_P384 => KeyKind::P384,
            _ => return Err("an EC key on a curve other than P-256 or P-384".into()),
        },
        _ => return Err("a key that is not RSA, ECDSA or Ed25519".into()),
    };
    Ok(Key {
        kid: libtrust_kid(spki_der),
        cert: cert.to_vec(),
        kind,
        public,
    })
}

/// libtrust's key id (what Docker's token servers send as `kid`): the first 240 bits of the
/// SHA-256 of the SubjectPublicKeyInfo, base32, in twelve groups of four joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let bytes = &hash.as_ref()[..30];
    let mut out = String::with_capacity(59);
    let (mut acc, mut nbits) = (0u32, 0);
    let mut n = 0;
    for b in bytes {
        acc = (acc << 8) | *b as u32;
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            if n > 0 && n % 4 == 0 {
                out.push(':');
            }
            out.push(ALPHABET[((acc >> nbits) & 31) as usize] as char);
            n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lists_grant_exactly_what_they_name() {
        let list = serde_json::json!([
            {"type": "repository", "name": "a", "actions": ["pull"]},
            {"type": "repository", "name": "c", "actions": ["push"]},
            {"type": "repository", "name": "d", "actions": ["*"]},
            {"type": "registry", "name": "catalog", "actions": ["*"]},
        ]);
        for (access, want) in [
            (Access::Pull("a"), true),
            (Access::Pull("b"), false),
            (Access::Pull("c"), false),
            (Access::Pull("d"), true),
            (Access::Pull("a/b"), false),
            (Access::Catalog, true),
            (Access::Base, true),
        ] {
            assert_eq!(grants(&list, access), want, "{access:?}");
        }
        assert!(!grants(&serde_json::json!([]), Access::Catalog));
        assert!(!grants(&Value::Null, Access::Pull("a")));
    }

    #[test]
    fn kid_has_libtrusts_shape() {
        let kid = libtrust_kid(b"anything");
        assert_eq!(kid.len(), 59, "{kid}");
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid.split(':').all(|g| g.len() == 4));
    }

    proptest::proptest! {
        /// Untrusted bytes: any Authorization value is refused without a panic (no keys, so
        /// nothing verifies), and any bytes are a key or an error.
        #[test]
        fn prop_any_bearer_value_is_refused_and_any_bytes_parse_or_fail(
            token in "[A-Za-z0-9_.=-]{0,300}",
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        ) {
            let t = Token {
                settings: RwLock::new(Arc::new(Settings {
                    realm: "r".into(),
                    service: "s".into(),
                    issuer: "i".into(),
                    keys: Vec::new(),
                })),
            };
            let value = format!("Bearer {token}");
            proptest::prop_assert!(t.check(Access::Pull("a"), Some(value.as_bytes()), 0).is_err());
            proptest::prop_assert!(t.check(Access::Base, Some(&raw), 0).is_err());
            let _ = key_of(&raw);
        }
    }

    #[test]
    fn garbage_is_not_a_certificate_and_does_not_panic() {
        for input in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01",
        ] {
            assert!(key_of(input).is_err());
        }
    }
}
