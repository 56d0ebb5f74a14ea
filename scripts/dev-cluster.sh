#!/usr/bin/env bash
# dev-cluster.sh N [DIR]: run an N-node o2tools cluster on this machine, in
# the foreground, for trying and debugging the multi-node lock manager.
#
# Nodes node1..nodeN listen on 127.0.0.1..127.0.0.N (all of 127/8 is
# loopback on Linux), port $DEV_CLUSTER_PORT (7777), and heartbeat on one
# global region, a file in DIR formatted with `hb_ctl format`. DIR (default:
# a new temporary directory, removed at the end) receives cluster.conf
# (written by o2cb), lockd.toml, heartbeat.img, nodeK.sock and nodeK.log.
# Ctrl-C or SIGTERM stops every lockd the script started and exits 0.
#
# Binaries: $O2TOOLS_BIN if set, else the cargo release directory of the
# checkout this script is in, else $PATH.
#
# Exit status: 0 after Ctrl-C/SIGTERM, 1 when the cluster cannot start or
# every lockd has exited, 2 on usage errors.
set -euo pipefail

readonly MAX_NODES=16
readonly CLUSTER=devcluster
prog=${0##*/}

usage() {
    cat <<EOF
usage: $prog N [DIR]

Starts lockd for nodes node1..nodeN (N = 1..$MAX_NODES) on 127.0.0.1..127.0.0.N,
port \$DEV_CLUSTER_PORT (default 7777), with cluster.conf, settings, sockets
and logs in DIR (default: a new temporary directory, removed on exit).
Stays in the foreground; Ctrl-C stops the cluster.

Environment: O2TOOLS_BIN (directory of lockd, dlmctl, o2cb, hb_ctl),
DEV_CLUSTER_PORT (the port every node listens on).
EOF
}

die_usage() {
    printf '%s: %s\n' "$prog" "$1" >&2
    printf 'usage: %s N [DIR]   (N = 1..%d; --help for more)\n' "$prog" "$MAX_NODES" >&2
    exit 2
}

case ${1:-} in
-h | --help)
    usage
    exit 0
    ;;
esac
[[ $# -ge 1 && $# -le 2 ]] || die_usage "expected the number of nodes and an optional directory"
[[ $1 =~ ^[0-9]+$ ]] || die_usage "'$1' is not a number of nodes"
# 10# so that 08 is eight, not a bad octal number; the length check keeps
# the arithmetic from overflowing.
if [[ ${#1} -gt 3 ]] || ((10#$1 < 1 || 10#$1 > MAX_NODES)); then
    die_usage "the number of nodes must be 1 to $MAX_NODES, not $1"
fi
nodes=$((10#$1))
port=${DEV_CLUSTER_PORT:-7777}
if ! [[ $port =~ ^[0-9]+$ ]] || [[ ${#port} -gt 5 ]] || ((10#$port < 1 || 10#$port > 65535)); then
    die_usage "DEV_CLUSTER_PORT must be a port number (1-65535), not '$port'"
fi
port=$((10#$port))

# --- binaries -------------------------------------------------------------
script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
find_bindir() {
    if [[ -n ${O2TOOLS_BIN:-} ]]; then
        printf '%s\n' "$O2TOOLS_BIN"
        return
    fi
    local d
    for d in "$script_dir/../target/x86_64-unknown-linux-gnu/release" "$script_dir/../target/release"; do
        if [[ -x $d/lockd && -x $d/dlmctl && -x $d/o2cb && -x $d/hb_ctl ]]; then
            (cd -- "$d" && pwd -P)
            return
        fi
    done
    printf '\n'
}
bindir=$(find_bindir)
tool() {
    if [[ -n $bindir ]]; then
        if [[ -x $bindir/$1 ]]; then
            printf '%s\n' "$bindir/$1"
            return 0
        fi
        printf '%s: %s not found in %s\n' "$prog" "$1" "$bindir" >&2
        return 1
    fi
    if command -v -- "$1" >/dev/null 2>&1; then
        command -v -- "$1"
        return 0
    fi
    printf '%s: %s not found: build with "cargo build --release" or set O2TOOLS_BIN\n' "$prog" "$1" >&2
    return 1
}
LOCKD=$(tool lockd) || exit 1
DLMCTL=$(tool dlmctl) || exit 1
O2CB=$(tool o2cb) || exit 1
HB_CTL=$(tool hb_ctl) || exit 1

# --- the directory ----------------------------------------------------------
created_dir=
if [[ $# -eq 2 ]]; then
    mkdir -p -- "$2"
    dir=$(cd -- "$2" && pwd -P)
else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/o2tools-dev-cluster.XXXXXX")
    created_dir=$dir
fi

pids=()
sleeper=

# Stops every lockd this script started (SIGTERM, then SIGKILL after 10 s),
# reaps them, and removes the directory if this script made it.
cleanup() {
    local pid i alive
    trap '' INT TERM
    trap - EXIT
    if [[ -n $sleeper ]]; then
        kill -TERM "$sleeper" 2>/dev/null || true
        wait "$sleeper" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 100; i++)); do
        alive=0
        for pid in "${pids[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then
                alive=1
            fi
        done
        ((alive)) || break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            printf '%s: lockd pid %s did not stop on SIGTERM; killing it\n' "$prog" "$pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $created_dir ]]; then
        rm -rf -- "$created_dir"
    fi
}

on_signal() {
    printf '\n%s: SIG%s: stopping the cluster\n' "$prog" "$1" >&2
    cleanup
    exit 0
}
trap 'cleanup' EXIT
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

fail() {
    printf '%s: %s\n' "$prog" "$1" >&2
    exit 1
}

# --- configuration ------------------------------------------------------------
conf=$dir/cluster.conf
settings=$dir/lockd.toml
region=$dir/heartbeat.img
rm -f -- "$conf" "$region"
export O2CB_CONFIG_FILE=$conf
"$O2CB" add-cluster "$CLUSTER" || fail "o2cb add-cluster failed"
for ((k = 1; k <= nodes; k++)); do
    "$O2CB" add-node "$CLUSTER" "node$k" --ip "127.0.0.$k" --port "$port" --number "$k" ||
        fail "o2cb add-node node$k failed"
done
# 1 MiB holds the 255 slots of 512 bytes that hb_ctl formats by default.
truncate -s 1M -- "$region"
"$HB_CTL" format --no-autostart "$region" >/dev/null || fail "hb_ctl format $region failed"
"$O2CB" add-heartbeat "$CLUSTER" "$region" || fail "o2cb add-heartbeat failed"
"$O2CB" heartbeat-mode "$CLUSTER" global || fail "o2cb heartbeat-mode failed"
cat >"$settings" <<'EOF'
# lockd settings for a development cluster: fast heartbeat, quick reconnects.
[heartbeat]
interval_ms = 1000
dead_threshold = 10
[network]
idle_timeout_ms = 10000
keepalive_delay_ms = 1000
reconnect_delay_ms = 500
EOF

# --- start ----------------------------------------------------------------------
for ((k = 1; k <= nodes; k++)); do
    sock=$dir/node$k.sock
    log=$dir/node$k.log
    : >"$log"
    "$LOCKD" --socket "$sock" --settings "$settings" --config "$conf" \
        --cluster "$CLUSTER" --node "node$k" </dev/null >>"$log" 2>&1 &
    pids+=("$!")
done

# Waits until every lockd answers on its socket (30 s at most).
for ((k = 1; k <= nodes; k++)); do
    pid=${pids[k - 1]}
    ready=
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            status=0
            wait "$pid" || status=$?
            printf '%s: lockd of node%d exited with status %d; the end of %s:\n' \
                "$prog" "$k" "$status" "$dir/node$k.log" >&2
            tail -n 20 -- "$dir/node$k.log" >&2 || true
            exit 1
        fi
        if "$DLMCTL" --socket "$dir/node$k.sock" --no-autostart status >/dev/null 2>&1; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -z $ready ]]; then
        printf '%s: lockd of node%d does not answer on %s; the end of its log:\n' \
            "$prog" "$k" "$dir/node$k.sock" >&2
        tail -n 20 -- "$dir/node$k.log" >&2 || true
        exit 1
    fi
done

# --- tell --------------------------------------------------------------------------
dlmctl_name=dlmctl
if [[ $(command -v dlmctl 2>/dev/null || true) != "$DLMCTL" ]]; then
    dlmctl_name=$DLMCTL
fi
printf 'o2tools dev cluster "%s": %d node(s), port %d, in %s\n' "$CLUSTER" "$nodes" "$port" "$dir"
for ((k = 1; k <= nodes; k++)); do
    printf 'node%d: LOCKD_SOCKET=%q %s ...   # lockd pid %d, log %q\n' \
        "$k" "$dir/node$k.sock" "$dlmctl_name" "${pids[k - 1]}" "$dir/node$k.log"
done
cat <<EOF

Try (the first lock of a domain waits a few seconds for the nodes to settle):
  LOCKD_SOCKET=$(printf '%q' "$dir/node1.sock") $dlmctl_name lock --ex demo r1 -- sleep 30 &
  LOCKD_SOCKET=$(printf '%q' "$dir/node2.sock") $dlmctl_name lock -n demo r1 -- true   # busy: exit 75
  LOCKD_SOCKET=$(printf '%q' "$dir/node2.sock") $dlmctl_name status    # nodes, connections, counters
  O2CB_CONFIG_FILE=$(printf '%q' "$conf") $(printf '%q' "$O2CB") list-cluster $CLUSTER
Kill a node's lockd (kill -9 PID) to watch the others notice; Ctrl-C stops the cluster.
EOF
if [[ -n $created_dir ]]; then
    printf '%s is removed when the cluster stops.\n' "$dir"
fi

# --- stay in the foreground --------------------------------------------------------
# Reports a lockd that exits on its own; ends when none is left.
declare -A reported=()
while :; do
    left=0
    for ((k = 1; k <= nodes; k++)); do
        pid=${pids[k - 1]}
        if kill -0 "$pid" 2>/dev/null; then
            left=$((left + 1))
        elif [[ -z ${reported[$k]:-} ]]; then
            reported[$k]=1
            status=0
            wait "$pid" || status=$?
            printf '%s: lockd of node%d (pid %d) exited with status %d; see %s\n' \
                "$prog" "$k" "$pid" "$status" "$dir/node$k.log" >&2
        fi
    done
    if ((left == 0)); then
        fail "every lockd has exited"
    fi
    # A background sleep and `wait` so that a signal is handled at once.
    sleep 1 &
    sleeper=$!
    wait "$sleeper" || true
    sleeper=
done
