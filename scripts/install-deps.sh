#!/usr/bin/env bash
# Installs everything aspen's build and tests need on a Debian 12 machine:
#   - Debian packages for the C build and socat (bench/forward.sh's reference
#     relay), skipped when all are installed, with clang's compiler runtime
#     (libFuzzer, for scripts/fuzz.sh);
#   - mongosh (npm) into .deps/node;
#   - a Python venv with pymongo, pytest and moto in .deps/venv;
#   - the backing MongoDB-compatible server (mongo-java-server, Maven) as
#     .deps/aspen-backing-server.jar;
#   - Apache Kafka (broker and console tools, Maven Central) as jars in
#     .deps/kafka/lib, for the Kafka e2e tests;
#   - kinesalite (npm), the Kinesis emulator, in .deps/kinesalite.
# Idempotent: each step is skipped when its result is already there, so a
# re-run takes a second or two. Run as root (or with sudo available for apt).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEPS="$ROOT/.deps"
MONGOSH_VERSION=2.12.0
PYMONGO_MIN=4.6
BACKING_SRC="$ROOT/tests/e2e/mongo-java-server"
BACKING_JAR="$DEPS/aspen-backing-server.jar"

APT_PACKAGES=(build-essential cmake pkg-config libmongoc-dev libbson-dev
              librdkafka-dev libuv1-dev libssl-dev libcmocka-dev libpcre2-dev openssl clang
              socat libavro-dev libcurl4-openssl-dev duktape-dev zlib1g-dev libsnappy-dev)

log() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 && SUDO=(sudo)
fi

mkdir -p "$DEPS"
# One installer at a time (two test runs started together share .deps).
exec 9>"$DEPS/.install.lock"
flock 9

pkg_installed() {
    dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

APT_UPDATED=0
apt_install() {
    local missing=() p
    for p in "$@"; do
        pkg_installed "$p" || missing+=("$p")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "apt-get install ${missing[*]}"
    if [[ $APT_UPDATED -eq 0 ]]; then
        "${SUDO[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
}

step_start() { STEP_T0=$(date +%s); }
step_done() { log "$1 ($(( $(date +%s) - STEP_T0 )) s)"; }

# --- 1. Debian packages --------------------------------------------------
step_start
# The machine image ships Node, Java and Maven; install Debian's if absent.
extra=()
command -v java >/dev/null 2>&1 || extra+=(default-jdk-headless)
command -v mvn >/dev/null 2>&1 || extra+=(maven)
command -v npm >/dev/null 2>&1 || extra+=(nodejs npm)
command -v flock >/dev/null 2>&1 || extra+=(util-linux)
apt_install "${APT_PACKAGES[@]}" "${extra[@]}"
# libFuzzer and clang's sanitizer runtimes (scripts/fuzz.sh links with
# -fsanitize=fuzzer) are in libclang-rt-<major>-dev, which clang only
# recommends (Debian 12: clang 14, libclang-rt-14-dev), and recommends are
# not installed here.
CLANG_MAJOR=$(clang -dumpversion | cut -d. -f1)
apt_install "libclang-rt-$CLANG_MAJOR-dev"
step_done "apt packages ok"

# --- 2. mongosh ----------------------------------------------------------
step_start
MONGOSH_PKG="$DEPS/node/node_modules/mongosh/package.json"
have_mongosh_version() {
    [[ -f $MONGOSH_PKG && -x $DEPS/node/node_modules/.bin/mongosh ]] || return 1
    node -e 'process.stdout.write(require(process.argv[1]).version)' "$MONGOSH_PKG" 2>/dev/null
}
if [[ $(have_mongosh_version || true) != "$MONGOSH_VERSION" ]]; then
    # npm ci from the committed lockfile: a plain `npm install` resolves
    # mongosh's ranges afresh and fails whenever the registry serves a
    # package whose own dependency range it does not (yet) serve.
    log "npm ci mongosh@$MONGOSH_VERSION into .deps/node (scripts/node lockfile)"
    mkdir -p "$DEPS/node"
    cp "$ROOT/scripts/node/package.json" "$ROOT/scripts/node/package-lock.json" \
        "$DEPS/node/"
    npm ci --prefix "$DEPS/node" --no-audit --no-fund --loglevel=error
    [[ $(have_mongosh_version || true) == "$MONGOSH_VERSION" ]] ||
        die "mongosh $MONGOSH_VERSION did not install into $DEPS/node"
fi
step_done "mongosh $MONGOSH_VERSION ok"

# --- 3. Python venv with pymongo, pytest and prometheus_client -------------
step_start
VENV="$DEPS/venv"
venv_ok() {
    [[ -x $VENV/bin/python ]] || return 1
    "$VENV/bin/python" - "$PYMONGO_MIN" <<'EOF' 2>/dev/null
import sys, ssl  # ssl: the TLS tests need it
import pymongo, pytest
import confluent_kafka, fastavro  # the Avro tests' independent client
import moto  # the Lambda and S3 peer of test_https.sh, test_object_stores.sh
import boto3, azure.storage.blob  # the object stores' independent clients
import prometheus_client  # the metrics test
want = tuple(int(x) for x in sys.argv[1].split("."))
have = tuple(int(x) for x in pymongo.version_tuple[:2])
sys.exit(0 if have >= want else 1)
EOF
}
if ! venv_ok; then
    # A venv whose interpreter is gone (or broken) is rebuilt from scratch.
    if [[ -d $VENV ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        log "creating venv .deps/venv"
        # python3 on PATH may be a pyenv build; it has its own venv module.
        if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
            rm -rf "$VENV"
            log "python3 -m venv failed; using Debian's /usr/bin/python3"
            apt_install python3 python3-venv
            /usr/bin/python3 -m venv "$VENV"
        fi
    fi
    log "pip install -r scripts/python/requirements.txt (pymongo, pytest, moto, boto3, azure-storage-blob, prometheus_client, ...)"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -r "$ROOT/scripts/python/requirements.txt"
    venv_ok || die "pymongo>=$PYMONGO_MIN / pytest / prometheus_client not importable from $VENV"
fi
step_done "venv ok ($("$VENV/bin/python" -c 'import pymongo; print("pymongo", pymongo.version)'))"

# --- 4. Backing server (mongo-java-server fat jar) -----------------------
step_start
# The jar is rebuilt when its sources change: the stamp is their checksum.
stamp=$(cd "$BACKING_SRC" && find pom.xml src -type f -print0 | sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [[ ! -f $BACKING_JAR || $(cat "$BACKING_JAR.stamp" 2>/dev/null) != "$stamp" ]]; then
    log "mvn package tests/e2e/mongo-java-server"
    # Build output stays under .deps, not in the source tree.
    # Output goes to a log shown only on failure (Debian's Maven 3.8.7 prints
    # stray colour escapes even in batch mode).
    if ! mvn -q -B -f "$BACKING_SRC/pom.xml" \
            -DaspenBuildDir="$DEPS/backing-server-build" package \
            >"$DEPS/backing-server-build.log" 2>&1; then
        cat "$DEPS/backing-server-build.log" >&2
        die "building the backing server failed"
    fi
    cp "$DEPS/backing-server-build/aspen-backing-server.jar" "$BACKING_JAR.tmp"
    mv "$BACKING_JAR.tmp" "$BACKING_JAR"
    echo "$stamp" >"$BACKING_JAR.stamp"
fi
step_done "backing server jar ok"

# --- 5. Apache Kafka jars ------------------------------------------------
step_start
# The broker (kafka.Kafka, KRaft) and console tools, run with
# `java -cp '.deps/kafka/lib/*'` by tests/e2e/peers.sh. Refetched when the
# pom changes; Maven's own cache makes a refetch quick.
KAFKA_POM="$ROOT/tests/e2e/kafka/pom.xml"
KAFKA_LIB="$DEPS/kafka/lib"
stamp=$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)
if [[ ! -d $KAFKA_LIB || $(cat "$DEPS/kafka/lib.stamp" 2>/dev/null) != "$stamp" ]]; then
    log "mvn dependency:copy-dependencies tests/e2e/kafka (Apache Kafka)"
    mkdir -p "$DEPS/kafka"
    rm -rf "$KAFKA_LIB.tmp"
    if ! mvn -q -B -f "$KAFKA_POM" dependency:copy-dependencies \
            -DoutputDirectory="$KAFKA_LIB.tmp" >"$DEPS/kafka/install.log" 2>&1; then
        cat "$DEPS/kafka/install.log" >&2
        die "fetching Apache Kafka failed"
    fi
    rm -rf "$KAFKA_LIB"
    mv "$KAFKA_LIB.tmp" "$KAFKA_LIB"
    echo "$stamp" >"$DEPS/kafka/lib.stamp"
fi
step_done "kafka jars ok ($(du -sh "$KAFKA_LIB" | cut -f1))"

# --- 6. Schema Registry (Apicurio Registry) --------------------------------
step_start
# A Confluent-compatible registry for the Avro tests (tests/e2e/apicurio:
# the app re-packaged as a runnable Quarkus jar, with its libraries in
# lib/ beside it), started by peers.sh's start_registry. Rebuilt when the
# pom or its application.properties change.
REGISTRY_SRC="$ROOT/tests/e2e/apicurio"
REGISTRY_DIR="$DEPS/apicurio"
stamp=$(cd "$REGISTRY_SRC" && find pom.xml src -type f -print0 | sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [[ ! -f $REGISTRY_DIR/aspen-test-registry-1-runner.jar ||
      $(cat "$REGISTRY_DIR.stamp" 2>/dev/null) != "$stamp" ]]; then
    log "mvn package tests/e2e/apicurio (Apicurio Registry)"
    rm -rf "$REGISTRY_DIR.tmp"
    if ! mvn -q -B -f "$REGISTRY_SRC/pom.xml" -DaspenBuildDir="$REGISTRY_DIR.tmp" \
            package >"$DEPS/apicurio-build.log" 2>&1; then
        cat "$DEPS/apicurio-build.log" >&2
        die "building the schema registry failed"
    fi
    rm -rf "$REGISTRY_DIR"
    mv "$REGISTRY_DIR.tmp" "$REGISTRY_DIR"
    echo "$stamp" >"$REGISTRY_DIR.stamp"
fi
step_done "schema registry ok"

# --- 7. Azurite (the Azure Blob Storage emulator) -------------------------
step_start
# Azurite (npm, scripts/node-azurite's lockfile) into .deps/azurite, redone
# when its pins change. Its clients (boto3, azure-storage-blob) and moto's S3
# server come with step 3's requirements.txt.
# Its real path: npm ci mistakes a path through a symlink (a worktree's
# .deps) for another project.
AZURITE_DIR="$(cd "$DEPS" && pwd -P)/azurite"
stamp=$(cat "$ROOT/scripts/node-azurite/package.json" "$ROOT/scripts/node-azurite/package-lock.json" |
        sha256sum | cut -d' ' -f1)
if [[ ! -x $AZURITE_DIR/node_modules/.bin/azurite-blob ||
      $(cat "$AZURITE_DIR/stamp" 2>/dev/null) != "$stamp" ]]; then
    log "npm ci azurite into .deps/azurite (scripts/node-azurite lockfile)"
    # A tree npm ci did not make (or an older one) confuses it: start afresh.
    rm -rf "$AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    cp "$ROOT/scripts/node-azurite/package.json" "$ROOT/scripts/node-azurite/package-lock.json" \
        "$AZURITE_DIR/"
    npm ci --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error
    echo "$stamp" >"$AZURITE_DIR/stamp"
fi
step_done "Azurite ok"

# --- 8. kinesalite (npm), the Kinesis emulator --------------------------
step_start
# npm ci from tests/e2e/kinesis's lockfile into .deps/kinesalite (its real
# path, as Azurite's), redone when the lockfile changes. leveldown's native
# build is skipped (--ignore-scripts): the tests keep kinesalite's data in
# memory. Its client, boto3, is in requirements.txt (step 3).
KIN_DIR="$(cd "$DEPS" && pwd -P)/kinesalite"
stamp=$(cat "$ROOT/tests/e2e/kinesis/package.json" "$ROOT/tests/e2e/kinesis/package-lock.json" |
        sha256sum | cut -d' ' -f1)
if [[ ! -f $KIN_DIR/node_modules/kinesalite/package.json ||
      $(cat "$KIN_DIR/stamp" 2>/dev/null) != "$stamp" ]]; then
    log "npm ci kinesalite into .deps/kinesalite (tests/e2e/kinesis lockfile)"
    rm -rf "$KIN_DIR"
    mkdir -p "$KIN_DIR"
    cp "$ROOT/tests/e2e/kinesis/package.json" "$ROOT/tests/e2e/kinesis/package-lock.json" \
        "$KIN_DIR/"
    npm ci --prefix "$KIN_DIR" --no-audit --no-fund --ignore-scripts --loglevel=error
    echo "$stamp" >"$KIN_DIR/stamp"
fi
step_done "kinesalite ok"

# --- 9. .gitignore -------------------------------------------------------
touch "$ROOT/.gitignore"
for pat in '.deps/' 'build*/'; do
    grep -qxF "$pat" "$ROOT/.gitignore" || echo "$pat" >>"$ROOT/.gitignore"
done

log "all dependencies installed"
