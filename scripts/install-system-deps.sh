#!/usr/bin/env bash
# Installs the Debian packages the stack runs for real (memcached; redis-server
# and redis-tools for the broker's clusters; chromium and tmux for the dashboard and
# CLI tests), and,
# with `--python PY`, what PY needs to make a venv (Debian splits `ensurepip` off
# into python3.X-venv). One apt-get run, before any pip step.
# Says what to do when it cannot install them itself.
#
#   install-system-deps.sh [--with-browser] [--python PY [--venv-failed]] [--print]
#
# `--venv-failed`: `PY -m venv` has just failed, so PY's venv package is wanted even
# if `import ensurepip` works. `--print`: only print what would be installed.
set -euo pipefail

browser=0
python=""
venv_failed=0
print_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --with-browser) browser=1 ;;
    --python) python="${2:?--python needs an interpreter}"; shift ;;
    --venv-failed) venv_failed=1 ;;
    --print) print_only=1 ;;
    *) echo "install-system-deps.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# Only the test suite needs a browser (the dashboard test) and a terminal
# multiplexer (the CLI's live view): `--with-browser`.
if [ "$browser" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v tmux >/dev/null 2>&1 || need+=(tmux)
fi

# What `$python -m venv` needs. Written for any interpreter: a Debian python3.X gets
# python3.X-venv; one built elsewhere (pyenv, a tarball) without ensurepip cannot be
# mended by apt, so that is said instead.
if [ -n "$python" ]; then
  if ! command -v "$python" >/dev/null 2>&1; then
    case "$(basename "$python")" in
      python3.[0-9]*) need+=("$(basename "$python")" "$(basename "$python")-venv") ;;
      python3) need+=(python3 python3-venv) ;;
      *)
        echo "scaleflow: $python not found; install Python 3.11 or run make PYTHON=<python3.11>" >&2
        exit 1
        ;;
    esac
  elif [ "$venv_failed" = 1 ] || ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    read -r version prefix < <("$python" -c \
      'import sys; print("%d.%d" % sys.version_info[:2], sys.base_prefix)')
    if [ "$prefix" != /usr ]; then
      echo "scaleflow: $python (in $prefix) cannot make a venv: its ensurepip is missing," >&2
      echo "  and it is no Debian python that python$version-venv would mend." >&2
      echo "  Rebuild it with ensurepip, or run: make PYTHON=/usr/bin/python$version" >&2
      exit 1
    fi
    need+=("python$version-venv")
  fi
fi

if [ "$print_only" = 1 ]; then
  echo "${need[*]}"
  exit 0
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "scaleflow: installing Debian packages: ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "scaleflow: cannot install ${need[*]} without root." >&2
  echo "  Run: sudo apt-get install -y ${need[*]}   then run make again." >&2
  exit 1
fi
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's package starts a system memcached on 11211; scaleflow runs its own.
# Debian's redis-server also starts the machine's own Redis on 6379: it is left
# alone, as scaleflow's redis-server processes never use 6379.
for pkg in "${need[@]}"; do
  [ "$pkg" = memcached ] && { $SUDO service memcached stop >/dev/null 2>&1 || true; }
done
exit 0
