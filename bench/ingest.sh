#!/usr/bin/env bash
# Ingest benchmark of one chainmail node against the SMTP protocol ceiling
# (smtp-sink) and Postfix's durable queue, with the same client (Postfix's
# smtp-source) in the same run. See docs/BENCHMARKS.md, "Ingest (single
# node)", for what it measures and the figures.
#
# Usage: bench/ingest.sh            (from the repository root or anywhere)
# Knobs (environment):
#   REPEAT=3        runs of every cell; the table shows the median
#   SCALE=1         multiplies every message count (runs last ~1-10 s at 1)
#   SIZE=10240      message payload in bytes (smtp-source -l)
#   SESSIONS="1 32" concurrent sessions to measure
#   TARGETS="sink postfix chainmail"
#   WAIT_LOAD=1.0   wait (at most 120 s) for the 1-minute load average to
#                   drop below this before starting; 0 skips the wait
#   PROFILE=FILE    write chainmail's CPU profile of the whole run to FILE
#   NO_SYNC=1       chainmail without fsync (ceiling experiments only: such
#                   figures are not the reported ones)
#   KEEP=1          keep the temporary directory (configs, logs, data)
#   CHAINMAIL_BIN=  a chainmail binary to measure instead of building one
#   PORT_BASE=12520 ports used: +5 chainmail SMTP, +6 Postfix, +7 smtp-sink,
#                   +8 chainmail API; all on 127.0.0.1
set -euo pipefail

REPEAT=${REPEAT:-3}
SCALE=${SCALE:-1}
SIZE=${SIZE:-10240}
SESSIONS=${SESSIONS:-"1 32"}
TARGETS=${TARGETS:-"sink postfix chainmail"}
WAIT_LOAD=${WAIT_LOAD:-1.0}
PORT_BASE=${PORT_BASE:-12520}
CM_ADDR=127.0.0.1:$((PORT_BASE + 5))
PF_ADDR=127.0.0.1:$((PORT_BASE + 6))
SINK_ADDR=127.0.0.1:$((PORT_BASE + 7))
CM_WEB=127.0.0.1:$((PORT_BASE + 8))
TOKEN=bench-token-0123456789
RUN_TIMEOUT=300 # seconds, for any one smtp-source run

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
TMP=$(mktemp -d /tmp/chainmail-bench.XXXXXX)
chmod 755 "$TMP" # Postfix's daemons run as user postfix and must reach the queue
PIDS=()
PF_CONF=""

log() { printf '%s\n' "$*" >&2; }

cleanup() {
	set +e
	if [ -n "$PF_CONF" ] && [ -f "$TMP/postfix/queue/pid/master.pid" ]; then
		local mpid
		mpid=$(tr -dc 0-9 <"$TMP/postfix/queue/pid/master.pid")
		if [ -n "$mpid" ]; then
			kill -TERM "$mpid" 2>/dev/null # the master stops its children
			for _ in $(seq 50); do kill -0 "$mpid" 2>/dev/null || break; sleep 0.1; done
		fi
	fi
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "${KEEP:-}" = 1 ]; then
		log "kept $TMP"
	else
		rm -rf "$TMP"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ----------------------------------------------------------------



# --- the three servers ----------------------------------------------------

start_sink() {
	# -u: smtp-sink refuses to run as root without a user to become.
	smtp-sink -u nobody "$SINK_ADDR" 1024 >"$TMP/sink.log" 2>&1 &
	PIDS+=($!)
	wait_port "$SINK_ADDR"
}

start_postfix() {
	# A throwaway instance: its own configuration and queue under $TMP,
	# loopback only. Every accepted message is put on hold (smtpd's access
	# action HOLD), so what is measured is the durable accept alone:
	# cleanup writes and fsyncs the queue file before smtpd answers 250,
	# and no delivery agent competes for the CPU. (Relaying to a local
	# smtp-sink instead would add qmgr and smtp client work to the same
	# two cores and measure ingest plus delivery.) in_flow_delay = 0 turns
	# off inflow control, which would otherwise pause every accept for up
	# to 1 s because a hold queue never frees delivery tokens.
	PF_CONF=$TMP/postfix/etc
	local q=$TMP/postfix/queue data=$TMP/postfix/data
	mkdir -p "$PF_CONF" "$q" "$data"
	chown postfix "$data"
	cat >"$PF_CONF/main.cf" <<-CF
		compatibility_level = 3.6
		queue_directory = $q
		data_directory = $data
		mail_owner = postfix
		setgid_group = postdrop
		inet_interfaces = loopback-only
		inet_protocols = ipv4
		myhostname = postfix-bench.invalid
		mydestination =
		local_recipient_maps =
		relay_domains =
		mynetworks = 127.0.0.0/8
		smtpd_client_restrictions = check_client_access static:HOLD
		smtpd_relay_restrictions = permit_mynetworks, reject
		in_flow_delay = 0
		default_process_limit = 200
		biff = no
	CF
	cat >"$PF_CONF/master.cf" <<-CF
		$PF_ADDR inet n - n - - smtpd
		pickup    unix n - n 60 1 pickup
		cleanup   unix n - n - 0 cleanup
		qmgr      unix n - n 300 1 qmgr
		rewrite   unix - - n - - trivial-rewrite
		bounce    unix - - n - 0 bounce
		defer     unix - - n - 0 bounce
		trace     unix - - n - 0 bounce
		verify    unix - - n - 1 verify
		flush     unix n - n 1000? 0 flush
		proxymap  unix - - n - - proxymap
		smtp      unix - - n - - smtp
		relay     unix - - n - - smtp
		showq     unix n - n - - showq
		error     unix - - n - - error
		retry     unix - - n - - error
		discard   unix - - n - - discard
		local     unix - n n - - local
		anvil     unix - - n - 1 anvil
		scache    unix - - n - 1 scache
	CF
	postfix -c "$PF_CONF" start >"$TMP/postfix.log" 2>&1 || {
		cat "$TMP/postfix.log" >&2
		return 1
	}
	wait_port "$PF_ADDR"
}

start_chainmail() {
	build_chainmail "$TMP/chainmail"
	local store=""
	[ "${NO_SYNC:-}" = 1 ] && store="store: {no_sync: true}"
	cat >"$TMP/node.yaml" <<-CF
		node: bench
		data_dir: $TMP/chainmail-data
		listeners: [{name: journal, address: $CM_ADDR, max_sessions: 500, max_sessions_per_ip: 500}]
		routes: [{name: journal, from: [journal], actions: [archive]}]
		web: {address: $CM_WEB, api_tokens: ["$TOKEN"]}
		log: {level: warn, format: json}
		$store
	CF
	CHAINMAIL_CPUPROFILE=${PROFILE:-} "$TMP/chainmail" serve -c "$TMP/node.yaml" >"$TMP/chainmail.log" 2>&1 &
	PIDS+=($!)
	CM_PID=$!
	wait_port "$CM_ADDR"
}

# --- measuring ------------------------------------------------------------

addr_of() {
	case $1 in
	sink) echo "$SINK_ADDR" ;;
	postfix) echo "$PF_ADDR" ;;
	chainmail) echo "$CM_ADDR" ;;
	esac
}

# count TARGET SESSIONS MODE: messages for one run of a few seconds.
count() {
	local n
	case $1:$2:$3 in
	postfix:1:*) n=600 ;;
	postfix:*:*) n=3000 ;;
	*:1:reused) n=4000 ;;
	*:1:*) n=2500 ;;
	*:*:reused) n=30000 ;;
	*) n=10000 ;;
	esac
	awk -v n="$n" -v s="$SCALE" 'BEGIN{printf "%d", n*s < 1 ? 1 : n*s}'
}

SENT_TO_CM=0

# run TARGET SESSIONS MODE MESSAGES: sets RATE to messages/s.
RATE=0
run() {
	local target=$1 s=$2 mode=$3 m=$4 flags=()
	[ "$mode" = reused ] && flags=(-d) # -d: next message on the same connection
	[ "$mode" = single ] && wait_timewait "$(addr_of "$target")"
	local t0 t1
	t0=$(date +%s.%N)
	if ! timeout "$RUN_TIMEOUT" smtp-source "${flags[@]}" -s "$s" -m "$m" -l "$SIZE" "$(addr_of "$target")" \
		>>"$TMP/source.log" 2>&1; then
		log "smtp-source into $target failed (see below)"
		tail -5 "$TMP/source.log" >&2
		return 1
	fi
	t1=$(date +%s.%N)
	[ "$target" = chainmail ] && SENT_TO_CM=$((SENT_TO_CM + m))
	RATE=$(awk -v m="$m" -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", m/(b-a)}')
}

# wait_timewait ADDR: one-message-per-connection runs open thousands of
# connections; past ~28,000 to one port within TIME_WAIT's 60 s the
# ephemeral ports wrap onto 4-tuples still in TIME_WAIT and connects stall.
# Wait (at most 65 s) until fewer than 8,000 remain for this port.
wait_timewait() {
	local port=${1##*:} n
	for _ in $(seq 65); do
		n=$(ss -Htan state time-wait "( sport = :$port or dport = :$port )" 2>/dev/null | wc -l)
		[ "$n" -lt 8000 ] && return 0
		sleep 1
	done
}

median() { tr ' ' '\n' | { grep . || true; } | sort -n | awk '{v[NR]=$1} END{if (NR == 0) exit; print (NR%2) ? v[(NR+1)/2] : int((v[NR/2]+v[NR/2+1])/2)}'; }

# --- main -----------------------------------------------------------------

install_postfix
log "work directory $TMP"
for t in $TARGETS; do
	case $t in
	sink) start_sink ;;
	postfix) start_postfix ;;
	chainmail) start_chainmail ;;
	*) log "unknown target $t"; exit 2 ;;
	esac
done

wait_load
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# Warm up: start Postfix's daemons, fault in chainmail's code paths.
for t in $TARGETS; do
	run "$t" 4 reused 200
	run "$t" 4 single 100
done

declare -A RES
for rep in $(seq "$REPEAT"); do
	for mode in reused single; do
		for s in $SESSIONS; do
			for t in $TARGETS; do
				run "$t" "$s" "$mode" "$(count "$t" "$s" "$mode")"
				RES[$t:$s:$mode]="${RES[$t:$s:$mode]:-} $RATE"
				log "run $rep: $t, $s sessions, $mode: $RATE msg/s"
			done
		done
	done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

CHECK=""
if [[ " $TARGETS " == *" chainmail "* ]]; then
	got=$(curl -s -H "Authorization: Bearer $TOKEN" "http://$CM_WEB/api/v1/archive/digest" | sed -n 's/.*"count":\([0-9]*\).*/\1/p')
	CHECK="chainmail archived $got of the $SENT_TO_CM messages it was sent"
	[ "$got" = "$SENT_TO_CM" ] || CHECK="$CHECK: MISMATCH"
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b == 0) print "-"; else printf "%.0f%%", 100*a/b }'; }

printf '\n%s, %s-byte payload, median of %s runs; load average %s at start, %s at end%s\n\n' \
	"$(date -u +%F)" "$SIZE" "$REPEAT" "$LOAD_START" "$LOAD_END" "${NO_SYNC:+ (chainmail NO_SYNC: not a reported figure)}"
printf '| sessions | connections | smtp-sink msg/s | Postfix (hold queue) msg/s | chainmail msg/s | chainmail / smtp-sink | chainmail / Postfix |\n'
printf '| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n'
for mode in reused single; do
	for s in $SESSIONS; do
		sk=$(echo "${RES[sink:$s:$mode]:-}" | median)
		pf=$(echo "${RES[postfix:$s:$mode]:-}" | median)
		cm=$(echo "${RES[chainmail:$s:$mode]:-}" | median)
		label="one per message"
		[ "$mode" = reused ] && label="reused"
		printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$s" "$label" "${sk:--}" "${pf:--}" "${cm:--}" "$(ratio "$cm" "$sk")" "$(ratio "$cm" "$pf")"
	done
done
printf '\nall runs (msg/s):\n'
for k in $(printf '%s\n' "${!RES[@]}" | sort); do printf '  %-22s %s\n' "$k" "${RES[$k]}"; done
[ -n "$CHECK" ] && printf '\n%s\n' "$CHECK"
[ -n "${PROFILE:-}" ] && printf 'CPU profile: %s (written when the node stops)\n' "$PROFILE"
exit 0
