#!/usr/bin/env bash
# Replication benchmark of a two-node chain, a → b, on loopback: catch-up
# of a backlog against b's own ingest rate, replication lag at half of a's
# maximum ingest rate, and a's anonymous memory while the backlog is queued.
# See docs/BENCHMARKS.md, "Replication (HA)", for what it measures and the
# figures.
#
# Usage: bench/ha.sh              (from the repository root or anywhere)
# Phases:
#   1. b alone, fresh data directory: smtp-source, SESSIONS sessions reusing
#      their connections, INGEST_N messages of SIZE bytes: b's ingest rate.
#      b is then stopped and its data removed.
#   2. a with its connection to b's ha listener, b down: N messages into a
#      (same client); a's RssAnon sampled every 100 ms from start to end;
#      waits for queue_depth = N.
#   3. b started fresh: time from b's listeners answering until a's
#      queue_depth is 0 and both digests are equal: catch-up msgs/s, and
#      its ratio to phase 1; also the rate from the first probe that found
#      b (a's connection probes every 500 ms while b is down) to the empty
#      queue, and each node's CPU time per message over the drain.
#   4. b restarted with log level info (its "message accepted" lines time
#      each message's 250). a's maximum ingest with forwarding on
#      (smtp-source, MAX_N messages), then, once the queue is empty,
#      bench/haload offers messages at half that rate for LAG_DURATION over
#      LAG_SESSIONS sessions; per-message lag = b's 250 − a's receipt
#      (haload lag), beside the interpolated chainmail_replication_lag_seconds
#      histogram of the same interval. Digests are compared at the end.
# Phases 1-3 run REPEAT times (fresh data every round; medians and every
# round's figures are printed), phase 4 once, on the last round's nodes.
# Knobs (environment):
#   N=100000 INGEST_N=$N MAX_N=30000 SIZE=10240 SESSIONS=32 REPEAT=1
#   LAG_DURATION=30 LAG_SESSIONS=16 LAG_RATE=  (msgs/s; default half of
#   the measured maximum)
#   CONCURRENCY=   the connection's concurrency (default: chainmail's)
#   LAG=0          stop after phase 3 (catch-up and memory only)
#   WAIT_LOAD=1.0  wait (at most 120 s) for the 1-minute load average to
#                  drop below this before starting; 0 skips the wait
#   PROFILE_DIR=   write CPU profiles into this dir: b's per phase and
#                  round (ingest-R, catchup-R, lag), a's of its whole last
#                  round (a)
#   KEEP=1         keep the temporary directory (configs, logs, data)
#   CHAINMAIL_BIN= a chainmail binary to measure instead of building one
#   PORT_BASE=12620  ports +0..+5 (a journal, a ha, a web, b journal, b ha,
#                  b web), all on 127.0.0.1
set -euo pipefail

N=${N:-100000}
REPEAT=${REPEAT:-1}
INGEST_N=${INGEST_N:-$N}
MAX_N=${MAX_N:-30000}
SIZE=${SIZE:-10240}
SESSIONS=${SESSIONS:-32}
LAG_DURATION=${LAG_DURATION:-30}
LAG_SESSIONS=${LAG_SESSIONS:-16}
LAG_RATE=${LAG_RATE:-}
CONCURRENCY=${CONCURRENCY:-}
WAIT_LOAD=${WAIT_LOAD:-1.0}
PROFILE_DIR=${PROFILE_DIR:-}
PORT_BASE=${PORT_BASE:-12620}
A_J=127.0.0.1:$((PORT_BASE + 0))
A_HA=127.0.0.1:$((PORT_BASE + 1))
A_WEB=127.0.0.1:$((PORT_BASE + 2))
B_J=127.0.0.1:$((PORT_BASE + 3))
B_HA=127.0.0.1:$((PORT_BASE + 4))
B_WEB=127.0.0.1:$((PORT_BASE + 5))
TOKEN=bench-token-0123456789
RUN_TIMEOUT=600   # seconds, for any one client run
DRAIN_TIMEOUT=900 # seconds, for any wait on a queue

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
TMP=$(mktemp -d /tmp/chainmail-ha.XXXXXX)
PIDS=() # every process started, stopped in cleanup
A_PID="" B_PID="" SAMPLER=""

log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

stop_pid() { # PID: TERM, wait up to 10 s, then KILL
	local pid=$1
	[ -n "$pid" ] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	set +e
	for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
	if [ "${KEEP:-}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ----------------------------------------------------------------

install_postfix
build_chainmail "$TMP/chainmail"
(cd "$ROOT" && go build -o "$TMP/haload" ./bench/haload)


api() { curl -sf -m 10 -H "Authorization: Bearer $TOKEN" "http://$1$2"; }
depth() { api "$A_WEB" /api/v1/connections | sed -n 's/.*"queue_depth":\([0-9]*\).*/\1/p'; }
digest() { api "$1" /api/v1/archive/digest; }
count_of() { digest "$1" | sed -n 's/.*"count":\([0-9]*\).*/\1/p'; }
now() { date +%s.%N; }
cpu_s() { # PID: user+system seconds so far
	awk '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100}' "/proc/$1/stat"
}
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN{printf "%.0f", n/(b-a)}'; }

# --- the nodes --------------------------------------------------------------

conc=""
[ -n "$CONCURRENCY" ] && conc=", concurrency: $CONCURRENCY"
cat >"$TMP/a.yaml" <<CF
node: a
data_dir: $TMP/a
listeners:
  - {name: journal, address: $A_J, max_sessions: 500, max_sessions_per_ip: 500}
  - {name: ha, address: $A_HA, role: ha, allow: [127.0.0.0/8]}
connections:
  - {name: peer-b, address: $B_HA, probe_interval: 500ms$conc}
routes:
  - {name: journal, from: [journal], actions: [archive, forward:peer-b]}
  - {name: ha-in, from: [ha], actions: [archive]}
web: {address: $A_WEB, api_tokens: ["$TOKEN"]}
log: {level: warn, format: json}
CF

b_config() { # DATA_DIR LOG_LEVEL
	cat >"$TMP/b.yaml" <<-CF
		node: b
		data_dir: $1
		listeners:
		  - {name: journal, address: $B_J, max_sessions: 500, max_sessions_per_ip: 500}
		  - {name: ha, address: $B_HA, role: ha, allow: [127.0.0.0/8], max_sessions: 500, max_sessions_per_ip: 500}
		routes:
		  - {name: journal, from: [journal], actions: [archive]}
		  - {name: ha-in, from: [ha], actions: [archive]}
		web: {address: $B_WEB, api_tokens: ["$TOKEN"]}
		log: {level: $2, format: json}
	CF
}

prof() { [ -n "$PROFILE_DIR" ] && echo "$PROFILE_DIR/$1.pprof" || true; }

start_a() {
	CHAINMAIL_CPUPROFILE=$(prof a) "$TMP/chainmail" serve -c "$TMP/a.yaml" >>"$TMP/a.log" 2>&1 &
	A_PID=$!
	PIDS+=("$A_PID")
	wait_port "$A_J"
	wait_port "$A_WEB"
}

start_b() { # DATA_DIR LOG_LEVEL PROFILE_NAME
	b_config "$1" "$2"
	CHAINMAIL_CPUPROFILE=$(prof "$3") "$TMP/chainmail" serve -c "$TMP/b.yaml" >>"$TMP/b-$3.log" 2>&1 &
	B_PID=$!
	PIDS+=("$B_PID")
	wait_port "$B_HA"
	wait_port "$B_WEB"
}

stop_b() { stop_pid "$B_PID"; B_PID=""; }

# source ADDR MESSAGES: smtp-source, SESSIONS sessions reusing their
# connections; sets T0 and T1.
source_run() {
	T0=$(now)
	if ! timeout "$RUN_TIMEOUT" smtp-source -d -s "$SESSIONS" -m "$2" -l "$SIZE" "$1" >>"$TMP/source.log" 2>&1; then
		log "smtp-source into $1 failed:"
		tail -5 "$TMP/source.log" >&2
		exit 1
	fi
	T1=$(now)
}

wait_until() { # WHAT CMD...: polls every 0.2 s, at most DRAIN_TIMEOUT
	local what=$1
	shift
	local deadline=$(($(date +%s) + DRAIN_TIMEOUT))
	until "$@"; do
		if [ "$(date +%s)" -gt "$deadline" ]; then
			log "gave up waiting for $what after ${DRAIN_TIMEOUT}s"
			exit 1
		fi
		sleep 0.2
	done
}
depth_is() { [ "$(depth)" = "$1" ]; }
digests_equal() {
	local da db
	da=$(digest "$A_WEB") && db=$(digest "$B_WEB") && [ -n "$da" ] && [ "$da" = "$db" ]
}

# RssAnon of a in kB, sampled every 100 ms into rss.tsv as "unix-time kB".
rss_now() { awk '/^RssAnon:/{print $2}' "/proc/$A_PID/status"; }
start_sampler() {
	(
		while kill -0 "$A_PID" 2>/dev/null; do
			while read -r k v _; do
				[ "$k" = RssAnon: ] && { printf '%s %s\n' "$EPOCHREALTIME" "$v"; break; }
			done <"/proc/$A_PID/status" || true
			sleep 0.1
		done
	) >"$TMP/rss.tsv" 2>/dev/null &
	SAMPLER=$!
	PIDS+=("$SAMPLER")
}
rss_peak() { # FROM TO (unix times): MiB
	awk -v a="$1" -v b="$2" '$1 >= a && $1 <= b && $2 > m {m = $2} END {printf "%.0f", m/1024}' "$TMP/rss.tsv"
}

# lag_hist FILE_BEFORE FILE_AFTER Q: the quantile of the lag histogram's
# increase, interpolated linearly inside its bucket (histogram_quantile).
lag_hist() {
	awk -v q="$3" '
		/^chainmail_replication_lag_seconds_bucket/ {
			match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
			if (FILENAME == ARGV[1]) before[le] = $NF; else { after[le] = $NF; order[++n] = le }
		}
		END {
			total = after["+Inf"] - before["+Inf"]
			if (total <= 0) { print "-"; exit }
			rank = q * total; prev = 0; lo = 0
			for (i = 1; i <= n; i++) {
				le = order[i]; c = after[le] - before[le]
				if (c >= rank) {
					if (le == "+Inf") { printf ">%.0f", lo * 1000; exit }
					printf "%.1f", 1000 * (lo + (le - lo) * (rank - prev) / (c - prev)); exit
				}
				prev = c; lo = le
			}
		}' "$1" "$2"
}

# --- main -----------------------------------------------------------------

median() { # [printf format]: the median of the numbers on stdin
	tr ' ' '\n' | { grep . || true; } | sort -n |
		awk -v f="${1:-%.0f}" '{v[NR]=$1} END{if (NR == 0) exit; printf f "\n", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'
}
maxof() { tr ' ' '\n' | { grep . || true; } | sort -n | tail -1; }

# state: a's connection state ("down", "catching-up", "up").
state() { api "$A_WEB" /api/v1/connections | sed -n 's/.*"state":"\([a-z-]*\)".*/\1/p'; }

log "work directory $TMP"
wait_load
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

R_INGEST="" R_QUEUE="" R_CATCHUP="" R_SENDING="" R_RATIO="" R_CPU_A="" R_CPU_B=""
R_RSS_IDLE="" R_RSS_LOAD="" R_RSS_QUEUED="" R_RSS_DRAIN="" R_TIMES=""
for round in $(seq "$REPEAT"); do
	log "round $round of $REPEAT, phase 1: b's single-node ingest, $INGEST_N messages of $SIZE bytes, $SESSIONS sessions"
	start_b "$TMP/b-ingest" warn "ingest-$round"
	source_run "$B_J" "$INGEST_N"
	B_INGEST=$(rate "$INGEST_N" "$T0" "$T1")
	got=$(count_of "$B_WEB")
	[ "$got" = "$INGEST_N" ] || { log "b archived $got of $INGEST_N"; exit 1; }
	stop_b
	rm -rf "$TMP/b-ingest"
	log "b ingest: $B_INGEST msg/s"

	log "round $round, phase 2: $N messages into a, b down"
	rm -rf "$TMP/a"
	start_a
	start_sampler
	sleep 1
	RSS_IDLE=$(($(rss_now) / 1024))
	P2_0=$EPOCHREALTIME
	source_run "$A_J" "$N"
	A_QUEUE_RATE=$(rate "$N" "$T0" "$T1")
	wait_until "a's queue to hold $N" depth_is "$N"
	sleep 5 # a at rest with the backlog queued
	RSS_QUEUED=$(($(rss_now) / 1024))
	P2_1=$EPOCHREALTIME
	RSS_LOAD_PEAK=$(rss_peak "$P2_0" "$P2_1")
	log "a took $N at $A_QUEUE_RATE msg/s; RssAnon idle $RSS_IDLE MiB, peak $RSS_LOAD_PEAK MiB, queued $RSS_QUEUED MiB"

	log "round $round, phase 3: b starts fresh; catch-up"
	rm -rf "$TMP/b"
	start_b "$TMP/b" warn "catchup-$round"
	C0=$(now)
	CPU_A0=$(cpu_s "$A_PID") CPU_B0=$(cpu_s "$B_PID")
	P3_0=$EPOCHREALTIME
	# The connection is probed every probe_interval while down: note
	# when it starts sending, then wait for the queue to empty.
	C_UP=""
	deadline=$(($(date +%s) + DRAIN_TIMEOUT))
	while :; do
		st=$(state) d=$(depth)
		[ -z "$C_UP" ] && [ -n "$st" ] && [ "$st" != down ] && C_UP=$(now)
		[ "$d" = 0 ] && break
		[ "$(date +%s)" -gt "$deadline" ] && { log "gave up waiting for a's queue to drain"; exit 1; }
		sleep 0.1
	done
	C_DRAINED=$(now)
	[ -n "$C_UP" ] || C_UP=$C0
	CPU_A=$(awk -v a="$CPU_A0" -v b="$(cpu_s "$A_PID")" -v n="$N" 'BEGIN{printf "%.0f", 1e6*(b-a)/n}')
	CPU_B=$(awk -v a="$CPU_B0" -v b="$(cpu_s "$B_PID")" -v n="$N" 'BEGIN{printf "%.0f", 1e6*(b-a)/n}')
	wait_until "digests to be equal" digests_equal
	C1=$(now)
	P3_1=$EPOCHREALTIME
	CATCHUP=$(rate "$N" "$C0" "$C1")
	SENDING=$(rate "$N" "$C_UP" "$C_DRAINED")
	RSS_DRAIN_PEAK=$(rss_peak "$P3_0" "$P3_1")
	CATCHUP_S=$(awk -v a="$C0" -v b="$C1" 'BEGIN{printf "%.1f", b-a}')
	UP_S=$(awk -v a="$C0" -v b="$C_UP" 'BEGIN{printf "%.1f", b-a}')
	RATIO=$(awk -v a="$CATCHUP" -v b="$B_INGEST" 'BEGIN{printf "%.0f", 100*a/b}')
	log "catch-up: $N in ${CATCHUP_S}s (sending from ${UP_S}s): $CATCHUP msg/s ($SENDING while sending), ${RATIO}% of b's ingest; CPU per message a $CPU_A µs, b $CPU_B µs; RssAnon peak while draining $RSS_DRAIN_PEAK MiB"

	R_INGEST+=" $B_INGEST" R_QUEUE+=" $A_QUEUE_RATE" R_CATCHUP+=" $CATCHUP" R_SENDING+=" $SENDING" R_RATIO+=" $RATIO"
	R_CPU_A+=" $CPU_A" R_CPU_B+=" $CPU_B" R_RSS_IDLE+=" $RSS_IDLE" R_RSS_LOAD+=" $RSS_LOAD_PEAK"
	R_RSS_QUEUED+=" $RSS_QUEUED" R_RSS_DRAIN+=" $RSS_DRAIN_PEAK" R_TIMES+=" $CATCHUP_S"
	if [ "$round" -lt "$REPEAT" ]; then
		stop_b
		stop_pid "$SAMPLER"
		stop_pid "$A_PID"
		rm -rf "$TMP/a" "$TMP/b"
	fi
done
RSS_MAX=$(echo "$R_RSS_LOAD $R_RSS_QUEUED $R_RSS_DRAIN" | maxof)
RATIO_MED=$(echo "$R_RATIO" | median)

kv() { sed -n "s/.*\b$2=\([^ ]*\).*/\1/p" <<<"$1"; }
pass() { awk -v a="$1" -v b="$2" -v op="$3" 'BEGIN{ok = (op == ">=") ? a >= b : a <= b; print ok ? "met" : "MISSED"}'; }

catchup_table() {
	printf '| measure | median | all rounds | target | |\n| --- | ---: | --- | --- | --- |\n'
	printf '| b single-node ingest, %s sessions, fresh, %s msgs (msg/s) | %s |%s | | |\n' "$SESSIONS" "$INGEST_N" "$(echo "$R_INGEST" | median)" "$R_INGEST"
	printf '| a ingest into its queue, b down (msg/s) | %s |%s | | |\n' "$(echo "$R_QUEUE" | median)" "$R_QUEUE"
	printf '| catch-up, b started → queue empty and digests equal (msg/s) | %s |%s | | |\n' "$(echo "$R_CATCHUP" | median)" "$R_CATCHUP"
	printf '| — its duration (s) | %s |%s | | |\n' "$(echo "$R_TIMES" | median %.1f)" "$R_TIMES"
	printf '| — from the first probe that found b to queue empty (msg/s) | %s |%s | | |\n' "$(echo "$R_SENDING" | median)" "$R_SENDING"
	printf '| catch-up / b ingest, same round (%%) | %s |%s | ≥ 80 | %s |\n' "$RATIO_MED" "$R_RATIO" "$(pass "$RATIO_MED" 80 '>=')"
	printf '| CPU per message during catch-up, a (µs) | %s |%s | | |\n' "$(echo "$R_CPU_A" | median)" "$R_CPU_A"
	printf '| CPU per message during catch-up, b (µs) | %s |%s | | |\n' "$(echo "$R_CPU_B" | median)" "$R_CPU_B"
	printf '| a RssAnon idle (MiB) | %s |%s | | |\n' "$(echo "$R_RSS_IDLE" | median)" "$R_RSS_IDLE"
	printf '| a RssAnon peak while loading %s (MiB) | %s |%s | | |\n' "$N" "$(echo "$R_RSS_LOAD" | median)" "$R_RSS_LOAD"
	printf '| a RssAnon at rest, %s queued (MiB) | %s |%s | | |\n' "$N" "$(echo "$R_RSS_QUEUED" | median)" "$R_RSS_QUEUED"
	printf '| a RssAnon peak while draining (MiB) | %s |%s | | |\n' "$(echo "$R_RSS_DRAIN" | median)" "$R_RSS_DRAIN"
	printf '| a RssAnon, highest sample of all rounds | %s MiB | | ≤ 150 MB | %s |\n' "$RSS_MAX" "$(pass "$(awk -v m="$RSS_MAX" 'BEGIN{print m*1.048576}')" 150 '<=')"
}

if [ "${LAG:-1}" = 0 ]; then
	printf '\n%s; %s messages of %s bytes, %s round(s); load average %s at start, %s at end\n\n' \
		"$(date -u +%F)" "$N" "$SIZE" "$REPEAT" "$LOAD_START" "$(cut -d' ' -f1-3 /proc/loadavg)"
	catchup_table
	exit 0
fi

log "phase 4: lag; b restarted with log level info"
stop_b
start_b "$TMP/b" info lag
wait_until "a's connection to be up" sh -c "curl -sf -m 10 -H 'Authorization: Bearer $TOKEN' http://$A_WEB/api/v1/connections | grep -q '\"state\":\"up\"'"
source_run "$A_J" "$MAX_N"
A_MAX=$(rate "$MAX_N" "$T0" "$T1")
M_DRAIN0=$(now)
wait_until "a's queue to drain" depth_is 0
M_DRAIN=$(awk -v a="$M_DRAIN0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}')
log "a's maximum ingest with forwarding: $A_MAX msg/s (queue empty ${M_DRAIN}s after the client finished)"
[ -n "$LAG_RATE" ] || LAG_RATE=$((A_MAX / 2))
curl -sf -m 10 "http://$A_WEB/metrics" >"$TMP/metrics-before"
log "offering $LAG_RATE msg/s for ${LAG_DURATION}s over $LAG_SESSIONS sessions"
SEND=$(timeout "$RUN_TIMEOUT" "$TMP/haload" send -addr "$A_J" -rate "$LAG_RATE" -d "${LAG_DURATION}s" -c "$LAG_SESSIONS" -size "$SIZE" -out "$TMP/sent.tsv")
log "haload: $SEND"
wait_until "a's queue to drain" depth_is 0
curl -sf -m 10 "http://$A_WEB/metrics" >"$TMP/metrics-after"
sleep 0.5 # b's last log lines
LAG=$("$TMP/haload" lag -sent "$TMP/sent.tsv" -log "$TMP/b-lag.log") || { log "haload lag: $LAG"; exit 1; }
H50=$(lag_hist "$TMP/metrics-before" "$TMP/metrics-after" 0.5)
H99=$(lag_hist "$TMP/metrics-before" "$TMP/metrics-after" 0.99)
wait_until "digests to be equal" digests_equal
FINAL=$(digest "$A_WEB")
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

printf '\n%s; %s messages of %s bytes, %s round(s); load average %s at start, %s at end\n\n' \
	"$(date -u +%F)" "$N" "$SIZE" "$REPEAT" "$LOAD_START" "$LOAD_END"
catchup_table
printf '\n| lag (last round) | figure | target | |\n| --- | ---: | --- | --- |\n'
printf '| a max ingest, forwarding on (%s msgs) | %s msg/s (queue empty %s s after) | | |\n' "$MAX_N" "$A_MAX" "$M_DRAIN"
printf '| offered | %s msg/s × %s s, %s sessions; achieved %s msg/s | | |\n' "$LAG_RATE" "$LAG_DURATION" "$LAG_SESSIONS" "$(kv "$SEND" rate)"
printf '| lag per message (b 250 − a receipt) p50 / p90 / p99 / max | %s / %s / %s / %s ms | p99 < 250 ms | %s |\n' \
	"$(kv "$LAG" lag_p50_ms)" "$(kv "$LAG" lag_p90_ms)" "$(kv "$LAG" lag_p99_ms)" "$(kv "$LAG" lag_max_ms)" "$(pass "$(kv "$LAG" lag_p99_ms)" 250 '<=')"
printf '| lag histogram (interpolated) p50 / p99 | %s / %s ms | | |\n' "$H50" "$H99"
printf '| a 250 to b 250 p50 / p99 | %s / %s ms | | |\n' "$(kv "$LAG" after_ack_p50_ms)" "$(kv "$LAG" after_ack_p99_ms)"
printf '\nfinal digests equal: %s\n' "$FINAL"
printf 'haload send: %s\nhaload lag:  %s\n' "$SEND" "$LAG"
[ -n "$PROFILE_DIR" ] && printf 'CPU profiles in %s (written when each node stops)\n' "$PROFILE_DIR"
exit 0
