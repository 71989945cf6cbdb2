//! Image references as operators write them (`ghcr.io/team/app:1`, `alpine`,
//! `docker.io/library/alpine@sha256:...`), for the commands and settings that name images
//! (`warm`, `export`, `ringcache.pin`). Pure: no IO.
//!
//! Docker's rules: the first component is a registry when it holds a `.` or a `:` or is
//! `localhost`; otherwise the image is Docker Hub's (`docker.io`), and a one-component Docker
//! Hub name is an official image under `library/`. A reference is a tag (default `latest`) or
//! a digest (`@sha256:...`, which wins over a tag written beside it). Which upstream serves
//! the registry comes from the config's [`Registries`]; a registry no upstream mirrors is an
//! error naming it.

use std::fmt;

use crate::digest::Digest;
use crate::registry::{is_registry_name, Registries, DOCKER_HUB};
use crate::route::{is_name, is_tag};

/// Docker Hub's canonical name, what `alpine` means.
pub const DOCKER_IO: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Lowercase; Docker Hub's names all become `docker.io`.
    pub registry: String,
    /// The repository, `library/` added for a Docker Hub official image.
    pub name: String,
    /// The tag, when the reference is by tag (`latest` when it names neither).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

/// Where an image is, in this cache's terms: its upstream and repository key
/// ([`Registries::key`]), and the `ns` to send for it (`None` for the default upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub upstream: usize,
    pub key: String,
    pub ns: Option<String>,
}

impl ImageRef {
    /// Parse a reference (see the module's text). Errors say what is wrong, in a short phrase.
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty image reference".into());
        }
        if s.len() > 1024 {
            return Err("image reference too long".into());
        }
        let (rest, digest) = match s.rsplit_once('@') {
            Some((r, d)) => {
                let d = Digest::parse(d)
                    .map_err(|_| format!("{d:?} is not a sha256 digest (sha256:<64 hex>)"))?;
                (r, Some(d))
            }
            None => (s, None),
        };
        // A tag's `:` comes after the last `/` (a registry's port comes before it).
        let (rest, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r, Some(t)),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            if !is_tag(t) {
                return Err(format!("{t:?} is not a valid tag"));
            }
        }
        let (registry, name) = match rest.split_once('/') {
            Some((first, name))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                if !is_registry_name(first) {
                    return Err(format!(
                        "{first:?} is not a registry name (host or host:port)"
                    ));
                }
                (first.to_ascii_lowercase(), name)
            }
            _ => (DOCKER_IO.to_string(), rest),
        };
        let registry = if DOCKER_HUB.contains(&registry.as_str()) {
            DOCKER_IO.to_string()
        } else {
            registry
        };
        let name = if registry == DOCKER_IO && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_string()
        };
        if !is_name(&name) {
            return Err(format!(
                "{name:?} is not a valid repository name (lowercase components joined by /)"
            ));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry,
            name,
            tag,
            digest,
        })
    }

    /// What the manifest is asked for by: the digest if there is one, else the tag.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The upstream that mirrors this image's registry, and the image's key there. A registry
    /// no upstream mirrors is an error naming it.
    pub fn locate(&self, regs: &Registries) -> Result<Located, String> {
        let u = regs.find(&self.registry).ok_or_else(|| {
            format!(
                "registry {} is not mirrored here (configured: {})",
                self.registry,
                (0..regs.len())
                    .map(|u| regs.name(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        Ok(Located {
            upstream: u,
            key: regs.key(u, &self.name),
            ns: (u != 0).then(|| regs.name(u).to_string()),
        })
    }

    /// The keys this image's tags may have been recorded under: its key, and for a Docker Hub
    /// official image also the short name (`alpine` beside `library/alpine`), which clients
    /// that do not expand it send.
    pub fn keys(&self, regs: &Registries) -> Result<Vec<String>, String> {
        let at = self.locate(regs)?;
        let mut keys = vec![at.key];
        let hub = DOCKER_HUB.contains(&regs.name(at.upstream));
        if let Some(short) = self.name.strip_prefix("library/") {
            if hub && !short.contains('/') {
                keys.push(regs.key(at.upstream, short));
            }
        }
        Ok(keys)
    }

    /// `registry/name:tag`, for an OCI layout's `org.opencontainers.image.ref.name`; with no
    /// tag, `registry/name@digest`.
    pub fn ref_name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A platform as `--platform` writes it: `os/arch[/variant]` (`linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!(
                "{s:?} is not a platform (os/arch or os/arch/variant, e.g. linux/arm64)"
            )),
        }
    }

    /// Whether an index entry's platform is this one (a variant is compared only when this
    /// one names it).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && self.variant.as_deref().is_none_or(|v| Some(v) == variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn references_parse_as_docker_reads_them() {
        let d = Some(Digest::parse(D).unwrap());
        let t = |s: &str| Some(s.to_string());
        for (s, registry, name, tag, digest) in [
            ("alpine", "docker.io", "library/alpine", t("latest"), None),
            ("alpine:3", "docker.io", "library/alpine", t("3"), None),
            (
                "docker.io/library/alpine:3",
                "docker.io",
                "library/alpine",
                t("3"),
                None,
            ),
            (
                "index.docker.io/alpine",
                "docker.io",
                "library/alpine",
                t("latest"),
                None,
            ),
            (
                "bitnami/redis:7",
                "docker.io",
                "bitnami/redis",
                t("7"),
                None,
            ),
            ("ghcr.io/team/app:1", "ghcr.io", "team/app", t("1"), None),
            ("GHCR.io/team/app", "ghcr.io", "team/app", t("latest"), None),
            (
                "harbor.corp:5000/x/y:v1.2",
                "harbor.corp:5000",
                "x/y",
                t("v1.2"),
                None,
            ),
            ("localhost/app", "localhost", "app", t("latest"), None),
            (
                "localhost:5000/app:t",
                "localhost:5000",
                "app",
                t("t"),
                None,
            ),
            (
                "127.0.0.1:5001/team/app:1",
                "127.0.0.1:5001",
                "team/app",
                t("1"),
                None,
            ),
            (
                &format!("alpine@{D}"),
                "docker.io",
                "library/alpine",
                None,
                d,
            ),
            (&format!("ghcr.io/a/b:1@{D}"), "ghcr.io", "a/b", t("1"), d),
        ] {
            let r = ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (r.registry.as_str(), r.name.as_str(), r.tag, r.digest),
                (registry, name, tag, digest),
                "{s}"
            );
        }
        assert_eq!(
            ImageRef::parse(&format!("ghcr.io/a/b:1@{D}"))
                .unwrap()
                .reference(),
            D
        );
        assert_eq!(ImageRef::parse("alpine:3").unwrap().reference(), "3");
        assert_eq!(
            ImageRef::parse("alpine:3").unwrap().to_string(),
            "docker.io/library/alpine:3"
        );
    }

    #[test]
    fn bad_references_are_refused_with_a_reason() {
        for s in [
            "",
            "   ",
            "Alpine",
            "ghcr.io/Team/app",
            "alpine:",
            "alpine:-x",
            "alpine@sha256:abc",
            "alpine@md5:00",
            "ghcr.io/",
            "a//b",
            "user@ghcr.io/x",
            "ghcr.io:99999/x",
            "x:y:z",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?} parsed");
        }
    }

    #[test]
    fn a_registry_maps_to_its_upstream_or_is_named_in_the_error() {
        let regs = Registries::new("registry-1.docker.io", ["ghcr.io"]);
        let at = |s: &str| ImageRef::parse(s).unwrap().locate(&regs);
        assert_eq!(
            at("alpine").unwrap(),
            Located {
                upstream: 0,
                key: "library/alpine".into(),
                ns: None
            }
        );
        assert_eq!(
            at("ghcr.io/team/app:1").unwrap(),
            Located {
                upstream: 1,
                key: "ghcr.io//team/app".into(),
                ns: Some("ghcr.io".into())
            }
        );
        let e = at("quay.io/x/y").unwrap_err();
        assert!(e.contains("quay.io") && e.contains("not mirrored"), "{e}");
        assert_eq!(
            ImageRef::parse("alpine").unwrap().keys(&regs).unwrap(),
            ["library/alpine", "alpine"]
        );
        assert_eq!(
            ImageRef::parse("ghcr.io/library/x")
                .unwrap()
                .keys(&regs)
                .unwrap(),
            ["ghcr.io//library/x"]
        );
    }

    #[test]
    fn platforms() {
        let p = Platform::parse("linux/arm64").unwrap();
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "amd64", None));
        let v = Platform::parse("linux/arm/v7").unwrap();
        assert!(v.matches("linux", "arm", Some("v7")));
        assert!(!v.matches("linux", "arm", Some("v6")));
        assert_eq!(v.to_string(), "linux/arm/v7");
        for bad in ["linux", "linux/", "/arm64", "a/b/c/d", "linux/arm 64"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
    }
}
