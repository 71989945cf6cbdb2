//! What a manifest refers to: an index (or Docker manifest list) lists per-platform
//! manifests; an image manifest names a config and layers (schema 1: `fsLayers`). Pure: the
//! walk behind `warm`, `export`, `import` and pinning (OCI image-spec `image-index.md`,
//! `manifest.md`; Docker's manifest v2 schema 2 and schema 1).

use crate::digest::Digest;

/// One descriptor (`mediaType`, `digest`, `size`, and an index entry's `platform`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// An index entry's platform: (os, architecture, variant).
    pub platform: Option<(String, String, Option<String>)>,
}

/// A manifest's references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An OCI index or Docker manifest list: its entries (manifests, by platform).
    Index(Vec<Descriptor>),
    /// An image (or artifact) manifest: the config (none in schema 1) and the layers, foreign
    /// (non-distributable) layers left out: registries do not serve them.
    Image {
        config: Option<Descriptor>,
        layers: Vec<Descriptor>,
    },
}

impl Manifest {
    /// The blobs of an image manifest, config first; none for an index.
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Manifest::Index(_) => Vec::new(),
            Manifest::Image { config, layers } => config.iter().chain(layers).collect(),
        }
    }
}

/// Read a manifest's references. Errors say what is missing or malformed.
pub fn parse(body: &[u8]) -> Result<Manifest, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("manifest is not JSON: {e}"))?;
    let Some(obj) = v.as_object() else {
        return Err("manifest is not a JSON object".into());
    };
    if obj.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        let layers = obj
            .get("fsLayers")
            .and_then(|l| l.as_array())
            .ok_or("schema 1 manifest without fsLayers")?
            .iter()
            .map(|l| {
                let d = l.get("blobSum").and_then(|d| d.as_str()).unwrap_or("");
                Ok(Descriptor {
                    digest: digest(d)?,
                    media_type: None,
                    size: None,
                    platform: None,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        // Schema 1 lists a layer once per history entry: once is enough.
        let mut seen = std::collections::HashSet::new();
        let layers = layers
            .into_iter()
            .filter(|l| seen.insert(l.digest))
            .collect();
        return Ok(Manifest::Image {
            config: None,
            layers,
        });
    }
    if let Some(list) = obj.get("manifests") {
        let list = list.as_array().ok_or("manifests is not a list")?;
        return list
            .iter()
            .map(descriptor)
            .collect::<Result<Vec<_>, _>>()
            .map(Manifest::Index);
    }
    let config = match obj.get("config") {
        Some(c) => Some(descriptor(c)?),
        None => None,
    };
    let layers = match obj.get("layers") {
        Some(l) => l
            .as_array()
            .ok_or("layers is not a list")?
            .iter()
            .map(descriptor)
            .collect::<Result<Vec<_>, _>>()?,
        None if config.is_some() => Vec::new(),
        None => return Err("manifest has neither manifests nor config nor layers".into()),
    };
    let layers = layers.into_iter().filter(|l| !is_foreign(l)).collect();
    Ok(Manifest::Image { config, layers })
}

fn digest(s: &str) -> Result<Digest, String> {
    Digest::parse(s).map_err(|_| format!("{s:?} is not a sha256 digest"))
}

fn descriptor(v: &serde_json::Value) -> Result<Descriptor, String> {
    let d = v
        .get("digest")
        .and_then(|d| d.as_str())
        .ok_or("descriptor without a digest")?;
    let platform = v.get("platform").map(|p| {
        let s = |k: &str| p.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let variant = Some(s("variant")).filter(|v| !v.is_empty());
        (s("os"), s("architecture"), variant)
    });
    Ok(Descriptor {
        digest: digest(d)?,
        media_type: v
            .get("mediaType")
            .and_then(|m| m.as_str())
            .map(str::to_string),
        size: v.get("size").and_then(|s| s.as_u64()),
        platform,
    })
}

/// Foreign layers (Windows base layers) live at their `urls`, not in the registry.
fn is_foreign(d: &Descriptor) -> bool {
    d.media_type.as_deref().is_some_and(|m| {
        m.contains(".foreign.") || m.contains("nondistributable") || m.contains("non-distributable")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    #[test]
    fn an_index_lists_its_platforms() {
        let body = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(1), "size": 10,
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(2), "size": 11,
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]});
        let Manifest::Index(list) = parse(body.to_string().as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].digest.to_string(), d(2));
        assert_eq!(
            list[1].platform,
            Some(("linux".into(), "arm64".into(), Some("v8".into())))
        );
        assert_eq!(list[0].size, Some(10));
    }

    #[test]
    fn an_image_names_its_config_and_layers_but_not_foreign_ones() {
        let body = serde_json::json!({"schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(1), "size": 5},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(2), "size": 6},
                {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d(3), "size": 7}]});
        let m = parse(body.to_string().as_bytes()).unwrap();
        let blobs: Vec<String> = m.blobs().iter().map(|b| b.digest.to_string()).collect();
        assert_eq!(blobs, [d(1), d(2)]);
    }

    #[test]
    fn schema_1_layers_once_each() {
        let body = serde_json::json!({"schemaVersion": 1, "name": "x", "tag": "1",
            "fsLayers": [{"blobSum": d(1)}, {"blobSum": d(2)}, {"blobSum": d(1)}]});
        let m = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(m.blobs().len(), 2);
    }

    #[test]
    fn malformed_manifests_are_errors_not_panics() {
        for body in [
            &b"not json"[..],
            b"[]",
            b"{}",
            br#"{"schemaVersion":2,"manifests":{}}"#,
            br#"{"schemaVersion":2,"manifests":[{"size":1}]}"#,
            br#"{"schemaVersion":2,"config":{"digest":"sha256:zz"}}"#,
            br#"{"schemaVersion":2,"layers":"x"}"#,
            br#"{"schemaVersion":1}"#,
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
