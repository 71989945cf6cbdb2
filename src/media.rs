//! Manifest media types and what a client's `Accept` makes upstream answer (data path step 4).
//! Pure: no IO.
//!
//! A registry answers a manifest request **by tag** according to the manifest types the client
//! accepts (Distribution 2.8, `registry/handlers/manifests.go`; Docker Hub alike): the stored
//! manifest as it is when the client accepts its type; for an index or manifest list the client
//! does not accept, one platform's manifest (linux/amd64) picked from it; for a Docker schema2
//! manifest a client does not accept, a schema1 conversion. So one tag can have several right
//! answers, and a cached resolution is reused only for a client that would get the same one
//! ([`reusable`]). `*/*` counts for nothing in that choice (Distribution matches types only).
//!
//! **By digest** nothing can be converted: the stored manifest is the answer, refused (404
//! `MANIFEST_UNKNOWN`) only when it is an OCI type the client does not accept, as Distribution
//! does ([`by_digest_refused`]).

/// Docker image manifest, schema 1.
pub const DOCKER_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker image manifest, schema 1, signed.
pub const DOCKER_V1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Docker image manifest, schema 2.
pub const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The manifest types whose acceptance changes what upstream answers, one bit each.
const KNOWN: [&str; 6] = [
    DOCKER_V1,
    DOCKER_V1_SIGNED,
    DOCKER_V2,
    DOCKER_LIST,
    OCI_MANIFEST,
    OCI_INDEX,
];

const fn bit(i: usize) -> u16 {
    1 << i
}
const BIT_DOCKER_V1: u16 = bit(0) | bit(1);
const BIT_DOCKER_LIST: u16 = bit(3);
const BIT_OCI_INDEX: u16 = bit(5);
const BIT_OCI: u16 = bit(4) | bit(5);
/// Both multi-platform types.
const LISTS: u16 = BIT_DOCKER_LIST | BIT_OCI_INDEX;

/// The set of known manifest types a request accepts (its `Accept`, as sent upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Accepts(u16);

impl Accepts {
    /// Every known type: what a client with no `Accept` (or only `*/*`) is answered for.
    pub const ALL: Accepts = Accepts((1 << KNOWN.len()) - 1);

    /// The known types named in an `Accept` value (parameters and `q` ignored, as Distribution
    /// does; a type with `q=0` is still counted, which only makes the cache ask upstream more).
    pub fn parse(accept: &str) -> Accepts {
        let mut bits = 0;
        for t in accept.split(',') {
            if let Some(i) = known_index(essence(t)) {
                bits |= bit(i);
            }
        }
        Accepts(bits)
    }

    /// The bits, for the journal.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// From the journal; unknown bits are dropped.
    pub fn from_bits(bits: u16) -> Accepts {
        Accepts(bits & Accepts::ALL.0)
    }

    fn has(self, media_type: &str) -> Option<bool> {
        known_index(media_type).map(|i| self.0 & bit(i) != 0)
    }
}

/// The `Accept` to send upstream for a client's `Accept`: the known manifest types it names, in
/// their exact spelling, then the other types it names, as sent. Upstream then chooses among
/// exactly the types the cache keys its answer on (Distribution compares types case-sensitively;
/// a client's `APPLICATION/VND...` would otherwise be answered one way upstream and filed
/// another way here). `None` when the client names no type but `*/*` (or nothing).
pub fn canonical(accept: &str) -> Option<String> {
    let known = Accepts::parse(accept);
    let mut out = String::new();
    for (i, t) in KNOWN.iter().enumerate() {
        if known.0 & bit(i) != 0 {
            push_type(&mut out, t);
        }
    }
    for t in accept.split(',') {
        let e = essence(t);
        if !e.is_empty() && e != "*/*" && known_index(e).is_none() {
            push_type(&mut out, t.trim());
        }
    }
    (!out.is_empty()).then_some(out)
}

fn push_type(out: &mut String, t: &str) {
    if !out.is_empty() {
        out.push_str(", ");
    }
    out.push_str(t);
}

/// `type/subtype` of a media range or type: parameters and white space dropped. ASCII case is
/// kept as sent; [`known_index`] compares without it.
fn essence(t: &str) -> &str {
    t.split(';').next().unwrap_or("").trim()
}

fn known_index(media_type: &str) -> Option<usize> {
    let t = essence(media_type);
    KNOWN.iter().position(|k| k.eq_ignore_ascii_case(t))
}

/// Is this a multi-platform type (OCI index, Docker manifest list)?
pub fn is_list(media_type: &str) -> bool {
    known_index(media_type).is_some_and(|i| bit(i) & LISTS != 0)
}

/// Does an `Accept` value (the one sent upstream) admit an answer of `media_type`? A known
/// type must be named; any other type (artifact manifests) must be named or covered by `*/*`.
pub fn admits(accept: &str, media_type: &str) -> bool {
    admits_parsed(accept, Accepts::parse(accept), media_type)
}

/// [`admits`] with the `Accept`'s known types already parsed (`known`).
fn admits_parsed(accept: &str, known: Accepts, media_type: &str) -> bool {
    if let Some(yes) = known.has(media_type) {
        return yes;
    }
    let t = essence(media_type);
    accept
        .split(',')
        .map(essence)
        .any(|a| a == "*/*" || a.eq_ignore_ascii_case(t))
}

/// May a tag resolved for a client accepting `resolved_for`, answered with `media_type`, be
/// served to a client whose `Accept` is `accept`? Only when upstream would answer that client
/// the same, which holds when the client admits the type and
/// - it accepts the same known types, or
/// - the answer is an index or list (never a conversion: it is the stored manifest), or
/// - the answer is a single schema2/OCI manifest resolved for a client accepting both list
///   types (then it is the stored manifest too, not one platform picked from a list).
pub fn reusable(resolved_for: Accepts, media_type: &str, accept: &str) -> bool {
    reusable_parsed(resolved_for, media_type, accept, Accepts::parse(accept))
}

/// [`reusable`] with the client's known types already parsed (`client`): the tag hit path
/// parses the `Accept` once.
pub fn reusable_parsed(
    resolved_for: Accepts,
    media_type: &str,
    accept: &str,
    client: Accepts,
) -> bool {
    if !admits_parsed(accept, client, media_type) {
        return false;
    }
    client == resolved_for
        || is_list(media_type)
        || (resolved_for.0 & LISTS == LISTS
            && Accepts::ALL.has(media_type) == Some(true)
            && Accepts(BIT_DOCKER_V1).has(media_type) == Some(false))
}

/// A manifest fetched by digest that the client's `Accept` does not admit: Distribution answers
/// an OCI manifest or index the client does not accept with 404 `MANIFEST_UNKNOWN`, and sends
/// Docker types as they are (it cannot convert what a digest names). `None` Accept admits all.
pub fn by_digest_refused(accept: Option<&str>, media_type: &str) -> bool {
    match accept {
        None => false,
        Some(a) => {
            let client = Accepts::parse(a);
            known_index(media_type).is_some_and(|i| bit(i) & BIT_OCI != 0)
                && client.has(media_type) == Some(false)
                // A client naming no known type at all (only `*/*`, or artifact types) is
                // answered as one with no Accept.
                && client.0 != 0
        }
    }
}

/// The media type of a manifest from its JSON (`mediaType`, else its shape): for content
/// indexed at startup, whose type was not journalled.
pub fn sniff(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        return mt.to_string();
    }
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return if v.get("signatures").is_some() {
            DOCKER_V1_SIGNED.into()
        } else {
            DOCKER_V1.into()
        };
    }
    if v.get("manifests").is_some() {
        OCI_INDEX.into()
    } else {
        OCI_MANIFEST.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTAINERD: &str = "application/vnd.docker.distribution.manifest.v2+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";
    const V2_ONLY: &str = "application/vnd.docker.distribution.manifest.v2+json";
    const SKOPEO: &str = "application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v2+json, \
        application/vnd.docker.distribution.manifest.v1+prettyjws, \
        application/vnd.docker.distribution.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.index.v1+json";

    #[test]
    fn accept_sets() {
        assert_eq!(Accepts::parse(SKOPEO), Accepts::ALL);
        assert_eq!(Accepts::parse("*/*"), Accepts(0));
        assert_eq!(
            Accepts::parse(" Application/VND.docker.distribution.manifest.v2+json ; q=0.5"),
            Accepts(bit(2))
        );
        assert_eq!(Accepts::parse(""), Accepts(0));
        assert_eq!(Accepts::from_bits(0xffff), Accepts::ALL);
    }

    #[test]
    fn the_accept_sent_upstream_names_exactly_what_the_answer_is_keyed_on() {
        for (accept, want) in [
            ("*/*", None),
            ("", None),
            (
                "APPLICATION/VND.DOCKER.DISTRIBUTION.MANIFEST.LIST.V2+JSON;q=0.9, */*",
                Some(DOCKER_LIST.to_string()),
            ),
            (
                "application/vnd.cncf.helm.config.v1+json, application/vnd.oci.image.index.v1+json",
                Some(format!(
                    "{OCI_INDEX}, application/vnd.cncf.helm.config.v1+json"
                )),
            ),
            (V2_ONLY, Some(DOCKER_V2.to_string())),
        ] {
            let got = canonical(accept);
            assert_eq!(got, want, "{accept}");
            if let Some(g) = got {
                assert_eq!(Accepts::parse(&g), Accepts::parse(accept));
            }
        }
    }

    #[test]
    fn admitted_answers() {
        for (accept, mt, want) in [
            (CONTAINERD, OCI_INDEX, true),
            (V2_ONLY, OCI_INDEX, false),
            (V2_ONLY, DOCKER_LIST, false),
            (V2_ONLY, DOCKER_V2, true),
            (CONTAINERD, DOCKER_V1, false), // known types must be named; */* does not count
            (CONTAINERD, "application/vnd.cncf.helm.config.v1+json", true), // */*
            (V2_ONLY, "application/vnd.cncf.helm.config.v1+json", false),
        ] {
            assert_eq!(admits(accept, mt), want, "{accept} / {mt}");
        }
    }

    #[test]
    fn reuse_only_where_upstream_would_answer_the_same() {
        let all = Accepts::ALL;
        let v2 = Accepts::parse(V2_ONLY);
        for (resolved_for, mt, accept, want) in [
            // An index is the stored manifest: every client that takes it gets it.
            (all, OCI_INDEX, CONTAINERD, true),
            (all, OCI_INDEX, V2_ONLY, false),
            // One platform picked for a client that takes no list: only for the same kind.
            (v2, DOCKER_V2, V2_ONLY, true),
            (v2, DOCKER_V2, CONTAINERD, false),
            (v2, DOCKER_V2, SKOPEO, false),
            // A single manifest resolved for a client that takes lists is the stored one.
            (all, DOCKER_V2, V2_ONLY, true),
            (Accepts::parse(CONTAINERD), OCI_MANIFEST, SKOPEO, true),
            // Schema 1 answers may be conversions: only for the same set.
            (all, DOCKER_V1, SKOPEO, true),
            (Accepts(LISTS | BIT_DOCKER_V1), DOCKER_V1, SKOPEO, false),
        ] {
            assert_eq!(
                reusable(resolved_for, mt, accept),
                want,
                "{resolved_for:?} {mt} {accept}"
            );
        }
    }

    #[test]
    fn by_digest_refusals_follow_distribution() {
        for (accept, mt, refused) in [
            (None, OCI_INDEX, false),
            (Some(V2_ONLY), OCI_INDEX, true),
            (Some(V2_ONLY), OCI_MANIFEST, true),
            (Some(V2_ONLY), DOCKER_LIST, false), // Docker types go out as they are
            (Some(CONTAINERD), OCI_INDEX, false),
            (Some("*/*"), OCI_INDEX, false),
        ] {
            assert_eq!(by_digest_refused(accept, mt), refused, "{accept:?} {mt}");
        }
    }

    #[test]
    fn sniffing() {
        assert_eq!(sniff(br#"{"mediaType":"x/y"}"#), "x/y");
        assert_eq!(sniff(br#"{"schemaVersion":2,"manifests":[]}"#), OCI_INDEX);
        assert_eq!(
            sniff(br#"{"schemaVersion":1,"signatures":[]}"#),
            DOCKER_V1_SIGNED
        );
        assert_eq!(sniff(br#"{"schemaVersion":2,"layers":[]}"#), OCI_MANIFEST);
        assert_eq!(sniff(b"\xff not json"), OCI_MANIFEST);
    }
}
