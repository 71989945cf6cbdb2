//! The content the scenarios pull: images with fresh pseudo-random layers, written to files
//! (a GiB layer is never held in memory) and pushed to the origin.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::support::{self, http, image, stream};

/// A written layer: a gzip'd tar holding one file of pseudo-random bytes.
pub struct Layer {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

/// A pushed image: its name and tag at the origin, its manifest's digest and length.
pub struct Image {
    pub name: String,
    pub tag: String,
    pub manifest: String,
    pub manifest_len: u64,
    pub layers: Vec<Layer>,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W: Write> {
    inner: W,
    ctx: ring::digest::Context,
    n: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            n: 0,
        }
    }

    /// `sha256:<hex>` of what was written so far.
    fn digest(&self) -> String {
        format!(
            "sha256:{}",
            ringcache::digest::Digest::from_ring(&self.ctx.clone().finish()).hex()
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.ctx.update(&b[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Write a layer of `payload` pseudo-random bytes under `dir`, streaming (1 MiB at a time).
pub fn make_layer(dir: &Path, payload: u64, seed: u64) -> Layer {
    const CHUNK: u64 = 1 << 20;
    let path = dir.join(format!("layer-{seed}.tmp"));
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
    // Stored (level 0) deflate: a valid gzip stream that costs no compression time.
    let gz = flate2::write::GzEncoder::new(Hashing::new(file), flate2::Compression::none());
    let mut tar_h = Hashing::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_path("payload.bin").unwrap();
    header.set_size(payload);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar_h.write_all(header.as_bytes()).unwrap();
    let mut done = 0u64;
    while done < payload {
        let n = (payload - done).min(CHUNK);
        let bytes = image::pseudo_random_at(seed, done as usize, n as usize);
        tar_h.write_all(&bytes).unwrap();
        done += n;
    }
    let pad = (512 - payload % 512) % 512;
    tar_h.write_all(&vec![0u8; pad as usize + 1024]).unwrap();
    let diff_id = tar_h.digest();
    let mut outer = tar_h.inner.finish().unwrap();
    outer.flush().unwrap();
    Layer {
        path,
        digest: outer.digest(),
        size: outer.n,
        diff_id,
    }
}

/// Push an image with one fresh layer per payload size; the layer files stay under `dir`.
pub fn push_image(
    origin: SocketAddr,
    dir: &Path,
    name: &str,
    tag: &str,
    payloads: &[u64],
    seed: u64,
) -> Image {
    let mut layers = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let l = make_layer(dir, *p, seed * 16 + i as u64);
        stream::push_blob(origin, name, &l.path, &l.digest);
        layers.push(l);
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}
    })
    .to_string();
    let cpath = dir.join(format!("config-{seed}.json"));
    std::fs::write(&cpath, &config).unwrap();
    let cdigest = format!("sha256:{}", support::sha256_hex(config.as_bytes()));
    stream::push_blob(origin, name, &cpath, &cdigest);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l.digest, "size": l.size})).collect::<Vec<_>>()
    })
    .to_string();
    let r = http::request(
        origin,
        "PUT",
        &format!("/v2/{name}/manifests/{tag}"),
        &[("Content-Type", "application/vnd.oci.image.manifest.v1+json")],
        manifest.as_bytes(),
    );
    assert_eq!(r.status, 201, "push manifest: {}", r.text());
    Image {
        name: name.into(),
        tag: tag.into(),
        manifest: format!("sha256:{}", support::sha256_hex(manifest.as_bytes())),
        manifest_len: manifest.len() as u64,
        layers,
    }
}

/// Push a raw blob of `size` pseudo-random bytes (smaller than any layer can be) to `name`.
pub fn push_raw_blob(origin: SocketAddr, dir: &Path, name: &str, size: usize, seed: u64) -> Layer {
    let path = dir.join(format!("blob-{seed}"));
    let b = image::pseudo_random(seed, size);
    std::fs::write(&path, &b).unwrap();
    let digest = format!("sha256:{}", support::sha256_hex(&b));
    stream::push_blob(origin, name, &path, &digest);
    Layer {
        path,
        digest,
        size: size as u64,
        diff_id: String::new(),
    }
}
