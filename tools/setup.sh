#!/usr/bin/env bash
# Installs everything the agent, its local stack and its tests need, on Debian (as root or with sudo).
# Idempotent: a second run only checks. Used by tools/run-local and tools/test (and so by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

DEBIAN_PACKAGES=(
  python3 python3-venv python3-pip        # the agent
  mosquitto mosquitto-clients             # MQTT broker (local stack, tests, IoT Hub stand-in)
  mpd mpc                                 # the player and its command-line client
  sox libsox-fmt-all                      # sample tracks for the local stack and tests
  openssl                                 # test certificates
  graphviz                                # statechart diagrams (SVG)
  rclone time                             # content sync benchmark: baseline and peak RSS
  nodejs npm                              # Azurite (Azure Blob Storage emulator)
  systemd                                 # systemd-analyze verify of the unit file
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# node may come from elsewhere (e.g. NodeSource): don't fight it
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for pkg in "${missing[@]}"; do [[ "$pkg" == nodejs || "$pkg" == npm ]] || filtered+=("$pkg"); done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts system-wide mosquitto/mpd services where systemd runs; the project never uses them
# (everything runs on private ports), so they are left alone.

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing the agent and its Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

if [ -f package-lock.json ]; then
  lockstamp=node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)
  if [ ! -f "$lockstamp" ]; then
    echo "setup: installing Azurite (npm ci)"
    npm ci --silent --no-audit --no-fund >/dev/null
    touch "$lockstamp"
  fi
fi
echo "setup: ok"
