#!/usr/bin/env bash
# Remove the lockerd service installed by scripts/install.sh:
#
#   sudo scripts/uninstall.sh            # keeps the config and the journal
#   sudo scripts/uninstall.sh --purge    # also deletes them: the journal is the
#                                        # station's record, export it first
#
# Removes the units (the daemon's and the screens'), the udev rules and /opt/lockerd (the venv). Keeps
# /etc/lockerd (config) and /var/lib/lockerd (journal) unless --purge.
#
# Options:
#   --root DIR   act on DIR instead of / (also: DESTDIR=DIR); systemctl and
#                udevadm are only printed then.
#   --purge      also delete /etc/lockerd and /var/lib/lockerd.
#   -h, --help   this text.
set -euo pipefail

ROOT="${DESTDIR:-/}"
PURGE=0
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || { echo "uninstall: --root needs a directory" >&2; exit 2; }; ROOT="$2"; shift 2 ;;
        --root=*) ROOT="${1#--root=}"; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "uninstall: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -d "$ROOT" ] || { echo "uninstall: $ROOT is not a directory" >&2; exit 2; }
ROOT="$(cd "$ROOT" && pwd)"
if [ "$ROOT" = "/" ]; then R=""; LIVE=1; else R="$ROOT"; LIVE=0; fi

say() { echo "uninstall: $*"; }
live() {
    if [ "$LIVE" -eq 1 ]; then "$@"; else echo "uninstall: (--root $ROOT, not run) $*"; fi
}
if [ "$LIVE" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    echo "uninstall: run as root: sudo $0 $*" >&2
    exit 1
fi

# Stop first: the daemon switches every relay off on its way down.
# The screens first: they read the daemon's journal.
for unit in lockerd-display.service lockerd.service; do
    if [ "$LIVE" -eq 1 ]; then
        systemctl disable --now "$unit" 2>/dev/null || true
    else
        live systemctl disable --now "$unit"
    fi
done
rm -f "$R/etc/systemd/system/multi-user.target.wants/lockerd.service" \
      "$R/etc/systemd/system/multi-user.target.wants/lockerd-display.service" \
      "$R/etc/systemd/system/lockerd.service" \
      "$R/etc/systemd/system/lockerd-display.service" \
      "$R/etc/udev/rules.d/99-lockerd.rules"
# Drop-ins made with "systemctl edit lockerd" belong to this station's setup.
if [ "$PURGE" -eq 1 ]; then
    rm -rf "$R/etc/systemd/system/lockerd.service.d" "$R/etc/systemd/system/lockerd-display.service.d"
fi
rm -rf "$R/opt/lockerd"
say "removed the units, the udev rules and /opt/lockerd"

live systemctl daemon-reload
live udevadm control --reload-rules

if [ "$PURGE" -eq 1 ]; then
    # DynamicUser keeps the real state under /var/lib/private/lockerd and
    # links /var/lib/lockerd to it.
    rm -rf "$R/etc/lockerd" "$R/var/lib/lockerd" "$R/var/lib/private/lockerd"
    say "--purge: deleted /etc/lockerd and /var/lib/lockerd (config and journal)"
else
    say "kept /etc/lockerd (config) and /var/lib/lockerd (journal); --purge deletes them"
fi
