#!/usr/bin/env bash
# Balancer benchmark: the same SMTP load against two smtp-sink backends,
# direct and through HAProxy, nginx (stream module) and `chainmail balance`,
# in one run. See docs/BENCHMARKS.md, "Balancer", for the figures.
#
# Usage: bench/balancer.sh            (from the repository root or anywhere)
# Knobs (environment):
#   REPEAT=3          runs of every cell; the table shows the median
#   DURATION=8s       measured time of one run (after 1s of warm-up)
#   CONC=32           concurrent client sessions
#   MSGS="1 20"       messages per session: 1 = a new connection per message,
#                     20 = reused connections
#   SIZE=1024         message size in bytes
#   TARGETS="direct haproxy nginx chainmail chainmail-info"
#                     chainmail logs at warn (as the proxies log nothing per
#                     session here); chainmail-info also writes its session
#                     line per session to a file
#   STRACE=1          also count chainmail's splice(2) calls in an extra run
#   SEPARATE=1        start every server (sinks and proxies) in a session of
#                     its own. With the kernel's autogroup scheduling on
#                     (/proc/sys/kernel/sched_autogroup_enabled), each then
#                     gets its own share of the contended CPU, as a systemd
#                     service gets its own cgroup. With 0, everything shares
#                     one group with the client, and a proxy's share of the
#                     two cores grows with its number of busy threads.
# The "cpu us/sess" column is the proxy's own CPU time (user+system) per
# session over the measured time; for "direct" it is the two smtp-sinks'.
#   KEEP=1            keep the temporary directory (configs, logs)
#   PORT_BASE=13100   ports: +1,+2 smtp-sink, +3 haproxy, +4 nginx,
#                     +5 chainmail, +6 chainmail-info; all on 127.0.0.1
set -euo pipefail

REPEAT=${REPEAT:-3}
DURATION=${DURATION:-8s}
CONC=${CONC:-32}
MSGS=${MSGS:-"1 20"}
SIZE=${SIZE:-1024}
TARGETS=${TARGETS:-"direct haproxy nginx chainmail chainmail-info"}
STRACE=${STRACE:-1}
SEPARATE=${SEPARATE:-1}
PORT_BASE=${PORT_BASE:-13100}
S1=127.0.0.1:$((PORT_BASE + 1))
S2=127.0.0.1:$((PORT_BASE + 2))
HA=127.0.0.1:$((PORT_BASE + 3))
NG=127.0.0.1:$((PORT_BASE + 4))
CM=127.0.0.1:$((PORT_BASE + 5))
CMI=127.0.0.1:$((PORT_BASE + 6))

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
TMP=$(mktemp -d /tmp/chainmail-balbench.XXXXXX)
chmod 755 "$TMP"
PIDS=()

log() { printf '%s\n' "$*" >&2; }

cleanup() {
	set +e
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ "${KEEP:-}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ----------------------------------------------------------------

install_tools() {
	install_postfix
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || apt_install haproxy
	if ! [ -x /usr/sbin/nginx ] || ! ls /usr/lib/nginx/modules/ngx_stream_module.so >/dev/null 2>&1; then
		apt_install nginx-light libnginx-mod-stream || apt_install nginx libnginx-mod-stream
	fi
	# The packages start system services; this benchmark runs its own.
	systemctl stop nginx haproxy 2>/dev/null || true
}


start() { # name, command...; sets LAST_PID
	local name=$1
	shift
	if [ "$SEPARATE" = 1 ]; then
		# Not a process group leader here, so setsid execs without a fork:
		# $! stays the server's PID.
		setsid "$@" >"$TMP/$name.out" 2>&1 &
	else
		"$@" >"$TMP/$name.out" 2>&1 &
	fi
	LAST_PID=$!
	PIDS+=("$LAST_PID")
}

# --- the servers ------------------------------------------------------------

start_all() {
	local user=()
	[ "$(id -u)" = 0 ] && user=(-u nobody)
	start sink1 /usr/sbin/smtp-sink "${user[@]}" "$S1" 4096
	PID_direct=$LAST_PID
	start sink2 /usr/sbin/smtp-sink "${user[@]}" "$S2" 4096
	PID_direct="$PID_direct,$LAST_PID"
	wait_port "$S1"
	wait_port "$S2"

	cat >"$TMP/haproxy.cfg" <<-EOF
		global
		    maxconn 8000
		defaults
		    mode tcp
		    timeout connect 2s
		    timeout client 10m
		    timeout server 10m
		frontend smtp
		    bind $HA
		    default_backend sinks
		backend sinks
		    balance roundrobin
		    server s1 $S1
		    server s2 $S2
	EOF
	start haproxy /usr/sbin/haproxy -db -f "$TMP/haproxy.cfg"
	PID_haproxy=$LAST_PID

	cat >"$TMP/nginx.conf" <<-EOF
		load_module /usr/lib/nginx/modules/ngx_stream_module.so;
		worker_processes auto;
		daemon off;
		pid $TMP/nginx.pid;
		error_log $TMP/nginx-error.log;
		events { worker_connections 8000; }
		stream {
		    upstream sinks { server $S1; server $S2; }
		    server { listen $NG; proxy_pass sinks; }
		}
	EOF
	start nginx /usr/sbin/nginx -p "$TMP" -c "$TMP/nginx.conf"
	PID_nginx=$LAST_PID

	for pair in "chainmail:$CM:warn" "chainmail-info:$CMI:info"; do
		IFS=: read -r name host port level <<<"$pair"
		cat >"$TMP/$name.yaml" <<-EOF
			balancer:
			  log: {level: $level, format: json}
			  frontends:
			    - {name: smtp, address: "$host:$port", pool: sinks}
			  pools:
			    - name: sinks
			      algorithm: weighted-round-robin
			      servers:
			        - {name: s1, address: "$S1"}
			        - {name: s2, address: "$S2"}
		EOF
		start "$name" "$TMP/chainmail" balance -c "$TMP/$name.yaml"
		if [ "$name" = chainmail ]; then CM_MAIN_PID=$LAST_PID; else CM_INFO_PID=$LAST_PID; fi
	done
	wait_port "$HA"
	wait_port "$NG"
	wait_port "$CM"
	wait_port "$CMI"
}

pids_of() { # the processes whose CPU time a run measures
	case $1 in
	direct) echo "$PID_direct" ;; # the backends themselves
	haproxy) echo "$PID_haproxy" ;;
	nginx) echo "$PID_nginx,$(pgrep -d, -P "$PID_nginx")" ;;
	chainmail) echo "$CM_MAIN_PID" ;;
	chainmail-info) echo "$CM_INFO_PID" ;;
	esac
}

addr_of() {
	case $1 in
	direct) echo "$S1,$S2" ;;
	haproxy) echo "$HA" ;;
	nginx) echo "$NG" ;;
	chainmail) echo "$CM" ;;
	chainmail-info) echo "$CMI" ;;
	esac
}

# --- measuring --------------------------------------------------------------

field() { # line, key
	tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

main() {
	install_tools
	log "building chainmail and the load client..."
	(cd "$ROOT" && go build -o "$TMP/chainmail" ./cmd/chainmail && go build -o "$TMP/balancerload" ./bench/balancerload)
	start_all
	log "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
	log "haproxy $(/usr/sbin/haproxy -v | head -1 | awk '{print $3}'), nginx $(/usr/sbin/nginx -v 2>&1 | cut -d/ -f2), load: $(cut -d' ' -f1-3 /proc/loadavg)"
	log "scheduling: SEPARATE=$SEPARATE, autogroup $(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || echo unknown)"

	for m in $MSGS; do
		for r in $(seq "$REPEAT"); do
			for t in $TARGETS; do
				out=$("$TMP/balancerload" -addrs "$(addr_of "$t")" -pids "$(pids_of "$t")" -c "$CONC" -m "$m" -size "$SIZE" -d "$DURATION")
				echo "$m $t $out" >>"$TMP/results"
				log "m=$m run $r $t: $out"
			done
		done
	done

	printf '\n%-16s %5s %12s %12s %9s %9s %9s %10s %10s %12s\n' target msgs sessions/s messages/s "vs direct" "p50 ms" "p99 ms" "added p50" "added p99" "cpu us/sess"
	for m in $MSGS; do
		# Latency: the whole session with one message per connection, one
		# mail transaction (MAIL to the 250 after DATA) with reused ones.
		lat=session
		[ "$m" -gt 1 ] && lat=mail
		local d_rate d50 d99
		for t in $TARGETS; do
			local lines rate mrate p50 p99 cpu
			lines=$(awk -v m="$m" -v t="$t" '$1==m && $2==t' "$TMP/results")
			rate=$(while read -r l; do field "$l" sessions_per_s; done <<<"$lines" | median)
			mrate=$(while read -r l; do field "$l" messages_per_s; done <<<"$lines" | median)
			p50=$(while read -r l; do field "$l" ${lat}_p50_ms; done <<<"$lines" | median)
			p99=$(while read -r l; do field "$l" ${lat}_p99_ms; done <<<"$lines" | median)
			cpu=$(while read -r l; do field "$l" cpu_us_per_session; done <<<"$lines" | median)
			if [ "$t" = direct ]; then d_rate=$rate d50=$p50 d99=$p99; fi
			printf '%-16s %5s %12s %12s %8.0f%% %9s %9s %10.3f %10.3f %12s\n' "$t" "$m" "$rate" "$mrate" \
				"$(awk -v a="$mrate" -v b="${d_rate:-$rate}" -v m="$m" 'BEGIN{print 100*a/(b*m)}')" "$p50" "$p99" \
				"$(awk -v a="$p50" -v b="${d50:-$p50}" 'BEGIN{print a-b}')" "$(awk -v a="$p99" -v b="${d99:-$p99}" 'BEGIN{print a-b}')" "$cpu"
		done
	done
	if grep -q '"level":"error"' "$TMP"/chainmail*.out; then
		log "chainmail logged errors:"
		grep '"level":"error"' "$TMP"/chainmail*.out | head >&2
	fi

	if [ "$STRACE" = 1 ] && command -v strace >/dev/null; then
		log ""
		log "splice check: strace -f -c -e trace=splice,read,write,recvfrom,sendto on chainmail balance during 3s of load"
		strace -f -c -e trace=splice,read,write,recvfrom,sendto -p "$CM_MAIN_PID" -o "$TMP/strace.txt" &
		local spid=$!
		sleep 0.5
		"$TMP/balancerload" -addrs "$CM" -c 8 -m 20 -size 65536 -d 3s -warmup 0s >/dev/null
		kill -INT "$spid"
		wait "$spid" 2>/dev/null || true
		cat "$TMP/strace.txt" >&2
	fi
}

main "$@"
