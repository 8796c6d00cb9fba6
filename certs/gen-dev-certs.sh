#!/usr/bin/env bash
# gen-dev-certs.sh - writes aspen's development TLS certificates (test-only
# keys, never for production) with the openssl CLI.
#
# Usage: certs/gen-dev-certs.sh [DIR]     (DIR defaults to this script's folder)
#
# Writes into DIR:
#   ca.pem, ca-key.pem                 a dev CA (10 years)
#   server.pem, server-key.pem         signed by the CA, for localhost,
#                                      127.0.0.1 and ::1 (SAN), serverAuth
#   server-combined.pem                server.pem + server-key.pem in one file
#   client.pem, client-key.pem         CN=aspen-client,OU=clients,O=aspen,
#                                      clientAuth (for MONGODB-X509)
# Idempotent: if every file is present, the certificates chain to ca.pem, the
# keys match and all stay valid for at least one more day, it does nothing.
# Otherwise it regenerates the whole set. Keys are EC P-256 (fast to make,
# accepted by OpenSSL, mongosh, pymongo and Java alike) and mode 0600.
set -euo pipefail

dir="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

command -v openssl >/dev/null || { echo "gen-dev-certs: openssl not found" >&2; exit 1; }

# Two runs at once (unit tests and e2e scripts) must not interleave.
if command -v flock >/dev/null; then
  exec 9>"$dir/.gen-dev-certs.lock"
  flock 9
fi

files=(ca.pem ca-key.pem server.pem server-key.pem server-combined.pem
       client.pem client-key.pem)

# True when the existing set is complete, consistent and valid for a day.
is_valid() {
  local f name
  for f in "${files[@]}"; do
    [[ -s "$dir/$f" ]] || return 1
  done
  for name in ca server client; do
    openssl x509 -in "$dir/$name.pem" -noout -checkend 86400 >/dev/null 2>&1 || return 1
    [[ "$(openssl x509 -in "$dir/$name.pem" -noout -pubkey 2>/dev/null)" == \
       "$(openssl pkey -in "$dir/$name-key.pem" -pubout 2>/dev/null)" ]] || return 1
  done
  openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem" >/dev/null 2>&1 || return 1
  [[ "$(cat "$dir/server.pem" "$dir/server-key.pem")" == "$(cat "$dir/server-combined.pem")" ]] || return 1
}

if is_valid; then
  echo "gen-dev-certs: certificates in $dir are up to date"
  exit 0
fi

# Build the set in a scratch folder and move it in at the end, so a failure
# never leaves a half-written set behind.
umask 077
tmp="$(mktemp -d "$dir/.gen-dev-certs.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

newkey() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

serial() {
  echo "0x$(openssl rand -hex 16)"
}

# sign NAME SUBJECT EXTENSIONS: a CA-signed leaf certificate for NAME-key.pem.
sign() {
  local name="$1" subject="$2" ext="$3"
  newkey "$tmp/$name-key.pem"
  openssl req -new -key "$tmp/$name-key.pem" -subj "$subject" -out "$tmp/$name.csr"
  printf '%s\n' "$ext" >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca-key.pem" \
    -set_serial "$(serial)" -days 825 -sha256 -extfile "$tmp/$name.ext" \
    -out "$tmp/$name.pem" 2>/dev/null
}

newkey "$tmp/ca-key.pem"
cat >"$tmp/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
O = aspen
OU = dev
CN = aspen dev CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
openssl req -x509 -new -config "$tmp/ca.cnf" -key "$tmp/ca-key.pem" -sha256 \
  -days 3650 -set_serial "$(serial)" -out "$tmp/ca.pem"

leaf_ext='basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer'

sign server "/O=aspen/CN=localhost" "$leaf_ext
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1"

sign client "/O=aspen/OU=clients/CN=aspen-client" "$leaf_ext
extendedKeyUsage = clientAuth"

cat "$tmp/server.pem" "$tmp/server-key.pem" >"$tmp/server-combined.pem"
chmod 644 "$tmp/ca.pem" "$tmp/server.pem" "$tmp/client.pem"
for f in "${files[@]}"; do
  mv -f "$tmp/$f" "$dir/$f"
done

echo "gen-dev-certs: wrote a dev CA, server and client certificates to $dir"
