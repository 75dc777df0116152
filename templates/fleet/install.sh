{% autoescape off %}#!/bin/sh
# Install the hwprobe agent {{ version }} from {{ server }} (served at /agent/install.sh).
#
#   curl -fsSL {{ server }}/agent/install.sh | sh -s -- --token TOKEN [--worker]
#
# As root it creates a virtual environment in /opt/hwprobe/venv, installs the agent's wheel from
# this server (its dependencies from the usual package index), stores the token in
# /etc/hwprobe/token (mode 0600), writes systemd units (launchd plists on macOS) and starts them.
# Run it again to upgrade or to change the token. Options:
#   --server URL      the dashboard the agent reports to (default {{ server }})
#   --token TOKEN     the machine's agent token (`manage.py enroll NAME` prints it)
#   --worker          also install and start the job worker (hwprobe-worker.service)
#   --root DIR        install under DIR instead of / and print what it would enable
#   --pip-args ARGS   extra pip arguments, e.g. "--no-index --find-links /srv/wheels" offline
#   --python PATH     the Python (3.11 or later) the environment is made from (default python3)
set -eu

SERVER={{ server_q }}
WHEEL_URL={{ wheel_url_q }}
WHEEL_NAME={{ wheel_name_q }}
TOKEN=""
WORKER=0
ROOT=/
PIP_ARGS=""
PYTHON=python3

say() { printf 'hwprobe: %s\n' "$*"; }
die() { printf 'hwprobe: %s\n' "$*" >&2; exit 1; }
need_value() { [ "$#" -ge 2 ] || die "$1 needs a value"; }

while [ "$#" -gt 0 ]; do
    case "$1" in
        --server) need_value "$@"; SERVER=$2; shift 2 ;;
        --token) need_value "$@"; TOKEN=$2; shift 2 ;;
        --worker) WORKER=1; shift ;;
        --root) need_value "$@"; ROOT=$2; shift 2 ;;
        --pip-args) need_value "$@"; PIP_ARGS=$2; shift 2 ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        -h|--help) say "options: --token TOKEN [--server URL] [--worker] [--root DIR] [--pip-args ARGS] [--python PATH]"; exit 0 ;;
        *) die "unknown option $1 (see the top of $SERVER/agent/install.sh)" ;;
    esac
done

[ -n "$TOKEN" ] || die "--token is required: on the dashboard, \`python manage.py enroll NAME\` prints one"
case "$SERVER" in
    http://*|https://*) SERVER=${SERVER%/} ;;
    *) die "--server must be an http(s) URL, not '$SERVER'" ;;
esac
case "$ROOT" in
    /*) ;;
    *) ROOT=$(pwd)/$ROOT ;;
esac
PREFIX=${ROOT%/}
if [ -z "$PREFIX" ] && [ "$(id -u)" != 0 ]; then
    die "run this as root (| sudo sh -s -- ...), or give --root DIR to install elsewhere"
fi

"$PYTHON" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON is not Python 3.11 or later with the venv module (Debian/Ubuntu: apt-get install python3-venv)"

OS=$(uname -s)
VENV=$PREFIX/opt/hwprobe/venv
TOKEN_FILE=$PREFIX/etc/hwprobe/token
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM

say "downloading $WHEEL_NAME"
if command -v curl >/dev/null 2>&1; then
    curl -fsSL "$WHEEL_URL" -o "$TMP/$WHEEL_NAME" || die "could not download $WHEEL_URL"
elif command -v wget >/dev/null 2>&1; then
    wget -q "$WHEEL_URL" -O "$TMP/$WHEEL_NAME" || die "could not download $WHEEL_URL"
else
    die "neither curl nor wget is installed"
fi

say "installing into $VENV"
mkdir -p "$(dirname "$VENV")"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" || die "could not create $VENV"
REQUIREMENT=$TMP/$WHEEL_NAME
[ "$WORKER" = 1 ] && REQUIREMENT="$REQUIREMENT[worker]"
set -f  # PIP_ARGS is split into words on purpose, never globbed
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$REQUIREMENT" \
    || die "pip could not install the agent (offline? pass --pip-args \"--no-index --find-links DIR\")"
# The same version may be rebuilt by the server: always take the wheel just downloaded.
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --force-reinstall \
    $PIP_ARGS "$TMP/$WHEEL_NAME" || die "pip could not reinstall the agent"
set +f

say "storing the token in $TOKEN_FILE (mode 0600)"
mkdir -p "$(dirname "$TOKEN_FILE")"
(umask 077 && printf '%s\n' "$TOKEN" > "$TOKEN_FILE.tmp")
chmod 600 "$TOKEN_FILE.tmp"
mv -f "$TOKEN_FILE.tmp" "$TOKEN_FILE"

set -- --server "$SERVER" --root "$ROOT" --token-file "$TOKEN_FILE"
[ "$WORKER" = 1 ] && set -- "$@" --worker
[ "$OS" = Darwin ] && set -- "$@" --launchd
"$VENV/bin/hwprobe" units "$@" > "$TMP/units" || die "could not write the service files"
while read -r path; do say "wrote $path"; done < "$TMP/units"

"$VENV/bin/hwprobe" sample > "$TMP/sample.json" 2> "$TMP/sample.log" \
    || die "the agent cannot take a sample here: $(cat "$TMP/sample.log")"
say "a first sample works ($(wc -c < "$TMP/sample.json" | tr -d ' ') bytes of JSON)"

SERVICES=hwprobe
[ "$WORKER" = 1 ] && SERVICES="hwprobe hwprobe-worker"
if [ "$OS" = Darwin ]; then
    for name in $SERVICES; do
        case "$name" in hwprobe) label=org.hwprobe.agent ;; *) label=org.hwprobe.worker ;; esac
        if [ -z "$PREFIX" ]; then
            launchctl bootout "system/$label" 2>/dev/null || true
            launchctl bootstrap system "/Library/LaunchDaemons/$label.plist"
            say "started $label (log: /Library/Logs/$name.log)"
        else
            say "installed under $ROOT, so nothing was started; this would run:"
            say "  launchctl bootstrap system $PREFIX/Library/LaunchDaemons/$label.plist"
        fi
    done
elif [ -z "$PREFIX" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    for name in $SERVICES; do
        systemctl enable --quiet "$name.service"
        systemctl restart "$name.service"
        say "started $name.service (journalctl -u $name -f)"
    done
else
    if [ -n "$PREFIX" ]; then
        say "installed under $ROOT, so nothing was enabled; on a live system this would run:"
    else
        say "systemd is not running here; start the agent with your service manager. It would run:"
    fi
    say "  systemctl daemon-reload"
    for name in $SERVICES; do say "  systemctl enable --now $name.service"; done
fi
if [ "$WORKER" = 1 ]; then
    say "jobs follow the host policy in /etc/hwprobe/worker.toml (an example: hwprobe/worker.example.toml in $VENV)"
fi
say "done: this machine reports to $SERVER"
{% endautoescape %}
