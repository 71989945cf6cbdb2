#!/usr/bin/env bash
# Build the .deb (binary, systemd units, example config as a conffile, man pages, Grafana
# dashboard and alert rules), check what is in it, and run lintian on it (errors fail).
# Installs cargo-deb and lintian if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --quiet
if ! command -v lintian >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends lintian >/dev/null
fi

# The man pages come from the binary's own CLI definition (`ringcache man`), so it is built
# first; gzip -n keeps them reproducible (no name or timestamp in the header).
cargo build --release --locked --quiet
rm -rf target/man
target/release/ringcache man --dir target/man
gzip -9n target/man/*.1
deb=$(cargo deb --locked --no-build 2>/dev/null | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb produced no package"; exit 1; }
echo "built $deb"

contents=$(dpkg-deb -c "$deb")
for want in ./usr/bin/ringcache ./etc/ringcache/config.yml ./usr/lib/systemd/system/ringcache.service ./usr/lib/systemd/system/ringcache.socket \
    ./usr/share/man/man1/ringcache.1.gz ./usr/share/man/man1/ringcache-serve.1.gz \
    ./usr/share/man/man1/ringcache-check-config.1.gz ./usr/share/man/man1/ringcache-verify.1.gz \
    ./usr/share/ringcache/ringcache.json ./usr/share/ringcache/ringcache-alerts.yml; do
  grep -q " $want\$" <<<"$contents" || { echo "missing from the package: $want"; echo "$contents"; exit 1; }
done
dpkg-deb -I "$deb" conffiles | grep -qx /etc/ringcache/config.yml || { echo "config.yml is not a conffile"; exit 1; }
# The packaged config is valid as shipped.
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
"$tmp/usr/bin/ringcache" check-config "$tmp/etc/ringcache/config.yml" >/dev/null
echo "package contents ok"

# Errors fail, and so does any warning but initial-upload-closes-no-bugs (an upload to
# Debian's archive would close its ITP bug; this package is not one).
out=$(lintian --fail-on error --suppress-tags-from-file /dev/null "$deb") || { echo "$out"; exit 1; }
echo "$out"
if grep '^W: ' <<<"$out" | grep -qv ' initial-upload-closes-no-bugs '; then
  echo "lintian: warnings"; exit 1
fi
echo "lintian: no errors, no warnings but the changelog's"
echo "package: 1 passed, 0 failed"
