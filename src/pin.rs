//! Pinned images (`ringcache.pin`, data path step 9): the digests that neither expire nor
//! are evicted. An image pins its tag's resolutions (every answer kept for it, whatever the
//! client's `Accept`), the manifests they name — an index and every per-platform manifest it
//! lists — and each image manifest's config and layers, whether or not they are cached yet
//! (a layer pinned before it arrives stays once it does).
//!
//! Pure: the caller gives the tag resolutions and reads manifests (the expiry thread from its
//! journal state and the store; `check-config` from the state on disk), so resolution is
//! recomputed whenever a manifest or a tag changes, without touching the data path.

use std::collections::{HashMap, HashSet};

use crate::digest::Digest;
use crate::reference::ImageRef;
use crate::registry::Registries;

/// Nested indexes are followed this deep (an index of indexes is unusual; a cycle is not
/// possible with digests, but a bound costs nothing).
const DEPTH_MAX: usize = 4;

/// What pins resolve to now.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digests: HashSet<Digest>,
    /// Pins (or parts of them) that are not cached yet, one line each: nothing to keep.
    pub pending: Vec<String>,
}

/// The tags the pins name: repository key → tags (for picking them out of a tag table).
pub fn tag_keys(pins: &[ImageRef], regs: &Registries) -> HashMap<String, HashSet<String>> {
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for p in pins {
        let (Some(tag), None) = (&p.tag, &p.digest) else {
            continue;
        };
        for key in p.keys(regs).unwrap_or_default() {
            out.entry(key).or_default().insert(tag.clone());
        }
    }
    out
}

/// Resolve `pins`: `tags(key, tag)` gives every digest a tag resolves to (all its answers),
/// `manifest(digest)` a cached manifest's bytes (`None`: not cached, or not readable).
pub fn resolve(
    pins: &[ImageRef],
    regs: &Registries,
    tags: impl Fn(&str, &str) -> Vec<Digest>,
    mut manifest: impl FnMut(&Digest) -> Option<Vec<u8>>,
) -> Resolved {
    let mut out = Resolved::default();
    for p in pins {
        let roots: Vec<Digest> = match (&p.digest, &p.tag) {
            (Some(d), _) => vec![*d],
            (None, Some(tag)) => {
                let keys = match p.keys(regs) {
                    Ok(k) => k,
                    Err(e) => {
                        out.pending.push(format!("{p}: {e}"));
                        continue;
                    }
                };
                let mut ds: Vec<Digest> = keys.iter().flat_map(|k| tags(k, tag)).collect();
                ds.sort();
                ds.dedup();
                ds
            }
            (None, None) => Vec::new(),
        };
        if roots.is_empty() {
            out.pending.push(format!("{p}: tag not cached"));
        }
        for d in roots {
            walk(p, d, 0, &mut manifest, &mut out);
        }
    }
    out
}

fn walk(
    pin: &ImageRef,
    d: Digest,
    depth: usize,
    manifest: &mut impl FnMut(&Digest) -> Option<Vec<u8>>,
    out: &mut Resolved,
) {
    if !out.digests.insert(d) && depth > 0 {
        return; // shared by two platforms or two pins: walked already
    }
    let Some(body) = manifest(&d) else {
        out.pending.push(format!("{pin}: manifest {d} not cached"));
        return;
    };
    match crate::oci::parse(&body) {
        Ok(crate::oci::Manifest::Index(list)) => {
            if depth >= DEPTH_MAX {
                out.pending.push(format!("{pin}: indexes nested too deep"));
                return;
            }
            for child in list {
                walk(pin, child.digest, depth + 1, manifest, out);
            }
        }
        Ok(m) => out.digests.extend(m.blobs().iter().map(|b| b.digest)),
        Err(e) => out.pending.push(format!("{pin}: manifest {d}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(b: &[u8]) -> Digest {
        Digest::of(b)
    }

    /// An image manifest over the blobs `layers` (their contents), with config `config`.
    fn image(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
        serde_json::json!({"schemaVersion": 2,
            "config": {"digest": dg(config).to_string(), "size": config.len()},
            "layers": layers.iter().map(|l| serde_json::json!({"digest": dg(l).to_string(), "size": l.len()})).collect::<Vec<_>>()})
        .to_string()
        .into_bytes()
    }

    fn index(children: &[&[u8]]) -> Vec<u8> {
        serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": children.iter().map(|c| serde_json::json!({"digest": dg(c).to_string(), "size": c.len(),
                "platform": {"os": "linux", "architecture": "amd64"}})).collect::<Vec<_>>()})
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_pinned_tag_keeps_its_index_every_platform_and_their_blobs() {
        let regs = Registries::new("registry-1.docker.io", ["ghcr.io"]);
        let amd = image(b"cfg-amd", &[b"l1", b"shared"]);
        let arm = image(b"cfg-arm", &[b"l2", b"shared"]);
        let idx = index(&[&amd, &arm]);
        let single = image(b"cfg-single", &[b"l3"]);
        let store: HashMap<Digest, Vec<u8>> = [&amd, &arm, &idx, &single]
            .iter()
            .map(|m| (dg(m), m.to_vec()))
            .collect();
        let tags = |key: &str, tag: &str| -> Vec<Digest> {
            match (key, tag) {
                ("ghcr.io//team/app", "1") => vec![dg(&idx), dg(&amd)],
                // Recorded under the short name a client sent.
                ("alpine", "3") => vec![dg(&single)],
                _ => vec![],
            }
        };
        let pins: Vec<ImageRef> = ["ghcr.io/team/app:1", "alpine:3", "ghcr.io/team/app:2"]
            .iter()
            .map(|s| ImageRef::parse(s).unwrap())
            .collect();
        let r = resolve(&pins, &regs, tags, |d| store.get(d).cloned());
        let want: HashSet<Digest> = [
            dg(&idx),
            dg(&amd),
            dg(&arm),
            dg(b"cfg-amd"),
            dg(b"cfg-arm"),
            dg(b"l1"),
            dg(b"l2"),
            dg(b"shared"),
            dg(&single),
            dg(b"cfg-single"),
            dg(b"l3"),
        ]
        .into_iter()
        .collect();
        assert_eq!(r.digests, want);
        assert_eq!(r.pending, ["ghcr.io/team/app:2: tag not cached"]);
        let keys = tag_keys(&pins, &regs);
        assert!(keys["ghcr.io//team/app"].contains("2"));
        assert!(keys["alpine"].contains("3") && keys["library/alpine"].contains("3"));
    }

    #[test]
    fn a_digest_pin_needs_no_tag_and_a_missing_manifest_pins_only_itself() {
        let regs = Registries::single("registry-1.docker.io");
        let arm = image(b"c", &[b"l"]);
        let idx = index(&[&arm]);
        let pin = ImageRef::parse(&format!("x/y@{}", dg(&idx))).unwrap();
        // The index is cached, its platform manifest not yet.
        let r = resolve(
            std::slice::from_ref(&pin),
            &regs,
            |_, _| vec![],
            |d| (*d == dg(&idx)).then(|| idx.clone()),
        );
        assert_eq!(
            r.digests,
            [dg(&idx), dg(&arm)].into_iter().collect::<HashSet<_>>()
        );
        assert_eq!(r.pending.len(), 1);
        assert!(r.pending[0].contains("not cached"));
        // Garbage where a manifest should be: noted, no panic.
        let r = resolve(&[pin], &regs, |_, _| vec![], |_| Some(b"{]".to_vec()));
        assert_eq!(r.digests.len(), 1);
        assert!(r.pending[0].contains("not JSON"));
    }
}
