#!/usr/bin/env bash
# Install lockerd as a systemd service on a Raspberry Pi OS / Debian bookworm
# board (arm64 or armhf), from a checkout of this repository:
#
#   sudo scripts/install.sh
#
# It creates /opt/lockerd/venv and installs the checkout into it with the
# locked versions of every library (requirements/runtime.lock), installs the
# unit and the udev rules, installs the screens' unit (lockerd-display, left
# disabled: see docs/display.md to enable it), copies an example config to /etc/lockerd/lockerd.toml
# only if there is none yet, checks the config, reloads systemd and udev and
# enables the service. Safe to run again: that is
# also how an update is installed (see docs/install.md).
#
# Options:
#   --root DIR   install into DIR instead of / (also: DESTDIR=DIR). Nothing on
#                the live system is touched then: apt, groupadd, systemctl and
#                udevadm are only printed.
#   --skip-pip   keep the venv as it is (it must already hold bin/lockerd):
#                for tests, and for re-installing unit and rules offline.
#   --no-start   enable the service but do not (re)start it now.
#   -h, --help   this text.
set -euo pipefail

ROOT="${DESTDIR:-/}"
SKIP_PIP=0
START=1
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || { echo "install: --root needs a directory" >&2; exit 2; }; ROOT="$2"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; shift ;;
        --skip-pip) SKIP_PIP=1; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

SRC="$(cd "$(dirname "$0")/.." && pwd)"
ROOT="$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)"
# $R prefixes every path we write; it is empty for a live install.
if [ "$ROOT" = "/" ]; then R=""; LIVE=1; else R="$ROOT"; LIVE=0; fi

say() { echo "install: $*"; }
# Commands that change the running system: run live, printed otherwise.
live() {
    if [ "$LIVE" -eq 1 ]; then "$@"; else echo "install: (--root $ROOT, not run) $*"; fi
}

if [ "$LIVE" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install: run as root: sudo $0 $*" >&2
    exit 1
fi
[ -f "$SRC/pyproject.toml" ] && [ -f "$SRC/systemd/lockerd.service" ] || {
    echo "install: $SRC does not look like a lockerd checkout" >&2; exit 1; }

VENV=/opt/lockerd/venv

# --- System packages and groups --------------------------------------------
if [ "$SKIP_PIP" -eq 0 ]; then
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        live apt-get install -y python3-venv
    fi
fi
# The unit runs in these groups; systemd refuses to start it if one is
# missing. Plain Debian has no gpio group (Raspberry Pi OS has).
for g in dialout gpio; do
    if [ "$LIVE" -eq 1 ]; then
        getent group "$g" >/dev/null || { say "creating group $g"; groupadd --system "$g"; }
    else
        live groupadd --system "$g"
    fi
done

# --- The venv ----------------------------------------------------------------
if [ "$SKIP_PIP" -eq 0 ]; then
    if [ ! -x "$R$VENV/bin/python" ]; then
        say "creating $VENV"
        mkdir -p "$R/opt/lockerd"
        # A venv of its own: the host's Python packages never leak in.
        python3 -m venv "$R$VENV"
    fi
    say "installing lockerd and the locked versions of its libraries into $VENV"
    # Exactly the versions (and file hashes) of requirements/runtime.lock: two
    # boards installed a month apart run the same set. lgpio comes from there
    # too on a Pi, so no system package is needed.
    "$R$VENV/bin/python" -m pip install --quiet --require-hashes --no-deps -r "$SRC/requirements/runtime.lock"
    # Build from a clean copy: setuptools reuses a build/ folder in the
    # checkout, which would carry modules deleted upstream into the update.
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./var \
        --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$tmp" -xf -
    # No dependency resolution and no build downloads: the lock has them all,
    # the locked setuptools included.
    "$R$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation --force-reinstall "$tmp"
else
    say "--skip-pip: keeping $VENV as it is"
fi
[ -x "$R$VENV/bin/lockerd" ] || { echo "install: $R$VENV/bin/lockerd is missing" >&2; exit 1; }

# --- Unit, udev rules, docs ----------------------------------------------------
install -d -m 0755 "$R/etc/systemd/system" "$R/etc/udev/rules.d" "$R/opt/lockerd/docs"
install -m 0644 "$SRC/systemd/lockerd.service" "$R/etc/systemd/system/lockerd.service"
install -m 0644 "$SRC/systemd/99-lockerd.rules" "$R/etc/udev/rules.d/99-lockerd.rules"
# The screens run beside the daemon, but only where a screen hangs: installed, never enabled here.
install -m 0644 "$SRC/systemd/lockerd-display.service" "$R/etc/systemd/system/lockerd-display.service"
[ -f "$SRC/docs/install.md" ] && install -m 0644 "$SRC/docs/install.md" "$R/opt/lockerd/docs/install.md"
[ -f "$SRC/docs/display.md" ] && install -m 0644 "$SRC/docs/display.md" "$R/opt/lockerd/docs/display.md"
say "installed lockerd.service, lockerd-display.service (not enabled) and 99-lockerd.rules"

# --- Config: only if there is none ----------------------------------------------
# /etc/lockerd is readable by the service (a dynamic user), writable by root only.
install -d -m 0755 "$R/etc/lockerd"
CONF="$R/etc/lockerd/lockerd.toml"
if [ -e "$CONF" ]; then
    say "keeping the existing /etc/lockerd/lockerd.toml"
else
    example="$SRC/config/example-station.toml"
    [ -f "$example" ] || example="$SRC/config/demo.toml"
    # The examples keep their files next to themselves (../var/demo/...);
    # on a board they belong in the service's state and runtime directories.
    sed -e 's#"\.\./var/[A-Za-z0-9_-]*/lockerd\.sock"#"/run/lockerd/lockerd.sock"#' \
        -e 's#"\.\./var/[A-Za-z0-9_-]*/#"/var/lib/lockerd/#' \
        "$example" > "$CONF.new"
    chmod 0644 "$CONF.new"
    mv "$CONF.new" "$CONF"
    say "copied $(basename "$example") to /etc/lockerd/lockerd.toml: edit it for this station"
fi

say "checking the config"
if ! "$R$VENV/bin/lockerd" check-config "$CONF"; then
    echo "install: fix /etc/lockerd/lockerd.toml, then run this again" >&2
    exit 1
fi

# --- Tell systemd and udev ----------------------------------------------------------
live systemctl daemon-reload
live udevadm control --reload-rules
live udevadm trigger --subsystem-match=tty --subsystem-match=gpio --action=change
if [ "$LIVE" -eq 1 ]; then
    systemctl enable lockerd.service
elif command -v systemctl >/dev/null; then
    # Works offline on a root file system: it only writes the wants link.
    systemctl --root="$ROOT" --quiet enable lockerd.service 2>/dev/null
    say "(--root $ROOT) enabled lockerd.service"
else
    install -d -m 0755 "$R/etc/systemd/system/multi-user.target.wants"
    ln -sfn /etc/systemd/system/lockerd.service "$R/etc/systemd/system/multi-user.target.wants/lockerd.service"
    say "(--root $ROOT) enabled lockerd.service by link"
fi
if [ "$START" -eq 1 ]; then
    # restart, not start: an update must replace the running daemon.
    live systemctl restart lockerd.service
    # An update replaces the screens too, where a station enabled and started them; elsewhere nothing starts.
    live systemctl try-restart lockerd-display.service
    if [ "$LIVE" -eq 1 ]; then
        systemctl --no-pager --lines=0 status lockerd.service || true
    fi
fi
say "done. Logs: journalctl -u lockerd -f    Status: systemctl status lockerd"
say "screens (lockerd-display): systemctl enable --now lockerd-display, once [display] is set (docs/display.md)"
