#!/usr/bin/env bash
# Remove what install.sh installed.
#
#   sudo ./uninstall.sh [--prefix DIR] [--purge]
#   DESTDIR=/scratch ./uninstall.sh [--purge]         # a staged tree
#
# Stops and disables the services, removes the unit files, the helper and the venv. Keeps the operator's data and
# settings (/etc/mobile-vla, /var/lib/mobile-vla with the bundle, drop-ins from `systemctl edit`) and the
# mobile-vla user unless --purge. Idempotent: prints one line per thing removed or already absent.
set -euo pipefail

PREFIX=/opt/mobile-vla
DESTDIR=${DESTDIR:-}
PURGE=no
USER_NAME=mobile-vla
UNIT_DIR=/etc/systemd/system
UNITS="mobile-vla-runtime.service mobile-vla-build-engines.service"

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "uninstall.sh: --prefix needs a directory" >&2; exit 2; }; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --purge) PURGE=yes ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "uninstall.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$PREFIX" in /*) ;; *) echo "uninstall.sh: --prefix must be an absolute path, got '$PREFIX'" >&2; exit 2 ;; esac
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR%/}
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    echo "uninstall.sh: run as root (sudo ./uninstall.sh), or give a staged tree with DESTDIR=DIR" >&2
    exit 2
fi
D=$DESTDIR
say() { printf '%s\n' "$*"; }
systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

remove() {  # remove PATH (file or directory tree)
    local path=$D$1
    if [ -e "$path" ] || [ -L "$path" ]; then
        rm -rf -- "$path"
        say "removed: $path"
    else
        say "absent: $path"
    fi
}

keep() { [ -e "$D$1" ] && say "kept: $D$1 ($2; --purge removes it)" || true; }

# --- services ----------------------------------------------------------------------------------------------------
if systemd_running; then
    for unit in $UNITS; do
        if [ "$(systemctl show -p LoadState --value "$unit" 2>/dev/null)" = loaded ]; then
            systemctl disable --now "$unit" >/dev/null 2>&1 || systemctl stop "$unit" || true
            say "stopped and disabled: $unit"
        else
            say "absent: $unit (not loaded)"
        fi
    done
elif [ -n "$DESTDIR" ]; then
    say "skipped (DESTDIR): systemctl stop/disable"
    # what `systemctl enable` would have created in the staged tree
    remove "$UNIT_DIR/multi-user.target.wants/mobile-vla-runtime.service"
else
    say "skipped: systemctl stop/disable (systemd is not running)"
fi

# --- files install.sh owns ---------------------------------------------------------------------------------------
for unit in $UNITS; do
    remove "$UNIT_DIR/$unit"
done
remove "$PREFIX/venv"
remove "$PREFIX/libexec/mobile-vla-engines-needed"
remove "$PREFIX/README.md"
remove "$PREFIX/share/runtime.yaml.example"
remove "$PREFIX/share/runtime.env.example"
for dir in "$PREFIX/libexec" "$PREFIX/share" "$PREFIX"; do
    if [ -d "$D$dir" ]; then
        if rmdir "$D$dir" 2>/dev/null; then say "removed: $D$dir"; else say "kept: $D$dir (not empty)"; fi
    fi
done

# --- the operator's settings and data ----------------------------------------------------------------------------
if [ "$PURGE" = yes ]; then
    for unit in $UNITS; do
        remove "$UNIT_DIR/$unit.d"
    done
    remove /etc/mobile-vla
    remove /var/lib/mobile-vla
    remove /var/cache/mobile-vla
    if [ -n "$DESTDIR" ]; then
        say "skipped (DESTDIR): user and group $USER_NAME"
    else
        if id -u "$USER_NAME" >/dev/null 2>&1; then
            userdel "$USER_NAME"
            say "removed user $USER_NAME"
        else
            say "absent: user $USER_NAME"
        fi
        if getent group "$USER_NAME" >/dev/null; then
            groupdel "$USER_NAME"
            say "removed group $USER_NAME"
        else
            say "absent: group $USER_NAME"
        fi
    fi
else
    for unit in $UNITS; do
        keep "$UNIT_DIR/$unit.d" "your drop-ins"
    done
    keep /etc/mobile-vla "your settings"
    keep /var/lib/mobile-vla "the bundle and its engines"
    keep /var/cache/mobile-vla "caches"
    if [ -z "$DESTDIR" ] && id -u "$USER_NAME" >/dev/null 2>&1; then say "kept: user $USER_NAME (--purge removes it)"; fi
fi

if systemd_running; then
    systemctl daemon-reload
    systemctl reset-failed $UNITS >/dev/null 2>&1 || true
    say "reloaded systemd (daemon-reload)"
fi
