# shellcheck shell=bash
# Real peers for aspen's e2e tests: the backing server (mongo-java-server),
# Apache Kafka (start_kafka, kafka_produce, kafka_consume), aspen itself,
# and mongosh. Source this file from a bash test script:
#
#   . "$(dirname "$0")/peers.sh"
#   start_backing "$(free_port)"            # sets BACKING_PORT
#   port=$(free_port)
#   start_aspen --port "$port" --backend "mongodb://127.0.0.1:$BACKING_PORT"
#   mongosh_run "mongodb://127.0.0.1:$port/" tests/e2e/js/foundation.js
#   stop_aspen                              # fails on a sanitizer report
#   stop_backing
#
# Call start_* directly, never in $(...): the process must be a child of the
# test's own shell so stop_* can reap it and read its exit status.
# Everything started here is killed by an EXIT trap if the test dies.
#
# Environment:
#   ASPEN_RUN_DIR   logs and pid files (default build/run under the repo)
#   ASPEN_BIN       the aspen binary (default build/proxy/aspen)
#   ASPEN_INSTANCE  names one aspen (default "aspen": aspen.log, aspen.pid),
#                   so a test can run several: ASPEN_INSTANCE=tls start_aspen ...
#   MONGOSH_TIMEOUT seconds one mongosh run may take (default 120)

PEERS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ASPEN_RUN_DIR=${ASPEN_RUN_DIR:-$PEERS_ROOT/build/run}
case $ASPEN_RUN_DIR in /*) ;; *) ASPEN_RUN_DIR=$PEERS_ROOT/$ASPEN_RUN_DIR ;; esac
mkdir -p "$ASPEN_RUN_DIR"
export ASPEN_RUN_DIR

PEERS_DEPS=$PEERS_ROOT/.deps
# ASPEN_BACKING_JAR: another build of the backing server (default: .deps').
PEERS_JAR=${ASPEN_BACKING_JAR:-$PEERS_DEPS/aspen-backing-server.jar}
PEERS_MONGOSH=$PEERS_DEPS/node/node_modules/.bin/mongosh
PEERS_PYTHON=$PEERS_DEPS/venv/bin/python
[[ -x $PEERS_PYTHON ]] || PEERS_PYTHON=python3

BACKING_PORT=${BACKING_PORT:-}

peers_log() { printf '[peers] %s\n' "$*" >&2; }

# --- process helpers --------------------------------------------------------

# True while PID runs (a zombie, exited but not yet reaped, does not count).
_peers_alive() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    state=$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# _peers_wait_gone PID SECONDS: wait for PID to exit; 1 if it still runs.
_peers_wait_gone() {
    local pid=$1 i n=$(( $2 * 10 ))
    for (( i = 0; i < n; i++ )); do
        _peers_alive "$pid" || return 0
        sleep 0.1
    done
    ! _peers_alive "$pid"
}

# _peers_kill NAME: SIGTERM then (after 10 s) SIGKILL the process whose pid
# is in $ASPEN_RUN_DIR/NAME.pid, if it is still the one we started.
_peers_kill() {
    local pidfile=$ASPEN_RUN_DIR/$1.pid pid
    [[ -f $pidfile ]] || return 0
    pid=$(<"$pidfile")
    rm -f "$pidfile"
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    _peers_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    _peers_wait_gone "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
    return 0
}

# _peers_stop NAME: SIGTERM (then SIGKILL) NAME and reap it; 1 if it was
# not running.
_peers_stop() {
    local pidfile=$ASPEN_RUN_DIR/$1.pid pid
    [[ -f $pidfile ]] || { peers_log "stop $1: not running"; return 1; }
    pid=$(<"$pidfile")
    _peers_kill "$1"
    _peers_forget "$1"
    wait "$pid" 2>/dev/null || true
}

# Names of processes started by this shell and not stopped yet.
declare -ga _PEERS_STARTED=()

_peers_forget() {
    local keep=() n
    for n in "${_PEERS_STARTED[@]}"; do [[ $n == "$1" ]] || keep+=("$n"); done
    _PEERS_STARTED=("${keep[@]}")
}

# Extra cleanup commands registered by the test (peers_on_exit CMD).
declare -ga _PEERS_ON_EXIT=()
peers_on_exit() { _PEERS_ON_EXIT+=("$*"); }

_peers_cleanup() {
    local rc=$? n c
    trap - EXIT INT TERM HUP
    for c in "${_PEERS_ON_EXIT[@]}"; do eval "$c" || true; done
    for n in "${_PEERS_STARTED[@]}"; do
        peers_log "cleanup: stopping $n"
        _peers_kill "$n"
    done
    _PEERS_STARTED=()
    exit "$rc"
}
trap _peers_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# peers_reap_stale: kill whatever a dead test left running under
# $ASPEN_RUN_DIR (its pid files). For runners, between tests.
peers_reap_stale() {
    local f
    for f in "$ASPEN_RUN_DIR"/*.pid; do
        [[ -e $f ]] || continue
        peers_log "reaping stale $(basename "$f" .pid)"
        _peers_kill "$(basename "$f" .pid)"
    done
}

# --- ports ------------------------------------------------------------------

# free_port: print a TCP port on 127.0.0.1 that nothing listens on. It is
# chosen below the kernel's ephemeral range (so outgoing connections do not
# take it meanwhile) and not handed out twice under one $ASPEN_RUN_DIR.
free_port() {
    "$PEERS_PYTHON" - "$ASPEN_RUN_DIR/ports.used" <<'EOF'
import fcntl, random, socket, sys
used_path = sys.argv[1]
with open(used_path, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    used = {int(x) for x in f.read().split() if x.isdigit()}
    try:
        lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except OSError:
        lo = 32768
    lo = max(lo, 2048)
    for _ in range(1000):
        port = random.randrange(max(1024, lo - 12000), lo)
        if port in used:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        f.write(f"{port}\n")
        print(port)
        sys.exit(0)
sys.exit("free_port: no free port found")
EOF
}

# _peers_wait_log PID FILE REGEX SECONDS: wait until FILE has a line matching
# the extended REGEX. Fails if PID exits first or time runs out.
_peers_wait_log() {
    local pid=$1 file=$2 re=$3 i n=$(( $4 * 10 ))
    for (( i = 0; i < n; i++ )); do
        grep -Eq -- "$re" "$file" 2>/dev/null && return 0
        _peers_alive "$pid" || { grep -Eq -- "$re" "$file" 2>/dev/null; return; }
        sleep 0.1
    done
    return 1
}

# --- backing server ---------------------------------------------------------

# start_backing [PORT]: start the backing server on PORT (default: a free
# one) and wait for it to listen. Sets and exports BACKING_PORT and
# BACKING_URI. Logs go to $ASPEN_RUN_DIR/backing.log (appended, so a restart
# on the same port keeps the earlier log). BACKING_ARGS adds arguments (e.g.
# "--replset rs0": a one-member replica set with sessions and transactions).
start_backing() {
    local port=${1:-}
    [[ -n $port && $port != 0 ]] || port=$(free_port) || return 1
    [[ -f $PEERS_JAR ]] || { peers_log "missing $PEERS_JAR: run scripts/install-deps.sh"; return 1; }
    if [[ -f $ASPEN_RUN_DIR/backing.pid ]] && _peers_alive "$(<"$ASPEN_RUN_DIR/backing.pid")"; then
        peers_log "a backing server is already running (pid $(<"$ASPEN_RUN_DIR/backing.pid"))"
        return 1
    fi
    local log=$ASPEN_RUN_DIR/backing.log attempt pid
    # The port can stay busy for a moment after the previous owner died.
    for attempt in 1 2 3 4 5; do
        local mark=0
        [[ -f $log ]] && mark=$(stat -c %s "$log")
        echo "=== start_backing --port $port (attempt $attempt) $(date -u +%FT%TZ)" >>"$log"
        # shellcheck disable=SC2086 # BACKING_ARGS: extra words, e.g. --replset rs0
        java -XX:+UseSerialGC -Xmx1g -jar "$PEERS_JAR" --host 127.0.0.1 --port "$port" \
            ${BACKING_ARGS:-} >>"$log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$ASPEN_RUN_DIR/backing.pid"
        _PEERS_STARTED+=(backing)
        if _peers_wait_log_from "$pid" "$log" "$mark" "^LISTENING $port\$" 30; then
            BACKING_PORT=$port
            BACKING_URI="mongodb://127.0.0.1:$port"
            export BACKING_PORT BACKING_URI
            peers_log "backing server pid $pid listening on $port"
            return 0
        fi
        _peers_kill backing
        _peers_forget backing
        wait "$pid" 2>/dev/null || true
        if tail -c +$((mark + 1)) "$log" | grep -q 'cannot bind'; then
            peers_log "backing port $port busy, retrying"
            sleep 1
            continue
        fi
        break
    done
    peers_log "backing server did not start; last lines of $log:"
    tail -n 20 "$log" >&2
    return 1
}

# Like _peers_wait_log, only looking at FILE after byte offset MARK.
_peers_wait_log_from() {
    local pid=$1 file=$2 mark=$3 re=$4 i n=$(( $5 * 10 ))
    for (( i = 0; i < n; i++ )); do
        tail -c +$((mark + 1)) "$file" 2>/dev/null | grep -Eq -- "$re" && return 0
        _peers_alive "$pid" || break
        sleep 0.1
    done
    tail -c +$((mark + 1)) "$file" 2>/dev/null | grep -Eq -- "$re" && _peers_alive "$pid"
}

# stop_backing: SIGTERM the backing server and wait for it.
stop_backing() {
    local pidfile=$ASPEN_RUN_DIR/backing.pid pid rc=0
    [[ -f $pidfile ]] || { peers_log "stop_backing: not running"; return 0; }
    pid=$(<"$pidfile")
    _peers_kill backing
    _peers_forget backing
    wait "$pid" 2>/dev/null || rc=$?
    # 143: killed by the SIGTERM before its handler was installed.
    [[ $rc -eq 0 || $rc -eq 143 ]] || { peers_log "backing server exited with $rc"; return 1; }
}

# kill_backing: SIGKILL the backing server (a crash, as seen by aspen).
kill_backing() {
    local pidfile=$ASPEN_RUN_DIR/backing.pid pid
    [[ -f $pidfile ]] || { peers_log "kill_backing: not running"; return 1; }
    pid=$(<"$pidfile")
    rm -f "$pidfile"
    _peers_forget backing
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    _peers_wait_gone "$pid" 10
}

# --- a TCP relay (the network between aspen and a peer) ----------------------

# start_relay PORT TARGET_PORT: relay 127.0.0.1:PORT to 127.0.0.1:TARGET_PORT
# (tcp_relay.py). stop_relay cuts every connection through it, as a network
# outage would; start_relay on the same PORT brings the network back.
# relay_cut_next_reply drops the next reply through it and closes that
# connection (the request reached the target, its answer never came back).
start_relay() {
    local port=$1 target=$2 log=$ASPEN_RUN_DIR/relay.log mark=0 pid attempt
    for attempt in 1 2 3 4 5; do
        [[ -f $log ]] && mark=$(stat -c %s "$log")
        "$PEERS_PYTHON" "$PEERS_ROOT/tests/e2e/tcp_relay.py" "$port" "127.0.0.1:$target" \
            >>"$log" 2>&1 </dev/null &
        pid=$!
        echo "$pid" >"$ASPEN_RUN_DIR/relay.pid"
        _PEERS_STARTED+=(relay)
        if _peers_wait_log_from "$pid" "$log" "$mark" "^RELAYING $port\$" 10; then
            peers_log "relay pid $pid: 127.0.0.1:$port -> $target (attempt $attempt)"
            return 0
        fi
        _peers_kill relay
        _peers_forget relay
        wait "$pid" 2>/dev/null || true
        sleep 1
    done
    peers_log "the relay did not start; last lines of $log:"
    tail -n 5 "$log" >&2
    return 1
}

stop_relay() { _peers_stop relay; }
relay_cut_next_reply() { kill -USR1 "$(<"$ASPEN_RUN_DIR/relay.pid")"; }

# --- an HTTP(S) peer ($https), moto (AWS Lambda, S3), Azurite (Azure Blob) ---

# _peers_start_logged NAME REGEX SECONDS CMD...: run CMD in the background,
# output to $ASPEN_RUN_DIR/NAME.log, until the log matches REGEX.
_peers_start_logged() {
    local name=$1 re=$2 secs=$3 log=$ASPEN_RUN_DIR/$1.log pid
    shift 3
    : >"$log"
    "$@" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$ASPEN_RUN_DIR/$name.pid"
    _PEERS_STARTED+=("$name")
    _peers_wait_log "$pid" "$log" "$re" "$secs" && return 0
    peers_log "$name did not start; its log:"
    tail -n 5 "$log" >&2
    return 1
}

# start_http_peer NAME PORT [--tls CERT KEY]: http_peer.py on 127.0.0.1:PORT
# (what it answers: its header); stop_http_peer NAME.
start_http_peer() {
    _peers_start_logged "$1" "^HTTP_PEER $2\$" 10 \
        "$PEERS_PYTHON" "$PEERS_ROOT/tests/e2e/http_peer.py" "${@:2}"
}

stop_http_peer() { _peers_stop "$1"; }

# _peers_wait_port PID PORT SECONDS: wait until 127.0.0.1:PORT accepts.
_peers_wait_port() {
    local pid=$1 port=$2 i n=$(( $3 * 10 ))
    for (( i = 0; i < n; i++ )); do
        _peers_alive "$pid" || return 1
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# _peers_start_server NAME PORT CMD...: start CMD (which listens on PORT)
# as NAME, logging to $ASPEN_RUN_DIR/NAME.log, and wait 30 s for the port.
_peers_start_server() {
    local name=$1 port=$2 log=$ASPEN_RUN_DIR/$1.log pid
    shift 2
    echo "=== start $name on $port $(date -u +%FT%TZ)" >>"$log"
    "$@" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$ASPEN_RUN_DIR/$name.pid"
    _PEERS_STARTED+=("$name")
    if _peers_wait_port "$pid" "$port" 30; then
        peers_log "$name pid $pid listening on $port"
        return 0
    fi
    peers_log "$name did not start; last lines of $log:"
    tail -n 20 "$log" >&2
    _peers_kill "$name"
    _peers_forget "$name"
    return 1
}

# start_moto NAME PORT: moto's server (the AWS APIs: Lambda's Invoke, S3, ...;
# in memory) as NAME on 127.0.0.1:PORT (several can run); stop_moto NAME.
# Extra environment (MOTO_ENV="K=V ...") goes to it:
# INITIAL_NO_AUTH_ACTION_COUNT=N makes it check credentials and signatures
# after N requests.
start_moto() {
    local bin=$PEERS_DEPS/venv/bin/moto_server
    [[ -x $bin ]] || { peers_log "missing $bin: run scripts/install-deps.sh"; return 1; }
    # shellcheck disable=SC2086
    _peers_start_server "$1" "$2" env ${MOTO_ENV:-} "$bin" -H 127.0.0.1 -p "$2"
}
stop_moto() { _peers_stop "$1" || true; }

# start_azurite PORT DIR: Azurite's blob service on PORT, data in DIR, with
# the well-known development account devstoreaccount1.
start_azurite() {
    local bin=$PEERS_DEPS/azurite/node_modules/.bin/azurite-blob
    [[ -x $bin ]] || { peers_log "missing $bin: run scripts/install-deps.sh"; return 1; }
    mkdir -p "$2"
    _peers_start_server azurite "$1" "$bin" --blobHost 127.0.0.1 --blobPort "$1" \
        --location "$2" --silent --skipApiVersionCheck --disableTelemetry
}
stop_azurite() { _peers_stop azurite || true; }
# The development account's well-known key (Azurite's, public).
AZURITE_ACCOUNT=devstoreaccount1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

# --- kinesalite (the Kinesis emulator) ---------------------------------------

# start_kinesalite: kinesalite (npm, in memory) on a free port of 127.0.0.1,
# started through tests/e2e/kinesis/kinesalite.js (its own CLI binds every
# interface). Sets and exports KINESIS_PORT and KINESIS_ENDPOINT
# (http://127.0.0.1:PORT). Any access key and secret are accepted.
start_kinesalite() {
    local dir=$PEERS_DEPS/kinesalite/node_modules
    [[ -d $dir/kinesalite ]] || { peers_log "missing $dir/kinesalite: run scripts/install-deps.sh"; return 1; }
    KINESIS_PORT=$(free_port) || return 1
    _peers_start_server kinesalite "$KINESIS_PORT" \
        node "$PEERS_ROOT/tests/e2e/kinesis/kinesalite.js" "$dir" "$KINESIS_PORT" || return 1
    KINESIS_ENDPOINT=http://127.0.0.1:$KINESIS_PORT
    export KINESIS_PORT KINESIS_ENDPOINT
}

stop_kinesalite() { _peers_stop kinesalite || true; }

# --- Apache Kafka -------------------------------------------------------------

PEERS_KAFKA_LIB=$PEERS_DEPS/kafka/lib
PEERS_KAFKA_CONF=$PEERS_ROOT/tests/e2e/kafka
# The one user of the broker's SASL_PLAINTEXT listener (test-only secret).
KAFKA_SASL_USER=aspen
KAFKA_SASL_PASSWORD=aspen-test-secret
export KAFKA_SASL_USER KAFKA_SASL_PASSWORD

_peers_kafka_tool() { # _peers_kafka_tool CLASS ARGS...: a Kafka CLI tool
    java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
        -Dlog4j2.configurationFile="$PEERS_KAFKA_CONF/log4j2-tools.properties" \
        -cp "$PEERS_KAFKA_LIB/*" "$@"
}

# start_kafka: start a single-node Apache Kafka (KRaft, broker and controller
# in one JVM) on two free ports and wait (60 s at most) for its "Kafka Server
# started" line. Sets and exports KAFKA_PORT and KAFKA_BOOTSTRAP
# (127.0.0.1:PORT), and KAFKA_SASL_BOOTSTRAP: a second listener, SASL_PLAINTEXT
# with mechanism PLAIN and one user, KAFKA_SASL_USER / KAFKA_SASL_PASSWORD
# (for authentication tests). Data and server.properties live in $ASPEN_RUN_DIR/kafka,
# the log is $ASPEN_RUN_DIR/kafka.log (appended). Calling it again after
# stop_kafka/kill_kafka restarts the same broker on the same ports with its
# data (a broker restart, as a client sees it); KAFKA_FRESH=1 starts over.
start_kafka() {
    local dir=$ASPEN_RUN_DIR/kafka log=$ASPEN_RUN_DIR/kafka.log pid mark=0
    [[ -d $PEERS_KAFKA_LIB ]] || { peers_log "missing $PEERS_KAFKA_LIB: run scripts/install-deps.sh"; return 1; }
    if [[ -f $ASPEN_RUN_DIR/kafka.pid ]] && _peers_alive "$(<"$ASPEN_RUN_DIR/kafka.pid")"; then
        peers_log "a Kafka broker is already running (pid $(<"$ASPEN_RUN_DIR/kafka.pid"))"
        return 1
    fi
    [[ ${KAFKA_FRESH:-0} == 1 ]] && rm -rf "$dir"
    if [[ ! -f $dir/server.properties ]]; then
        local port cport sport cluster
        port=$(free_port) && cport=$(free_port) && sport=$(free_port) || return 1
        mkdir -p "$dir"
        cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_PLAINTEXT://127.0.0.1:$sport
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$KAFKA_SASL_PASSWORD";
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
        echo "$port" >"$dir/port"
        echo "$sport" >"$dir/sasl_port"
        # Kafka's own Uuid.randomUuid() never hands out an id starting with
        # '-' (kafka-storage's -t would read it as an option): nor do we.
        cluster=$("$PEERS_PYTHON" -c 'import base64, uuid
while True:
    c = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not c.startswith("-"):
        print(c)
        break')
        echo "=== kafka-storage format $(date -u +%FT%TZ)" >>"$log"
        if ! _peers_kafka_tool kafka.tools.StorageTool format -t "$cluster" \
                -c "$dir/server.properties" >>"$log" 2>&1 </dev/null; then
            peers_log "formatting Kafka's storage failed; last lines of $log:"
            tail -n 20 "$log" >&2
            return 1
        fi
    fi
    [[ -f $log ]] && mark=$(stat -c %s "$log")
    echo "=== start_kafka $(date -u +%FT%TZ)" >>"$log"
    java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xms128m -Xmx512m \
        -Dlog4j2.configurationFile="$PEERS_KAFKA_CONF/log4j2.properties" \
        -cp "$PEERS_KAFKA_LIB/*" kafka.Kafka "$dir/server.properties" \
        >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$ASPEN_RUN_DIR/kafka.pid"
    _PEERS_STARTED+=(kafka)
    if _peers_wait_log_from "$pid" "$log" "$mark" 'Kafka Server started' 60; then
        KAFKA_PORT=$(<"$dir/port")
        KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
        KAFKA_SASL_BOOTSTRAP=127.0.0.1:$(<"$dir/sasl_port")
        export KAFKA_PORT KAFKA_BOOTSTRAP KAFKA_SASL_BOOTSTRAP
        peers_log "Kafka broker pid $pid listening on $KAFKA_PORT"
        return 0
    fi
    peers_log "Kafka did not start; last lines of $log:"
    tail -n 30 "$log" >&2
    _peers_kill kafka
    _peers_forget kafka
    wait "$pid" 2>/dev/null || true
    return 1
}

# stop_kafka: SIGTERM the broker (a clean shutdown) and wait for it.
stop_kafka() { _peers_stop kafka || true; }

# kill_kafka: SIGKILL the broker (a crash, as clients see it).
kill_kafka() {
    local pidfile=$ASPEN_RUN_DIR/kafka.pid pid
    [[ -f $pidfile ]] || { peers_log "kill_kafka: not running"; return 1; }
    pid=$(<"$pidfile")
    rm -f "$pidfile"
    _peers_forget kafka
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    _peers_wait_gone "$pid" 10
}

# kafka_create_topic TOPIC [PARTITIONS [ARGS...]]: create a topic on the test
# broker; ARGS go to Kafka's topic tool (e.g. --config max.message.bytes=N).
kafka_create_topic() {
    local topic=$1 parts=${2:-1}
    shift $(( $# < 2 ? $# : 2 ))
    _peers_kafka_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --create --topic "$topic" \
        --partitions "$parts" --replication-factor 1 "$@" </dev/null >/dev/null
}

# kafka_delete_topic TOPIC
kafka_delete_topic() {
    _peers_kafka_tool org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --delete --topic "$1" </dev/null >/dev/null
}

# kafka_produce TOPIC [--keyed] [ARGS...]: send stdin to TOPIC, one message a
# line, with Kafka's own console producer (Java, not librdkafka, so
# independent of aspen's client). --keyed reads KEY<TAB>VALUE lines; other
# ARGS go to the producer.
kafka_produce() {
    local topic=$1 args=()
    shift
    if [[ ${1:-} == --keyed ]]; then
        args+=(--property parse.key=true --property $'key.separator=\t')
        shift
    fi
    _peers_kafka_tool org.apache.kafka.tools.ConsoleProducer \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" \
        --producer-property acks=all ${args[@]+"${args[@]}"} "$@"
}

# kafka_consume TOPIC N [--keys] [--headers] [ARGS...]: print the first N
# messages of TOPIC (from the beginning) with Kafka's console consumer;
# fails if fewer than N arrive within 30 s. --keys prints KEY<TAB>VALUE,
# --headers puts the headers first.
kafka_consume() {
    local topic=$1 n=$2 args=()
    shift 2
    while [[ $# -gt 0 ]]; do
        case $1 in
            --keys) args+=(--property print.key=true) ;;
            --headers) args+=(--property print.headers=true) ;;
            *) args+=("$1") ;;
        esac
        shift
    done
    _peers_kafka_tool org.apache.kafka.tools.consumer.ConsoleConsumer \
        --bootstrap-server "$KAFKA_BOOTSTRAP" --topic "$topic" --from-beginning \
        --max-messages "$n" --timeout-ms 30000 ${args[@]+"${args[@]}"} </dev/null
}

# --- a Schema Registry (Apicurio Registry, Confluent-compatible API) ---------

# start_registry: run Apicurio Registry (built by scripts/install-deps.sh into
# .deps/apicurio; in-memory storage) on a free port and wait (90 s at most)
# for /health/ready. Sets and exports REGISTRY_URL, its Confluent-compatible
# API (http://127.0.0.1:PORT/apis/ccompat/v7), and REGISTRY_PORT. Log:
# $ASPEN_RUN_DIR/registry.log. start_registry PORT starts it on that port
# (again after stop_registry, for an outage). stop_registry stops it (its
# schemas are lost: in-memory).
start_registry() {
    local jar=$PEERS_DEPS/apicurio/aspen-test-registry-1-runner.jar
    local log=$ASPEN_RUN_DIR/registry.log port=${1-} pid i
    [[ -f $jar ]] || { peers_log "missing $jar: run scripts/install-deps.sh"; return 1; }
    [[ -n $port ]] || port=$(free_port) || return 1
    java -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xmx256m \
        -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
        -jar "$jar" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$ASPEN_RUN_DIR/registry.pid"
    _PEERS_STARTED+=(registry)
    for (( i = 0; i < 900; i++ )); do
        if curl -sf -o /dev/null "http://127.0.0.1:$port/health/ready"; then
            export REGISTRY_URL=http://127.0.0.1:$port/apis/ccompat/v7 REGISTRY_PORT=$port
            peers_log "registry pid $pid: $REGISTRY_URL"
            return 0
        fi
        _peers_alive "$pid" || break
        sleep 0.1
    done
    peers_log "the registry did not become ready; last lines of $log:"
    tail -n 5 "$log" >&2
    return 1
}

stop_registry() { _peers_stop registry; }

# --- aspen ------------------------------------------------------------------

# Sanitizer reports that fail a test when found in aspen's log.
PEERS_SANITIZER_RE='AddressSanitizer|LeakSanitizer|runtime error:|ThreadSanitizer|MemorySanitizer'

_peers_aspen_bin() {
    local bin=${ASPEN_BIN:-build/proxy/aspen}
    case $bin in /*) ;; *) bin=$PEERS_ROOT/$bin ;; esac
    printf '%s\n' "$bin"
}

# start_aspen ARGS...: run aspen with ARGS in the background, output (stdout
# and stderr) to $ASPEN_RUN_DIR/$ASPEN_INSTANCE.log, and wait up to 10 s for
# its "Waiting for connections" log line. Sets ASPEN_LISTEN_PORT to the port
# that line reports (so "--port 0" works).
start_aspen() {
    local name=${ASPEN_INSTANCE:-aspen} bin pid
    local log=$ASPEN_RUN_DIR/$name.log
    bin=$(_peers_aspen_bin)
    [[ -x $bin ]] || { peers_log "aspen binary not found: $bin"; return 1; }
    if [[ -f $ASPEN_RUN_DIR/$name.pid ]] && _peers_alive "$(<"$ASPEN_RUN_DIR/$name.pid")"; then
        peers_log "$name is already running"
        return 1
    fi
    : >"$log"
    peers_log "starting $name: $bin $*"
    "$bin" "$@" >>"$log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$ASPEN_RUN_DIR/$name.pid"
    _PEERS_STARTED+=("$name")
    if _peers_wait_log "$pid" "$log" '"msg": *"Waiting for connections"' 10 && _peers_alive "$pid"; then
        ASPEN_LISTEN_PORT=$(grep -E '"msg": *"Waiting for connections"' "$log" | head -n 1 |
            sed -nE 's/.*"port": *([0-9]+).*/\1/p')
        export ASPEN_LISTEN_PORT
        peers_log "$name pid $pid is ready on port ${ASPEN_LISTEN_PORT:-?}"
        return 0
    fi
    if _peers_alive "$pid"; then
        peers_log "$name did not log \"Waiting for connections\" within 10 s; its log:"
    else
        local st=0
        wait "$pid" || st=$?
        peers_log "$name exited with status $st before it was ready; its log:"
    fi
    tail -n 40 "$log" >&2
    _peers_kill "$name"
    _peers_forget "$name"
    wait "$pid" 2>/dev/null || true
    return 1
}

# check_aspen_log [NAME]: fail if aspen's log holds a sanitizer report.
check_aspen_log() {
    local name=${1:-${ASPEN_INSTANCE:-aspen}}
    local log=$ASPEN_RUN_DIR/$name.log
    if grep -Eq -- "$PEERS_SANITIZER_RE" "$log" 2>/dev/null; then
        peers_log "$name's log has a sanitizer report:"
        grep -E -A30 -- "$PEERS_SANITIZER_RE" "$log" | head -n 80 >&2
        return 1
    fi
}

# stop_aspen: SIGTERM aspen, wait for it to exit (10 s, then SIGKILL), and
# fail if its exit status is not 0 or its log has a sanitizer report.
stop_aspen() {
    local name=${ASPEN_INSTANCE:-aspen}
    local pidfile=$ASPEN_RUN_DIR/$name.pid pid rc=0
    [[ -f $pidfile ]] || { peers_log "stop_aspen: $name is not running"; return 1; }
    pid=$(<"$pidfile")
    rm -f "$pidfile"
    _peers_forget "$name"
    if ! _peers_alive "$pid"; then
        wait "$pid" 2>/dev/null || rc=$?
        peers_log "$name had already exited (status $rc)"
        [[ $rc -ne 0 ]] || rc=1
    else
        kill -TERM "$pid" 2>/dev/null || true
        if ! _peers_wait_gone "$pid" 10; then
            peers_log "$name did not exit within 10 s of SIGTERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || rc=$?
        [[ $rc -eq 0 ]] || peers_log "$name exited with status $rc after SIGTERM"
    fi
    check_aspen_log "$name" || rc=1
    [[ $rc -eq 0 ]] || { peers_log "last lines of $ASPEN_RUN_DIR/$name.log:"; tail -n 20 "$ASPEN_RUN_DIR/$name.log" >&2; }
    return "$rc"
}

# kill_aspen: SIGKILL aspen (a crash: no flush, no final checkpoint, no
# Kafka consumer close), reap it, and fail if its log has a sanitizer report.
kill_aspen() {
    local name=${ASPEN_INSTANCE:-aspen}
    local pidfile=$ASPEN_RUN_DIR/$name.pid pid
    [[ -f $pidfile ]] || { peers_log "kill_aspen: $name is not running"; return 1; }
    pid=$(<"$pidfile")
    rm -f "$pidfile"
    _peers_forget "$name"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    check_aspen_log "$name"
}

# --- mongosh ----------------------------------------------------------------

# mongosh_run URI ARGS...: run mongosh 2.12 (--quiet --norc) against URI and
# return its exit status. Each ARG is a mongosh option (with its value, for
# the options that take one), a .js file that exists (run as a script), or
# else JavaScript to --eval. MONGOSH_EXTRA (array) adds more options.
mongosh_run() {
    local uri=$1 a
    shift
    [[ -x $PEERS_MONGOSH ]] || { peers_log "missing $PEERS_MONGOSH: run scripts/install-deps.sh"; return 1; }
    local args=() files=()
    while [[ $# -gt 0 ]]; do
        a=$1
        shift
        case $a in
            --tlsCAFile|--tlsCertificateKeyFile|--tlsCertificateKeyFilePassword|\
            --tlsCRLFile|--username|-u|--password|-p|--authenticationDatabase|\
            --authenticationMechanism|--eval|--file|-f|--apiVersion|--host|--port)
                args+=("$a" "${1-}")
                shift || true ;;
            -*) args+=("$a") ;;
            *)
                if [[ -f $a ]]; then files+=("$a"); else args+=(--eval "$a"); fi ;;
        esac
    done
    local home=$ASPEN_RUN_DIR/mongosh-home
    mkdir -p "$home"
    HOME=$home MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING=1 \
        timeout -k 5 "${MONGOSH_TIMEOUT:-120}" \
        "$PEERS_MONGOSH" --quiet --norc ${MONGOSH_EXTRA[@]+"${MONGOSH_EXTRA[@]}"} \
        ${args[@]+"${args[@]}"} "$uri" ${files[@]+"${files[@]}"} </dev/null
}

# mongosh_raw ARGS...: mongosh without --quiet/--norc defaults (same HOME and
# timeout), for tests of what a user sees.
mongosh_raw() {
    local home=$ASPEN_RUN_DIR/mongosh-home
    mkdir -p "$home"
    HOME=$home MONGOSH_FORCE_DISABLE_TELEMETRY_FOR_TESTING=1 \
        timeout -k 5 "${MONGOSH_TIMEOUT:-120}" "$PEERS_MONGOSH" "$@" </dev/null
}

# --- TAP checks shared by the e2e scripts -------------------------------------

# check NAME CMD...: run one check and print its TAP line.
N=0
FAILED=0
check() {
    local name=$1
    shift
    N=$((N + 1))
    if "$@"; then
        echo "ok $N - $name"
    else
        echo "not ok $N - $name"
        FAILED=$((FAILED + 1))
    fi
}

# must NAME CMD...: a check without which the rest cannot run.
must() {
    local before=$FAILED
    check "$@"
    [[ $FAILED -eq $before ]] || { echo "# stopping: '$1' failed"; echo "1..$N"; exit 1; }
}

# checks_done: the TAP plan and the exit status (non-zero if any failed).
checks_done() {
    echo "1..$N"
    if [[ $FAILED -ne 0 ]]; then
        echo "# $FAILED of $N checks failed (logs in $ASPEN_RUN_DIR)"
        exit 1
    fi
    echo "# all $N checks passed"
}
