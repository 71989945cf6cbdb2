#!/usr/bin/env python3
"""Seed a registry through its push API with a generated single-image (valid gzip'd tar layers)
or a raw blob. Prints digests. Usage:
  seed.py image BASE NAME TAG SIZE[,SIZE...]   -> prints the manifest digest
  seed.py blob  BASE NAME SIZE SEED            -> prints the blob digest (random bytes)
"""
import gzip, hashlib, io, json, os, random, sys, tarfile, urllib.request


def req(method, url, data=None, headers=None):
    r = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(r)


def push_blob(base, name, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    loc = req("POST", f"{base}/v2/{name}/blobs/uploads/").headers["Location"]
    if loc.startswith("/"):
        loc = base + loc
    sep = "&" if "?" in loc else "?"
    req("PUT", f"{loc}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"})
    return d


def rand_bytes(n, seed):
    # In 1 MiB pieces: randbytes of more than 256 MiB overflows a C int.
    r = random.Random(seed)
    parts, left = [], n
    while left > 0:
        k = min(left, 1 << 20)
        parts.append(r.randbytes(k))
        left -= k
    return b"".join(parts)


def image(base, name, tag, sizes):
    layers, diff_ids = [], []
    for i, size in enumerate(sizes):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            payload = os.urandom(size)
            ti = tarfile.TarInfo(f"layer{i}.bin")
            ti.size = size
            t.addfile(ti, io.BytesIO(payload))
        raw = buf.getvalue()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        layer = gzip.compress(raw, compresslevel=1)
        layers.append((push_blob(base, name, layer), len(layer)))
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cd = push_blob(base, name, config)
    m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s}
                               for d, s in layers]}).encode()
    req("PUT", f"{base}/v2/{name}/manifests/{tag}", m, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    print("sha256:" + hashlib.sha256(m).hexdigest())


if __name__ == "__main__":
    if sys.argv[1] == "image":
        image(sys.argv[2], sys.argv[3], sys.argv[4], [int(s) for s in sys.argv[5].split(",")])
    else:
        print(push_blob(sys.argv[2], sys.argv[3], rand_bytes(int(sys.argv[4]), int(sys.argv[5]))))
