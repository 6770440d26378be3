# Shared by the bench/ scripts (sourced, not run): installing tools,
# building chainmail, waiting for a port or a quiet machine. The script
# defines log() and, for wait_load, WAIT_LOAD.

# apt_install installs Debian packages quietly, updating the lists only if
# the first attempt fails.
apt_install() {
	export DEBIAN_FRONTEND=noninteractive
	log "installing $* from apt..."
	apt-get install -y -q "$@" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$@" >/dev/null; }
}

# install_postfix brings smtp-source and smtp-sink (and Postfix itself,
# unconfigured) when they are missing.
install_postfix() {
	command -v smtp-source >/dev/null && command -v smtp-sink >/dev/null && return 0
	[ -x /usr/sbin/smtp-source ] && [ -x /usr/sbin/smtp-sink ] && return 0
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	apt_install postfix
}

# build_chainmail DEST builds the binary to measure into DEST, or copies
# $CHAINMAIL_BIN there when it is set.
build_chainmail() {
	if [ -n "${CHAINMAIL_BIN:-}" ]; then
		cp "$CHAINMAIL_BIN" "$1"
	else
		(cd "$ROOT" && go build -o "$1" ./cmd/chainmail)
	fi
}

# wait_port ADDR waits up to 10 s for something to listen on host:port.
wait_port() {
	local host=${1%:*} port=${1##*:}
	for _ in $(seq 200); do
		(exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
		sleep 0.05
	done
	log "nothing listens on $1"
	return 1
}

# wait_load waits up to 2 minutes for the 1-minute load average to fall
# below $WAIT_LOAD (0: do not wait), so that a run does not start while the
# machine is still busy with the builds or the previous run.
wait_load() {
	[ "$WAIT_LOAD" = 0 ] && return 0
	for _ in $(seq 60); do
		awk -v max="$WAIT_LOAD" '{exit !($1 < max)}' /proc/loadavg && return 0
		sleep 2
	done
	log "load average still $(cut -d' ' -f1 /proc/loadavg) (>= $WAIT_LOAD); measuring anyway"
}
