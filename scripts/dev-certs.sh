#!/usr/bin/env bash
# Makes a local certificate authority and certificates for trying Parley with TLS:
#   scripts/dev-certs.sh [DIR] [NAME ...]
# DIR defaults to ./dev-certs; each NAME (default: node1 node2 node3) gets NAME.crt/NAME.key,
# valid for localhost and 127.0.0.1, usable as a server and as a client (mutual TLS between
# nodes). Point tls.cert_file/tls.key_file (browsers: trust ca.crt) and cluster.tls.* at them.
set -euo pipefail
dir=${1:-./dev-certs}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(node1 node2 node3)
command -v openssl >/dev/null || { echo "dev-certs: openssl is needed (apt-get install -y openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"
if [ ! -f ca.key ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=Parley dev CA" -keyout ca.key -out ca.crt 2>/dev/null
fi
for name in "${names[@]}"; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,DNS:%s,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature\n' "$name" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
done
chmod 600 ./*.key
echo "certificates in $dir: ca.crt and ${names[*]} (.crt/.key)"
