#!/bin/sh
# Installs what the test suite needs when it is missing: swaks, Postfix
# (for smtp-source, smtp-sink and a real MTA peer), Chromium (the console's
# browser tests) and Python 3. Idempotent and quiet when everything is there.
set -eu

missing=""
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have swaks || missing="$missing swaks"
have smtp-sink || missing="$missing postfix"
have postfix || case "$missing" in *postfix*) ;; *) missing="$missing postfix" ;; esac
have chromium || missing="$missing chromium"
have python3 || missing="$missing python3"
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "deps: missing:$missing — install them with your package manager" >&2
	exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
		echo "deps: missing:$missing and not root (no sudo)" >&2
		exit 1
	fi
fi
echo "deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Postfix is only a tool and a test peer here: no system mail configuration,
# so the package does not start a daemon on port 25.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
