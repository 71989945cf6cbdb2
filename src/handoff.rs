//! Moving a cache's content between nodes as an OCI image layout (image-spec
//! `image-layout.md`): `ringcache export` writes the working set (every cached tag) or named
//! images to a directory (`oci-layout`, `index.json` whose entries carry
//! `org.opencontainers.image.ref.name` = `registry/name:tag`, `blobs/sha256/<hex>`), which
//! `skopeo copy oci:DIR:<ref> ...` reads; `ringcache import DIR` loads such a layout into a
//! stopped cache's store, so a replacement node starts warm without asking upstream.
//!
//! Not the data path: blocking std IO, run by the CLI. Neither side holds a blob in memory:
//! export hard-links the store's files (copying where the layout is on another
//! filesystem); import copies each blob through `ingest/` while hashing it, and commits it as
//! a fill does (size and sha256 checked, fsync, rename, fsync of the directory). What a
//! running cache reads at start comes from the state journal, so import appends to it: each
//! manifest's media type, every digest's link to its repository, each tag's resolution.
//!
//! Export reads a store that may be in use (its files are immutable, and the journal is read
//! as a crash-safe log: a torn last line is skipped) and so takes no lock; tags the running
//! cache resolved in its last `state.interval` may be missing. Import takes the store's lock,
//! like `verify`: it refuses while a cache runs on the root.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::limits::{LAYOUT_INDEX_BYTES_MAX, MANIFEST_BYTES_MAX, WARM_CHUNK_BYTES};
use crate::media::{self, Accepts};
use crate::oci::Manifest;
use crate::reference::ImageRef;
use crate::registry::Registries;
use crate::store::state::{Loaded, Record};

/// The annotation an image layout names its images by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A store read from disk, without its lock: content under `blobs/`, the journalled state.
pub struct View {
    root: PathBuf,
    pub loaded: Loaded,
}

impl View {
    pub fn open(root: &Path) -> Result<View, String> {
        if !root.join("blobs/sha256").is_dir() {
            return Err(format!(
                "{}: not a ringcache store (no blobs/sha256)",
                root.display()
            ));
        }
        let loaded = Loaded::read(&root.join("state"))
            .map_err(|e| format!("{}: reading the state: {e}", root.join("state").display()))?;
        Ok(View {
            root: root.to_path_buf(),
            loaded,
        })
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// The size of committed content (a regular file, not followed if a link).
    pub fn size(&self, d: &Digest) -> Option<u64> {
        std::fs::symlink_metadata(self.blob_path(d))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    /// A committed manifest's bytes (`None`: not committed, a link, or over the manifest cap).
    pub fn manifest(&self, d: &Digest) -> Option<Vec<u8>> {
        if self.size(d)? > MANIFEST_BYTES_MAX {
            return None;
        }
        let mut f = open_nofollow(&self.blob_path(d)).ok()?;
        let mut body = Vec::new();
        f.read_to_end(&mut body).ok()?;
        Some(body)
    }

    /// The answers recorded for a tag: (digest, media type, resolved for).
    pub fn tag(&self, key: &str, tag: &str) -> Vec<(Digest, String, Accepts)> {
        let mut out: Vec<_> = self
            .loaded
            .tags
            .iter()
            .filter(|((n, t, _), _)| n == key && t == tag)
            .map(|((_, _, q), (d, m))| (*d, m.clone(), *q))
            .collect();
        out.sort_by_key(|(d, _, q)| (std::cmp::Reverse(q.bits()), *d));
        out
    }

    /// The manifest media type journalled for `d`, else sniffed from its JSON.
    fn media_type(&self, d: &Digest, body: &[u8]) -> String {
        self.loaded
            .entries
            .get(d)
            .and_then(|e| e.media_type.clone())
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| media::sniff(body))
    }
}

fn open_nofollow(p: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
}

/// The one answer of a tag to export: an index or list (what a multi-platform client gets)
/// first, else the answer resolved for the most manifest types.
fn pick(answers: &[(Digest, String, Accepts)]) -> Option<&(Digest, String, Accepts)> {
    answers
        .iter()
        .find(|(_, m, _)| media::is_list(m))
        .or_else(|| answers.first())
}

/// What `check-config` says about pinned content: how many bytes the pins hold in the store
/// and how that compares with `size_max`.
pub fn pinned_report(
    root: &Path,
    pins: &[ImageRef],
    regs: &Registries,
    size_max: Option<u64>,
) -> Result<String, String> {
    let view = View::open(root)?;
    let r = crate::pin::resolve(
        pins,
        regs,
        |k, t| view.tag(k, t).into_iter().map(|(d, _, _)| d).collect(),
        |d| view.manifest(d),
    );
    let (mut n, mut bytes) = (0u64, 0u64);
    for d in &r.digests {
        if let Some(s) = view.size(d) {
            n += 1;
            bytes += s;
        }
    }
    let mut text = format!(
        "{} pinned images hold {n} cached files, {bytes} bytes ({})",
        pins.len(),
        crate::config::format_size(bytes)
    );
    if let Some(max) = size_max.filter(|m| *m > 0) {
        text.push_str(&format!(
            ", {:.1}% of ringcache.storage.size_max",
            bytes as f64 * 100.0 / max as f64
        ));
    }
    if !r.pending.is_empty() {
        text.push_str(&format!("; not cached yet: {}", r.pending.join("; ")));
    }
    Ok(text)
}

/// What an export wrote.
#[derive(Debug, Default)]
pub struct Exported {
    /// Images named in `index.json`, by ref name.
    pub images: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    /// Images left out or only partly there, each with why.
    pub notes: Vec<String>,
    /// Named images that could not be exported, each with why.
    pub errors: Vec<String>,
}

/// Write the working set (every cached tag, `images` empty) or the named images from the
/// store at `root` to an OCI image layout at `to` (made if missing; an `index.json` already
/// there keeps its other entries).
pub fn export(
    root: &Path,
    regs: &Registries,
    images: &[ImageRef],
    to: &Path,
) -> Result<Exported, String> {
    let view = View::open(root)?;
    let mut out = Exported::default();
    // (ref name, manifest digest, media type)
    let mut roots: Vec<(String, Digest, String)> = Vec::new();
    if images.is_empty() {
        let mut tags: BTreeMap<(String, String), ()> = BTreeMap::new();
        for (n, t, _) in view.loaded.tags.keys() {
            tags.insert((n.clone(), t.clone()), ());
        }
        for (key, tag) in tags.keys() {
            let Some((u, name)) = regs.split(key) else {
                out.notes.push(format!(
                    "{key}:{tag}: its registry is not configured; left out"
                ));
                continue;
            };
            let Ok(image) = ImageRef::parse(&format!("{}/{name}:{tag}", regs.name(u))) else {
                continue;
            };
            let answers = view.tag(key, tag);
            let Some((d, mt, _)) = pick(&answers) else {
                continue;
            };
            let ref_name = image.ref_name();
            if !roots.iter().any(|(r, _, _)| *r == ref_name) {
                roots.push((ref_name, *d, mt.clone()));
            }
        }
    } else {
        for image in images {
            let found = match image.digest {
                Some(d) => view
                    .manifest(&d)
                    .map(|body| (d, view.media_type(&d, &body))),
                None => {
                    let tag = image.tag.as_deref().unwrap_or("latest");
                    let keys = image.keys(regs).map_err(|e| format!("{image}: {e}"))?;
                    keys.iter()
                        .find_map(|k| pick(&view.tag(k, tag)).map(|(d, m, _)| (*d, m.clone())))
                }
            };
            match found {
                Some((d, mt)) => roots.push((image.ref_name(), d, mt)),
                None => out.errors.push(format!(
                    "{image}: not cached (no such tag or manifest here)"
                )),
            }
        }
    }
    std::fs::create_dir_all(to.join("blobs/sha256"))
        .map_err(|e| format!("{}: {e}", to.display()))?;
    let mut entries = Vec::new();
    let mut placed = HashSet::new();
    for (ref_name, d, mt) in roots {
        let mut digests = Vec::new();
        let mut partial = Vec::new();
        if let Err(e) = closure(&view, d, 0, &mut digests, &mut partial) {
            let line = format!("{ref_name}: {e}");
            if images.is_empty() {
                out.notes.push(format!("{line}; left out"));
            } else {
                out.errors.push(line);
            }
            continue;
        }
        for p in partial {
            out.notes.push(format!("{ref_name}: {p}"));
        }
        for digest in digests {
            if placed.insert(digest) {
                let n = place(&view.blob_path(&digest), to, &digest)?;
                out.files += 1;
                out.bytes += n;
            }
        }
        let size = view.size(&d).unwrap_or(0);
        entries.push(serde_json::json!({
            "mediaType": mt,
            "digest": d.to_string(),
            "size": size,
            "annotations": {REF_NAME: ref_name},
        }));
        out.images.push(ref_name);
    }
    write_layout(to, entries)?;
    Ok(out)
}

/// Every digest an export of manifest `d` needs: the manifest, and for an index each platform
/// that is fully cached (one that is not is noted in `partial` and left out); for an image,
/// its config and layers, all of which must be cached.
fn closure(
    view: &View,
    d: Digest,
    depth: usize,
    out: &mut Vec<Digest>,
    partial: &mut Vec<String>,
) -> Result<(), String> {
    let body = view
        .manifest(&d)
        .ok_or_else(|| format!("manifest {d} not cached"))?;
    match crate::oci::parse(&body).map_err(|e| format!("manifest {d}: {e}"))? {
        Manifest::Index(list) => {
            if depth >= 4 {
                return Err("indexes nested too deep".into());
            }
            let mut any = false;
            for child in &list {
                let mut sub = Vec::new();
                match closure(view, child.digest, depth + 1, &mut sub, partial) {
                    Ok(()) => {
                        any = true;
                        out.extend(sub);
                    }
                    Err(e) => partial.push(format!(
                        "platform {} left out ({e})",
                        child
                            .platform
                            .as_ref()
                            .map(|(os, a, _)| format!("{os}/{a}"))
                            .unwrap_or_else(|| child.digest.to_string())
                    )),
                }
            }
            if !any && !list.is_empty() {
                return Err("no platform of the index is fully cached".into());
            }
        }
        m => {
            for b in m.blobs() {
                if view.size(&b.digest).is_none() {
                    return Err(format!("blob {} not cached", b.digest));
                }
                out.push(b.digest);
            }
        }
    }
    out.push(d);
    Ok(())
}

/// Put the store's file for `d` in the layout: a hard link, or a copy across filesystems.
/// Returns its size.
fn place(src: &Path, to: &Path, d: &Digest) -> Result<u64, String> {
    let dst = to.join("blobs/sha256").join(d.hex());
    let meta = std::fs::symlink_metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", src.display()));
    }
    if let Ok(m) = std::fs::symlink_metadata(&dst) {
        if m.is_file() && m.len() == meta.len() {
            return Ok(meta.len()); // there already (an earlier export)
        }
        std::fs::remove_file(&dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    }
    if std::fs::hard_link(src, &dst).is_ok() {
        return Ok(meta.len());
    }
    let tmp = dst.with_extension("tmp");
    let mut from = open_nofollow(src).map_err(|e| format!("{}: {e}", src.display()))?;
    let mut into = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let n = std::io::copy(&mut from, &mut into).map_err(|e| format!("{}: {e}", tmp.display()))?;
    into.sync_all()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &dst).map_err(|e| format!("{}: {e}", dst.display()))?;
    Ok(n)
}

/// `oci-layout` and `index.json` (entries of an `index.json` already there with other ref
/// names are kept), each written to a temp file and renamed.
fn write_layout(to: &Path, entries: Vec<serde_json::Value>) -> Result<(), String> {
    let index_path = to.join("index.json");
    let mut manifests: Vec<serde_json::Value> = Vec::new();
    if let Ok(old) = read_capped(&index_path, LAYOUT_INDEX_BYTES_MAX) {
        let old: serde_json::Value = serde_json::from_slice(&old).unwrap_or_default();
        let names: HashSet<&str> = entries
            .iter()
            .filter_map(|e| e["annotations"][REF_NAME].as_str())
            .collect();
        for m in old["manifests"].as_array().into_iter().flatten() {
            if !m["annotations"][REF_NAME]
                .as_str()
                .is_some_and(|r| names.contains(r))
            {
                manifests.push(m.clone());
            }
        }
    }
    manifests.extend(entries);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    write_atomic(&to.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    write_atomic(&index_path, index.to_string().as_bytes())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_capped(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    let f = open_nofollow(path)?;
    let mut body = Vec::new();
    f.take(cap + 1).read_to_end(&mut body)?;
    if body.len() as u64 > cap {
        return Err(std::io::Error::other(format!(
            "{}: over {cap} bytes",
            path.display()
        )));
    }
    Ok(body)
}

/// What an import did.
#[derive(Debug, Default)]
pub struct Imported {
    pub images: Vec<String>,
    /// Files copied into the store (verified), and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files the store had already.
    pub present: u64,
    pub notes: Vec<String>,
    /// Images not imported, each with why.
    pub errors: Vec<String>,
}

/// Load the image layout at `dir` into the store at `root` (made if missing), under the
/// store's lock (an [`crate::store::lock::InUse`] error while a cache runs on it). Every
/// `index.json` entry must name its image by a full reference (`registry/name:tag`, as
/// export writes) of a configured registry: the whole import is refused otherwise, before
/// anything changes.
pub fn import(root: &Path, regs: &Registries, dir: &Path) -> Result<Imported, ImportError> {
    let index = read_capped(&dir.join("index.json"), LAYOUT_INDEX_BYTES_MAX)
        .map_err(|e| ImportError::Layout(format!("{}: {e}", dir.join("index.json").display())))?;
    let index: serde_json::Value = serde_json::from_slice(&index)
        .map_err(|e| ImportError::Layout(format!("index.json: {e}")))?;
    let list = index["manifests"]
        .as_array()
        .ok_or_else(|| ImportError::Layout("index.json has no manifests list".into()))?;
    // Checked first, all of them: nothing is written for a layout with a bad entry.
    let mut wanted = Vec::new();
    let mut bad = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let d = m["digest"].as_str().and_then(|d| Digest::parse(d).ok());
        let mt = m["mediaType"].as_str().unwrap_or("").to_string();
        let name = m["annotations"][REF_NAME].as_str();
        let Some(d) = d else {
            bad.push(format!("index.json entry {i}: no sha256 digest"));
            continue;
        };
        let Some(name) = name else {
            bad.push(format!(
                "index.json entry {i} ({d}): no {REF_NAME} annotation naming the image"
            ));
            continue;
        };
        let first = name.split('/').next().unwrap_or("");
        let full = name.contains('/')
            && (first.contains('.') || first.contains(':') || first == "localhost");
        let image = if full {
            ImageRef::parse(name).map_err(|e| format!("{name}: {e}"))
        } else {
            Err(format!(
                "{name}: not a full image reference (registry/name:tag, as ringcache export writes)"
            ))
        };
        match image.and_then(|im| {
            let at = im.locate(regs).map_err(|e| format!("{name}: {e}"))?;
            Ok((im, at.key))
        }) {
            Ok((im, key)) => wanted.push((im, key, d, mt)),
            Err(e) => bad.push(e),
        }
    }
    if !bad.is_empty() {
        return Err(ImportError::Layout(bad.join("; ")));
    }
    let store = crate::store::Store::open(root).map_err(ImportError::Store)?;
    let (mut journal, _) =
        crate::store::state::Journal::open(&root.join("state")).map_err(ImportError::Store)?;
    let now = crate::store::index::now_secs();
    let mut out = Imported::default();
    let mut committed: HashMap<Digest, u64> = HashMap::new();
    let mut buf = vec![0u8; WARM_CHUNK_BYTES];
    let mut records = Vec::new();
    for (image, key, d, mt) in wanted {
        // (digest, media type for manifests)
        let mut digests: Vec<(Digest, Option<String>)> = Vec::new();
        let walked = walk_layout(dir, d, Some(mt.clone()), 0, &mut digests, &mut out.notes);
        let result = walked.and_then(|()| {
            for (digest, _) in &digests {
                if committed.contains_key(digest) {
                    continue;
                }
                let n = copy_in(&store, dir, digest, &mut buf, &mut out)?;
                committed.insert(*digest, n);
            }
            Ok(())
        });
        if let Err(e) = result {
            out.errors.push(format!("{image}: {e}"));
            continue;
        }
        for (digest, media_type) in &digests {
            records.push(Record::Commit {
                digest: digest.hex(),
                size: committed.get(digest).copied().unwrap_or(0),
                media_type: media_type.clone(),
                last_access: now,
            });
            records.push(Record::Link {
                digest: digest.hex(),
                repository: key.clone(),
            });
        }
        if let Some(tag) = &image.tag {
            records.push(Record::Tag {
                name: key.clone(),
                tag: tag.clone(),
                digest: d.hex(),
                media_type: mt.clone(),
                // The stored manifest, as upstream gives it to a client accepting every type
                // (media::reusable serves it to each client that admits its type).
                accepts: Some(Accepts::ALL.bits()),
            });
        }
        out.images.push(image.to_string());
    }
    records.push(Record::Saved { at: now });
    journal.append(&records).map_err(ImportError::Store)?;
    drop(store);
    Ok(out)
}

/// Why an import stopped before it began, or at the store.
#[derive(Debug)]
pub enum ImportError {
    /// The layout is unreadable or names an image wrongly; nothing was changed.
    Layout(String),
    /// The store: in use by another process ([`crate::store::lock::InUse`]), or an IO error.
    Store(std::io::Error),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Layout(s) => write!(f, "{s}"),
            ImportError::Store(e) => write!(f, "{e}"),
        }
    }
}

/// Every digest of manifest `d` in the layout: the manifest (with its media type), its
/// platforms (those the layout has; the others noted), their config and layers.
fn walk_layout(
    dir: &Path,
    d: Digest,
    media_type: Option<String>,
    depth: usize,
    out: &mut Vec<(Digest, Option<String>)>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let path = dir.join("blobs/sha256").join(d.hex());
    let body = read_capped(&path, MANIFEST_BYTES_MAX).map_err(|e| format!("manifest {d}: {e}"))?;
    if Digest::of(&body) != d {
        return Err(format!(
            "manifest {d}: the layout's file does not match its digest"
        ));
    }
    let mt = media_type
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| media::sniff(&body));
    match crate::oci::parse(&body).map_err(|e| format!("manifest {d}: {e}"))? {
        Manifest::Index(list) => {
            if depth >= 4 {
                return Err("indexes nested too deep".into());
            }
            for child in list {
                if !dir.join("blobs/sha256").join(child.digest.hex()).exists() {
                    notes.push(format!(
                        "{d}: platform manifest {} not in the layout",
                        child.digest
                    ));
                    continue;
                }
                walk_layout(dir, child.digest, child.media_type, depth + 1, out, notes)?;
            }
        }
        m => {
            for b in m.blobs() {
                out.push((b.digest, None));
            }
        }
    }
    out.push((d, Some(mt)));
    Ok(())
}

/// Copy the layout's blob `d` into the store, hashing it on the way (the commit of a fill:
/// size and digest checked, fsync, rename, fsync of the directory). Content the store has
/// already is left as it is. Returns the size.
fn copy_in(
    store: &crate::store::Store,
    dir: &Path,
    d: &Digest,
    buf: &mut [u8],
    out: &mut Imported,
) -> Result<u64, String> {
    let have = store.blob_path(d);
    if let Ok(m) = std::fs::symlink_metadata(&have) {
        if m.is_file() {
            out.present += 1;
            return Ok(m.len());
        }
    }
    let src = dir.join("blobs/sha256").join(d.hex());
    let mut from = open_nofollow(&src).map_err(|e| format!("blob {d}: {e}"))?;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = store.ingest_dir().join(format!(
        "import-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let result = (|| -> Result<u64, String> {
        let mut into = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut n = 0u64;
        loop {
            let k = from.read(buf).map_err(|e| format!("blob {d}: {e}"))?;
            if k == 0 {
                break;
            }
            let chunk = buf.get(..k).unwrap_or_default();
            ctx.update(chunk);
            into.write_all(chunk)
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            n += k as u64;
        }
        if Digest::from_ring(&ctx.finish()) != *d {
            return Err(format!(
                "blob {d}: the layout's file does not match its digest"
            ));
        }
        into.sync_all()
            .map_err(|e| format!("{}: {e}", tmp.display()))?;
        let dir = store
            .commit_rename(&tmp, d)
            .map_err(|e| format!("committing {d}: {e}"))?;
        dir.sync_all().map_err(|e| format!("committing {d}: {e}"))?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let n = result?;
    out.files += 1;
    out.bytes += n;
    Ok(n)
}
