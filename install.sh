#!/usr/bin/env bash
# Install the Mobile VLA runtime as systemd services on a Jetson (or any Debian/Ubuntu machine).
#
#   sudo ./install.sh [--prefix DIR] [--no-venv] [--apt] [--enable]
#   DESTDIR=/scratch ./install.sh [--with-venv]      # stage everything under /scratch (image builds, tests)
#   ./install.sh --detect                            # print the detected release and the choices, change nothing
#
# Idempotent: run it again after `git pull`; it prints one line per thing it changed or left alone. Files an operator
# edits (/etc/mobile-vla/runtime.yaml, runtime.env) are written only when absent, never overwritten.
# With DESTDIR: no user, no systemctl, no apt, no venv (unless --with-venv: that venv only works at DESTDIR's path).
# Supported Jetson releases: JetPack 6 (L4T R36, Ubuntu 22.04, Python 3.10) and JetPack 7 (L4T R38/R39, Ubuntu 24.04,
# Python 3.12); others are refused unless MOBILE_VLA_JETPACK=6|7 says which line's choices to use (docs/jetson.md).
set -euo pipefail

PREFIX=/opt/mobile-vla
DESTDIR=${DESTDIR:-}
VENV_MODE=default          # default | yes | no
ENABLE=no
APT=no
DETECT_ONLY=no
PYTHON=${PYTHON:-}          # empty: the JetPack line's python3.X if present, else python3
USER_NAME=mobile-vla
STATE_DIR=/var/lib/mobile-vla
CONF_DIR=/etc/mobile-vla
UNIT_DIR=/etc/systemd/system
UNITS="mobile-vla-build-engines.service mobile-vla-runtime.service"
# Device groups of the service account, each only where it exists: GPU/camera (video, render), serial (dialout),
# power/INA sensors on I2C (i2c), GPIO (gpio), jetson-stats' socket (jtop).
GROUPS_WANTED="video render dialout i2c gpio jtop"
EXTRAS="replay,capture,serial,jetson"
# Every package from the lock, pinned with its hashes (make lock writes them; docs/development.md): nothing is resolved
# on the robot. The project itself goes in without dependencies, built by the locked setuptools.
LOCK=requirements/robot.txt
CUDA_LOCK=requirements/robot-cuda.txt   # pycuda, compiled here against CUDA, where nvcc exists

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    cat <<USAGE
Options:
  --prefix DIR   install root for the venv and helper (default $PREFIX)
  --no-venv      do not create or update the venv (DIR/venv)
  --with-venv    create the venv even with DESTDIR set
  --apt          apt-get install this release's build packages (PyGObject, pycuda, GStreamer) first
  --enable       systemctl enable --now mobile-vla-runtime.service afterwards
  --detect       print the detected JetPack/Ubuntu/Python and the packages chosen, then exit (no root needed)
  -h, --help     this text
Environment:
  MOBILE_VLA_JETPACK=6|7  use that JetPack line's choices whatever /etc says (a release this script does not know)
  MOBILE_VLA_ROOT=DIR     read DIR/etc/nv_tegra_release and DIR/etc/os-release instead of /etc (tests)
  PYTHON=python3.X        the interpreter for the venv (default: the JetPack line's, see --detect)
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --no-venv) VENV_MODE=no ;;
        --with-venv) VENV_MODE=yes ;;
        --apt) APT=yes ;;
        --enable) ENABLE=yes ;;
        --detect) DETECT_ONLY=yes ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$PREFIX" in /*) ;; *) echo "install.sh: --prefix must be an absolute path, got '$PREFIX'" >&2; exit 2 ;; esac
PREFIX=${PREFIX%/}
DESTDIR=${DESTDIR%/}
[ "$VENV_MODE" = default ] && { [ -n "$DESTDIR" ] && VENV_MODE=no || VENV_MODE=yes; }

# --- the release: JetPack line, Ubuntu, Python, apt packages --------------------------------------------------------
# The apt packages each line needs to build PyGObject (the capture extra, pinned <3.51: girepository-1.0) and pycuda,
# plus GStreamer's tools, plugins and introspection data. Ubuntu 24.04 also gets libgirepository-2.0-dev, which
# PyGObject 3.51+ builds against (Ubuntu 22.04 has no such package: GLib 2.72). docs/jetson.md ("JetPack 6 and 7")
# lists the same names, and tests/deploy checks both against the Ubuntu package index as read when they were written.
APT_PACKAGES_JP6="python3-venv python3-dev build-essential pkg-config libgirepository1.0-dev libcairo2-dev \
gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0"
APT_PACKAGES_JP7="$APT_PACKAGES_JP6 libgirepository-2.0-dev"
SUPPORTED="JetPack 6 (L4T R36, Ubuntu 22.04, Python 3.10) and JetPack 7 (L4T R38/R39, Ubuntu 24.04, Python 3.12)"

# read_release: L4T (e.g. 36.4.3; empty when not a Jetson), OS_NAME and OS_VERSION (e.g. ubuntu 22.04) from
# $MOBILE_VLA_ROOT/etc/nv_tegra_release and $MOBILE_VLA_ROOT/etc/os-release.
read_release() {
    local root=${MOBILE_VLA_ROOT:-} first major revision
    root=${root%/}
    L4T='' L4T_LINE='' OS_NAME=unknown OS_VERSION=unknown
    if [ -e "$root/etc/nv_tegra_release" ]; then
        # "# R36 (release), REVISION: 4.3, GCID: ..., BOARD: generic, EABI: aarch64, DATE: ..."
        first=$(head -n 1 "$root/etc/nv_tegra_release" 2>/dev/null || true)
        L4T_LINE=$first
        major=$(printf '%s\n' "$first" | sed -n 's/^# *R\([0-9][0-9]*\) (release).*/\1/p')
        revision=$(printf '%s\n' "$first" | sed -n 's/.*REVISION: *\([0-9][0-9.]*[0-9]\).*/\1/p')
        L4T=${major:-unreadable}${revision:+.$revision}
    fi
    if [ -r "$root/etc/os-release" ]; then
        OS_NAME=$(sed -n 's/^ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/etc/os-release")
        OS_VERSION=$(sed -n 's/^VERSION_ID="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/etc/os-release")
        OS_NAME=${OS_NAME:-unknown} OS_VERSION=${OS_VERSION:-unknown}
    fi
}

# refuse WHAT: the release is not one this script supports; say what is, and how to go on.
refuse() {
    {
        echo "install.sh: unsupported release: $1."
        echo "  Supported: $SUPPORTED."
        echo "  Move the Jetson to JetPack 6 or 7 (docs/jetson.md, \"JetPack 6 and 7\"), or, if this release matches one"
        echo "  of them, set MOBILE_VLA_JETPACK=6 or MOBILE_VLA_JETPACK=7 to use that line's packages (not tested here):"
        echo "  sudo MOBILE_VLA_JETPACK=6 ./install.sh"
    } >&2
    exit 2
}

# choose_release: JETPACK (6, 7 or none: not a Jetson), WANT_PYTHON, APT_PACKAGES, HOW (why), or refuse.
choose_release() {
    local want_os
    HOW=detected
    if [ -n "${MOBILE_VLA_JETPACK:-}" ]; then
        case "$MOBILE_VLA_JETPACK" in
            6|7) JETPACK=$MOBILE_VLA_JETPACK; HOW="MOBILE_VLA_JETPACK=$JETPACK" ;;
            *) echo "install.sh: MOBILE_VLA_JETPACK must be 6 or 7, got '$MOBILE_VLA_JETPACK' (unset it to detect)" >&2
               exit 2 ;;
        esac
    elif [ -n "$L4T" ]; then
        case "${L4T%%.*}" in
            36) JETPACK=6 ;;
            38|39) JETPACK=7 ;;
            unreadable) refuse "unreadable /etc/nv_tegra_release (first line: '$L4T_LINE')" ;;
            35) refuse "L4T R$L4T on $OS_NAME $OS_VERSION (JetPack 5: its TensorRT has bindings for Python 3.8 only)" ;;
            *) refuse "L4T R$L4T on $OS_NAME $OS_VERSION" ;;
        esac
        [ "$JETPACK" = 6 ] && want_os=22.04 || want_os=24.04
        if [ "$OS_VERSION" != "$want_os" ]; then
            refuse "L4T R$L4T is JetPack $JETPACK, which comes with Ubuntu $want_os, but /etc/os-release says $OS_NAME $OS_VERSION"
        fi
    else
        JETPACK=none
    fi
    case "$JETPACK" in
        6) WANT_PYTHON=3.10; APT_PACKAGES=$APT_PACKAGES_JP6 ;;
        7) WANT_PYTHON=3.12; APT_PACKAGES=$APT_PACKAGES_JP7 ;;
        *) WANT_PYTHON=
           # not a Jetson: no TensorRT from JetPack; Ubuntu 24.04 gets its names, anything else 22.04's (same in Debian)
           if [ "$OS_VERSION" = 24.04 ]; then APT_PACKAGES=$APT_PACKAGES_JP7; else APT_PACKAGES=$APT_PACKAGES_JP6; fi ;;
    esac
}

# python_version PY: X.Y of that interpreter, or none when it does not run.
python_version() {
    local version
    version=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || version=
    echo "${version:-none}"
}

# choose_python: PY and PY_VERSION (X.Y, or none): $PYTHON if set, else pythonWANT if it runs, else python3.
choose_python() {
    PY=${PYTHON:-python3}
    PY_VERSION=$(python_version "$PY")
    if [ -z "$PYTHON" ] && [ -n "$WANT_PYTHON" ] && [ "$PY_VERSION" != "$WANT_PYTHON" ] \
            && [ "$(python_version "python$WANT_PYTHON")" = "$WANT_PYTHON" ]; then
        PY=python$WANT_PYTHON PY_VERSION=$WANT_PYTHON
    fi
}

read_release
choose_release
choose_python
if [ -n "$L4T" ]; then
    say_l4t="L4T R$L4T"
else
    say_l4t="no /etc/nv_tegra_release (not a Jetson)"
fi
printf 'detected: %s, %s %s, %s %s\n' "$say_l4t" "$OS_NAME" "$OS_VERSION" "$PY" "$PY_VERSION"
case "$JETPACK" in
    6) printf 'release: JetPack 6 (%s): L4T R36, Ubuntu 22.04, Python 3.10, CUDA 12, TensorRT 8.6/10.3\n' "$HOW" ;;
    7) printf 'release: JetPack 7 (%s): L4T R38/R39, Ubuntu 24.04, Python 3.12, CUDA 13, TensorRT 10\n' "$HOW" ;;
    *) printf 'release: not a Jetson: no JetPack TensorRT here, the runtime will use ONNX Runtime\n' ;;
esac
printf 'python: %s (%s)\n' "$PY" "$PY_VERSION"
printf 'apt packages: %s\n' "$APT_PACKAGES"
if [ -n "$WANT_PYTHON" ] && [ "$PY_VERSION" != "$WANT_PYTHON" ]; then
    echo "warning: JetPack $JETPACK's TensorRT bindings are for Python $WANT_PYTHON, but $PY is $PY_VERSION:" \
        "the venv will not see tensorrt (set PYTHON=python$WANT_PYTHON)"
fi
[ "$DETECT_ONLY" = yes ] && exit 0
if [ "$VENV_MODE" = yes ]; then
    case "$PY_VERSION" in
        none) echo "install.sh: no Python at '$PY' for the venv; install python3 (or set PYTHON=/path/to/python3.X)," \
                   "or skip the venv with --no-venv" >&2; exit 2 ;;
        3.[0-9]) echo "install.sh: $PY is Python $PY_VERSION; the runtime needs 3.10 or newer" \
                      "(JetPack 6: 3.10, JetPack 7: 3.12): set PYTHON=python3.X" >&2; exit 2 ;;
    esac
fi

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

# --- apt packages (the build dependencies of the venv's PyGObject and pycuda) --------------------------------------
# shellcheck disable=SC2086  # APT_PACKAGES is a list of words
if [ -n "$DESTDIR" ]; then
    [ "$APT" = yes ] && say "skipped (DESTDIR): apt-get install (--apt)"
elif [ "$APT" = yes ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $APT_PACKAGES
    say "installed: apt packages $APT_PACKAGES"
elif command -v dpkg-query >/dev/null 2>&1 && [ -z "${MOBILE_VLA_ROOT:-}" ]; then
    missing=
    for package in $APT_PACKAGES; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        say "note: missing apt packages:$missing (the venv's PyGObject and pycuda build against them):" \
            "sudo apt-get install$missing, or run ./install.sh --apt"
    else
        say "unchanged: apt packages (all installed)"
    fi
fi

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
        "$PY" -m venv --system-site-packages "$VENV"
        say "created venv $VENV ($PY $PY_VERSION, --system-site-packages)"
    fi
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$SRC/$LOCK"
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation "${SRC}[$EXTRAS]"
    say "installed: mobile-vla-edge[$EXTRAS] from $SRC into $VENV (pip, every dependency from $LOCK)"
    if "$VENV/bin/python" -c "import pycuda.driver" 2>/dev/null; then
        say "unchanged: pycuda in $VENV"
    elif PATH=/usr/local/cuda/bin:$PATH command -v nvcc >/dev/null 2>&1; then
        PATH=/usr/local/cuda/bin:$PATH "$VENV/bin/python" -m pip install -q --require-hashes --no-deps -r "$SRC/$CUDA_LOCK"
        say "installed: pycuda from $CUDA_LOCK into $VENV (compiled against $(PATH=/usr/local/cuda/bin:$PATH command -v nvcc))"
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
