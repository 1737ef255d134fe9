#!/usr/bin/env bash
# Installs the Debian packages the stack runs for real (memcached; redis-server
# and redis-tools for the broker's clusters; chromium for the dashboard test).
# Says what to do when it cannot install them itself.
set -euo pipefail

need=()
command -v memcached >/dev/null 2>&1 || need+=(memcached)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# Only the test suite needs a browser (the dashboard test): `--with-browser`.
if [ "${1:-}" = "--with-browser" ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
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
