#!/usr/bin/env bash
# Peak anonymous memory of one chainmail node while concurrent clients send
# large messages: RssAnon from /proc/PID/status (bbolt's file-backed mmap
# pages and the page cache of spool files do not count), sampled every
# 10 ms. Target (issue 2): at most 100 MB for 4 clients sending 50 MB
# messages. See docs/BENCHMARKS.md.
#
# Usage: bench/memory.sh
# Knobs (environment): CLIENTS=4, MESSAGES=1 (per client), SIZE=52428800
# (bytes of payload), PORT_BASE=12520 (+5 SMTP, +8 API on 127.0.0.1),
# KEEP=1 keeps the temporary directory, CHAINMAIL_BIN=path measures that
# binary instead of building one.
set -euo pipefail

CLIENTS=${CLIENTS:-4}
MESSAGES=${MESSAGES:-1}
SIZE=${SIZE:-52428800}
PORT_BASE=${PORT_BASE:-12520}
CM_ADDR=127.0.0.1:$((PORT_BASE + 5))
CM_WEB=127.0.0.1:$((PORT_BASE + 8))
TOKEN=bench-token-0123456789

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
TMP=$(mktemp -d /tmp/chainmail-mem.XXXXXX)
log() { printf '%s\n' "$*" >&2; }
PIDS=()

cleanup() {
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "${KEEP:-}" = 1 ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

install_postfix
build_chainmail "$TMP/chainmail"
cat >"$TMP/node.yaml" <<CF
node: bench
data_dir: $TMP/chainmail-data
listeners: [{name: journal, address: $CM_ADDR, max_sessions: 500, max_sessions_per_ip: 500}]
routes: [{name: journal, from: [journal], actions: [archive]}]
web: {address: $CM_WEB, api_tokens: ["$TOKEN"]}
log: {level: warn, format: json}
CF
"$TMP/chainmail" serve -c "$TMP/node.yaml" >"$TMP/chainmail.log" 2>&1 &
CM=$!
PIDS+=("$CM")
for _ in $(seq 100); do (exec 3<>"/dev/tcp/${CM_ADDR%:*}/${CM_ADDR##*:}") 2>/dev/null && break; sleep 0.1; done

rss_anon() { # kB, read without forking
	local k v _
	while read -r k v _; do
		[ "$k" = RssAnon: ] && { echo "$v"; return; }
	done <"/proc/$CM/status"
}

idle=$(rss_anon)
t0=$(date +%s.%N)
timeout 600 smtp-source -s "$CLIENTS" -m $((CLIENTS * MESSAGES)) -l "$SIZE" "$CM_ADDR" >"$TMP/source.log" 2>&1 &
SRC=$!
PIDS+=("$SRC")
peak=0 samples=0
while kill -0 "$SRC" 2>/dev/null; do
	v=$(rss_anon)
	((v > peak)) && peak=$v
	samples=$((samples + 1))
	sleep 0.01
done
wait "$SRC" || { echo "smtp-source failed:" >&2; cat "$TMP/source.log" >&2; exit 1; }
t1=$(date +%s.%N)
hwm=$(awk '/VmHWM/{print $2}' "/proc/$CM/status")
count=$(curl -s -H "Authorization: Bearer $TOKEN" "http://$CM_WEB/api/v1/archive/digest" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')

printf '%d clients x %d message(s) of %d bytes in %.1f s; archived %s of %d\n' \
	"$CLIENTS" "$MESSAGES" "$SIZE" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$count" $((CLIENTS * MESSAGES))
printf 'RssAnon: %d MiB idle, peak %d MiB over %d samples (target <= 100 MB); VmHWM (all resident, file pages too) %d MiB\n' \
	$((idle / 1024)) $((peak / 1024)) "$samples" $((hwm / 1024))
[ "$count" = $((CLIENTS * MESSAGES)) ] || { echo "archive count mismatch" >&2; exit 1; }
