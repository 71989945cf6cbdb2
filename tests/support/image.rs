//! Building test images: gzip'd tar layers (valid, so real clients accept them), an OCI
//! config and manifest, and pushing them to the reference registry through its API.

use std::io::{BufReader, Write};
use std::net::SocketAddr;

use super::http;

/// A deterministic pseudo-random byte stream, so big blobs need no storage.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    pseudo_random_at(seed, 0, len)
}

/// Bytes `[offset, offset + len)` of `pseudo_random(seed, ..)`, computed directly (each 8-byte
/// word is splitmix64 of its index), so any range of a huge blob can be produced on the fly.
pub fn pseudo_random_at(seed: u64, offset: usize, len: usize) -> Vec<u8> {
    let word = |i: u64| -> [u8; 8] {
        let mut z =
            seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_add(0x632B_E59B_D9B4_E019);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    };
    let mut out = Vec::with_capacity(len + 16);
    let first = offset / 8;
    let last = (offset + len).div_ceil(8);
    for i in first..last {
        out.extend_from_slice(&word(i as u64));
    }
    let skip = offset - first * 8;
    out.drain(..skip);
    out.truncate(len);
    out
}

/// A gzip'd tar holding one file of `size` pseudo-random bytes. Returns (layer, diff_id hex).
pub fn layer(seed: u64, size: usize) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let data = pseudo_random(seed, size);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, format!("file-{seed}.bin"), &data[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = super::sha256_hex(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

pub struct Image {
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    pub config: Vec<u8>,
    pub layers: Vec<Vec<u8>>,
}

impl Image {
    pub fn layer_digests(&self) -> Vec<String> {
        self.layers
            .iter()
            .map(|l| format!("sha256:{}", super::sha256_hex(l)))
            .collect()
    }
}

/// An OCI image with one layer per size.
pub fn image(seed: u64, sizes: &[usize]) -> Image {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let (l, d) = layer(seed * 1000 + i as u64, *size);
        layers.push(l);
        diff_ids.push(format!("sha256:{d}"));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {}
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": format!("sha256:{}", super::sha256_hex(&config)), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", super::sha256_hex(l)), "size": l.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    let manifest_digest = format!("sha256:{}", super::sha256_hex(&manifest));
    Image {
        manifest,
        manifest_digest,
        config,
        layers,
    }
}

/// Push an image to a registry through the distribution push API (monolithic uploads).
pub fn push(addr: SocketAddr, name: &str, tag: &str, img: &Image, auth: Option<&str>) {
    let auth_h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    for blob in img.layers.iter().chain(std::iter::once(&img.config)) {
        let digest = format!("sha256:{}", super::sha256_hex(blob));
        let r = http::request(
            addr,
            "POST",
            &format!("/v2/{name}/blobs/uploads/"),
            &auth_h,
            b"",
        );
        assert_eq!(r.status, 202, "start upload: {}", r.text());
        let loc = r.header("location").unwrap().to_string();
        let loc = loc.split_once("://").map_or(loc.clone(), |(_, rest)| {
            rest[rest.find('/').unwrap()..].to_string()
        });
        let sep = if loc.contains('?') { '&' } else { '?' };
        let mut headers = auth_h.clone();
        headers.push(("Content-Type", "application/octet-stream"));
        let mut s = http::connect(addr);
        http::send(
            &mut s,
            addr,
            "PUT",
            &format!("{loc}{sep}digest={digest}"),
            &headers,
            blob,
        );
        let r = http::read_response(&mut BufReader::new(s), false).unwrap();
        assert_eq!(r.status, 201, "finish upload: {}", r.text());
    }
    let mut headers = auth_h.clone();
    let mt = media_type(&img.manifest);
    headers.push(("Content-Type", &mt));
    let r = http::request(
        addr,
        "PUT",
        &format!("/v2/{name}/manifests/{tag}"),
        &headers,
        &img.manifest,
    );
    assert_eq!(r.status, 201, "put manifest: {}", r.text());
}

/// One platform of a multi-platform image: a one-layer image whose config names `arch`, in
/// Docker schema2 media types (`docker`) or OCI ones.
pub fn platform_image(seed: u64, arch: &str, docker: bool) -> Image {
    let (layer, diff_id) = layer(seed, 2_000);
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff_id}")]},
        "config": {}
    })
    .to_string()
    .into_bytes();
    let (mt, config_mt, layer_mt) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
    };
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt,
        "config": {"mediaType": config_mt,
                   "digest": format!("sha256:{}", super::sha256_hex(&config)), "size": config.len()},
        "layers": [{"mediaType": layer_mt,
                    "digest": format!("sha256:{}", super::sha256_hex(&layer)), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    Image {
        manifest_digest: format!("sha256:{}", super::sha256_hex(&manifest)),
        manifest,
        config,
        layers: vec![layer],
    }
}

/// The media type an image manifest names.
pub fn media_type(manifest: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    v["mediaType"].as_str().unwrap().to_string()
}

/// Push a multi-platform image: each platform by digest, then an index (OCI) or a manifest
/// list (Docker, when the platforms are Docker schema2) under `tag`. Returns the index's
/// (body, digest).
pub fn push_multi(
    addr: SocketAddr,
    name: &str,
    tag: &str,
    platforms: &[(&str, &Image)],
) -> (Vec<u8>, String) {
    let docker = media_type(&platforms[0].1.manifest).contains("docker");
    let mut entries = Vec::new();
    for (arch, img) in platforms {
        push(addr, name, &img.manifest_digest, img, None);
        entries.push(serde_json::json!({
            "mediaType": media_type(&img.manifest),
            "digest": img.manifest_digest, "size": img.manifest.len(),
            "platform": {"architecture": arch, "os": "linux"}}));
    }
    let mt = if docker {
        "application/vnd.docker.distribution.manifest.list.v2+json"
    } else {
        "application/vnd.oci.image.index.v1+json"
    };
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": mt, "manifests": entries})
        .to_string()
        .into_bytes();
    let r = http::request(
        addr,
        "PUT",
        &format!("/v2/{name}/manifests/{tag}"),
        &[("Content-Type", mt)],
        &index,
    );
    assert_eq!(r.status, 201, "put index: {}", r.text());
    let digest = format!("sha256:{}", super::sha256_hex(&index));
    (index, digest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_access_matches_the_stream() {
        let all = super::pseudo_random(7, 1000);
        for (off, len) in [(0, 1000), (3, 10), (8, 8), (999, 1), (13, 500)] {
            assert_eq!(super::pseudo_random_at(7, off, len), all[off..off + len]);
        }
    }
}
