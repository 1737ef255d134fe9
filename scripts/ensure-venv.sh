#!/usr/bin/env bash
# Makes the venv, or mends one an earlier run left half-made, so that make never
# stops on it:
#   - no venv, or its python missing or broken  -> made again from scratch;
#   - python fine but pip missing or broken     -> pip put back with ensurepip
#                                                  (or, failing that, made again).
# A healthy venv is left alone. After a repair the install stamps are removed and
# pyvenv.cfg is touched, so make installs the packages again.
#
#   ensure-venv.sh PYTHON VENV
set -euo pipefail

python="${1:?usage: ensure-venv.sh PYTHON VENV}"
venv="${2:?usage: ensure-venv.sh PYTHON VENV}"
here="$(cd "$(dirname "$0")" && pwd)"

python_ok() { [ -f "$venv/pyvenv.cfg" ] && "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; }
pip_ok() { "$venv/bin/python" -m pip --version >/dev/null 2>&1; }

# Only ever delete what looks like a venv (or its beginning): never a directory with
# anything else in it, whatever VENV says.
remove_venv() {
  [ -e "$venv" ] || return 0
  if [ ! -d "$venv" ]; then
    echo "scaleflow: $venv is not a directory; move it away and run make again" >&2
    exit 1
  fi
  local entry
  for entry in "$venv"/* "$venv"/.[!.]*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue
    case "$(basename "$entry")" in
      bin | include | lib | lib64 | share | pyvenv.cfg | .installed* | .gitignore) ;;
      *)
        echo "scaleflow: $venv is broken but holds $(basename "$entry"), which no venv" >&2
        echo "  has; not deleting it. Remove $venv yourself and run make again." >&2
        exit 1
        ;;
    esac
  done
  rm -rf "$venv"
}

make_venv() {
  remove_venv
  if ! "$python" -m venv "$venv"; then
    # `import ensurepip` worked (install-system-deps.sh checked) but the venv still
    # could not be made: get the interpreter's venv package after all, and try again.
    echo "scaleflow: $python -m venv failed; installing its venv package" >&2
    "$here/install-system-deps.sh" --python "$python" --venv-failed
    remove_venv
    "$python" -m venv "$venv"
  fi
}

if [ ! -e "$venv" ]; then
  echo "scaleflow: making the venv $venv with $python" >&2
  make_venv
elif ! python_ok; then
  echo "scaleflow: $venv is half-made ($venv/bin/python missing or broken); making it again" >&2
  make_venv
elif ! pip_ok; then
  echo "scaleflow: $venv has no working pip; putting it back" >&2
  if ! "$venv/bin/python" -m ensurepip --upgrade --default-pip >/dev/null 2>&1 || ! pip_ok; then
    echo "scaleflow: ensurepip could not mend $venv; making it again" >&2
    make_venv
  fi
else
  exit 0
fi

if ! python_ok || ! pip_ok; then
  echo "scaleflow: $venv still has no working python and pip after a repair" >&2
  exit 1
fi
# Whatever was installed before is not to be trusted: install again.
rm -f "$venv"/.installed*
touch "$venv/pyvenv.cfg"
