#!/usr/bin/env bash
# Install the Mobile VLA runtime as systemd services on a Jetson (or any Debian/Ubuntu machine).
#
#   sudo ./install.sh [--prefix DIR] [--no-venv] [--enable]
#   DESTDIR=/scratch ./install.sh [--with-venv]      # stage everything under /scratch (image builds, tests)
#
# Idempotent: run it again after `git pull`; it prints one line per thing it changed or left alone. Files an operator
# edits (/etc/mobile-vla/runtime.yaml, runtime.env) are written only when absent, never overwritten.
# With DESTDIR: no user, no systemctl, no venv (unless --with-venv: that venv only works at DESTDIR's path).
set -euo pipefail

PREFIX=/opt/mobile-vla
DESTDIR=${DESTDIR:-}
VENV_MODE=default          # default | yes | no
ENABLE=no
PYTHON=${PYTHON:-python3}
USER_NAME=mobile-vla
STATE_DIR=/var/lib/mobile-vla
CONF_DIR=/etc/mobile-vla
UNIT_DIR=/etc/systemd/system
UNITS="mobile-vla-build-engines.service mobile-vla-runtime.service"
# Device groups of the service account, each only where it exists: GPU/camera (video, render), serial (dialout),
# power/INA sensors on I2C (i2c), GPIO (gpio), jetson-stats' socket (jtop).
GROUPS_WANTED="video render dialout i2c gpio jtop"
EXTRAS="replay,capture,serial"

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    cat <<USAGE
Options:
  --prefix DIR   install root for the venv and helper (default $PREFIX)
  --no-venv      do not create or update the venv (DIR/venv)
  --with-venv    create the venv even with DESTDIR set
  --enable       systemctl enable --now mobile-vla-runtime.service afterwards
  -h, --help     this text
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --no-venv) VENV_MODE=no ;;
        --with-venv) VENV_MODE=yes ;;
        --enable) ENABLE=yes ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$PREFIX" in /*) ;; *) echo "install.sh: --prefix must be an absolute path, got '$PREFIX'" >&2; exit 2 ;; esac
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR%/}
[ "$VENV_MODE" = default ] && { [ -n "$DESTDIR" ] && VENV_MODE=no || VENV_MODE=yes; }
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo ./install.sh), or stage into a directory with DESTDIR=DIR ./install.sh" >&2
    exit 2
fi
if [ -n "$DESTDIR" ] && [ "$ENABLE" = yes ]; then
    echo "install.sh: --enable does nothing with DESTDIR (no systemctl on a staged tree)" >&2
fi

SRC=$(cd "$(dirname "$0")" && pwd)
D=$DESTDIR
say() { printf '%s\n' "$*"; }
systemd_running() { [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# make_dir PATH MODE [OWNER]: create or fix a directory.
make_dir() {
    local path=$D$1 mode=$2 owner=${3:-}
    if [ ! -d "$path" ]; then
        install -d -m "$mode" "$path"
        say "created: $path"
    elif [ "$(stat -c %a "$path")" != "${mode#0}" ]; then
        chmod "$mode" "$path"
        say "changed mode $mode: $path"
    else
        say "unchanged: $path"
    fi
    if [ -n "$owner" ] && [ -z "$DESTDIR" ] && [ "$(stat -c %U:%G "$path")" != "$owner" ]; then
        chown "$owner" "$path"
        say "changed owner $owner: $path"
    fi
}

# put_file SOURCE DEST MODE: install SOURCE (with /opt/mobile-vla replaced by --prefix) unless DEST already matches.
put_file() {
    local src=$1 dest=$D$2 mode=$3 tmp
    tmp=$(mktemp)
    sed "s#/opt/mobile-vla#$PREFIX#g" "$src" > "$tmp"
    if [ -f "$dest" ] && cmp -s "$tmp" "$dest" && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
        say "unchanged: $dest"
    else
        local verb=installed
        [ -e "$dest" ] && verb=updated
        install -m "$mode" "$tmp" "$dest"
        say "$verb: $dest"
    fi
    rm -f "$tmp"
}

# put_once SOURCE DEST MODE: an operator's file, written only when absent.
put_once() {
    local src=$1 dest=$D$2 mode=$3
    if [ -e "$dest" ]; then
        if cmp -s "$src" "$dest"; then
            say "unchanged: $dest"
        else
            say "unchanged: $dest (kept your edits; the current template is $PREFIX/share/$(basename "$src"))"
        fi
    else
        install -m "$mode" "$src" "$dest"
        say "created: $dest (from $(basename "$src"))"
    fi
}

# --- the service account -----------------------------------------------------------------------------------------
if [ -n "$DESTDIR" ]; then
    say "skipped (DESTDIR): user and group $USER_NAME"
else
    if getent group "$USER_NAME" >/dev/null; then
        say "unchanged: group $USER_NAME"
    else
        groupadd --system "$USER_NAME"
        say "created group $USER_NAME"
    fi
    if id -u "$USER_NAME" >/dev/null 2>&1; then
        say "unchanged: user $USER_NAME"
    else
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --gid "$USER_NAME" --home-dir "$STATE_DIR" --no-create-home --shell "$nologin" \
            --comment "Mobile VLA runtime" "$USER_NAME"
        say "created user $USER_NAME"
    fi
    for group in $GROUPS_WANTED; do
        if ! getent group "$group" >/dev/null; then
            say "skipped: group $group (does not exist here)"
        elif id -nG "$USER_NAME" | tr ' ' '\n' | grep -qx "$group"; then
            say "unchanged: $USER_NAME in group $group"
        else
            usermod -a -G "$group" "$USER_NAME"
            say "added $USER_NAME to group $group"
        fi
    done
fi

# --- files -------------------------------------------------------------------------------------------------------
make_dir "$PREFIX" 0755
make_dir "$PREFIX/libexec" 0755
make_dir "$PREFIX/share" 0755
make_dir "$UNIT_DIR" 0755
make_dir "$CONF_DIR" 0755
make_dir "$STATE_DIR" 0750 "$USER_NAME:$USER_NAME"
for unit in $UNITS; do
    put_file "$SRC/systemd/$unit" "$UNIT_DIR/$unit" 0644
done
put_file "$SRC/systemd/mobile-vla-engines-needed" "$PREFIX/libexec/mobile-vla-engines-needed" 0755
put_file "$SRC/README.md" "$PREFIX/README.md" 0644
put_file "$SRC/systemd/runtime.yaml.example" "$PREFIX/share/runtime.yaml.example" 0644
put_file "$SRC/systemd/runtime.env.example" "$PREFIX/share/runtime.env.example" 0644
put_once "$SRC/systemd/runtime.yaml.example" "$CONF_DIR/runtime.yaml" 0644
put_once "$SRC/systemd/runtime.env.example" "$CONF_DIR/runtime.env" 0644

# --- the venv (system site packages: JetPack's tensorrt is only installed for the system python3) -----------------
VENV=$D$PREFIX/venv
if [ "$VENV_MODE" = no ]; then
    if [ -n "$DESTDIR" ]; then
        say "skipped (DESTDIR): venv $VENV (--with-venv creates it)"
    else
        say "skipped: venv $VENV (--no-venv)"
    fi
else
    if [ -x "$VENV/bin/python" ]; then
        say "unchanged: venv $VENV"
    else
        "$PYTHON" -m venv --system-site-packages "$VENV"
        say "created venv $VENV (--system-site-packages)"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q "$SRC[$EXTRAS]"
    say "installed: mobile-vla-edge[$EXTRAS] from $SRC into $VENV (pip)"
    if "$VENV/bin/python" -c "import pycuda.driver" 2>/dev/null; then
        say "unchanged: pycuda in $VENV"
    elif PATH=/usr/local/cuda/bin:$PATH command -v nvcc >/dev/null 2>&1; then
        PATH=/usr/local/cuda/bin:$PATH "$VENV/bin/python" -m pip install -q pycuda
        say "installed: pycuda into $VENV (compiled against $(PATH=/usr/local/cuda/bin:$PATH command -v nvcc))"
    else
        say "skipped: pycuda (no nvcc: no CUDA here; the runtime will use ONNX Runtime)"
    fi
    if "$VENV/bin/python" -c "import tensorrt" 2>/dev/null; then
        say "found: tensorrt $("$VENV/bin/python" -c 'import tensorrt; print(tensorrt.__version__)') in $VENV"
    else
        say "note: no tensorrt in $VENV (on a Jetson: sudo apt-get install nvidia-jetpack, see docs/jetson.md)"
    fi
fi

# --- systemd -----------------------------------------------------------------------------------------------------
if systemd_running; then
    systemctl daemon-reload
    say "reloaded systemd (daemon-reload)"
    if [ "$ENABLE" = yes ]; then
        systemctl enable --now mobile-vla-runtime.service
        say "enabled and started: mobile-vla-runtime.service"
    fi
else
    if [ -n "$DESTDIR" ]; then
        say "skipped (DESTDIR): systemctl daemon-reload"
    else
        say "skipped: systemctl daemon-reload (systemd is not running)"
    fi
fi

cat <<NEXT

Next steps:
  1. Copy the bundle built on the workstation:   rsync -a bundle/ robot:$STATE_DIR/bundle/
     then: sudo chown -R $USER_NAME:$USER_NAME $STATE_DIR/bundle
  2. Check the settings:  $CONF_DIR/runtime.yaml (camera, sinks, safety limits), $CONF_DIR/runtime.env (bundle path)
     $PREFIX/venv/bin/runtime --config $CONF_DIR/runtime.yaml --print-config
  3. Build the engines and start:  sudo systemctl enable --now mobile-vla-runtime
     (the first start builds the TensorRT engines: many minutes; watch: journalctl -u mobile-vla-build-engines -f)
  4. Logs:  journalctl -u mobile-vla-runtime -f        Status: systemctl status mobile-vla-runtime
NEXT
