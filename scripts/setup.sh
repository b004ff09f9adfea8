#!/usr/bin/env bash
# Installs everything fwd's build and tests need on a fresh Debian 12 machine:
# Debian packages (only those missing), the Python venv in .venv, and fwd itself
# (editable, which compiles the C core through cffi). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(gcc make libc6-dev iproute2 tcpdump tshark
              clang llvm libclang-rt-14-dev libbpf-dev libxdp-dev libelf-dev pkg-config bpftool
              nftables ethtool netsniff-ng iputils-ping curl nginx-light openssl procps psmisc
              bird2 haproxy)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
stamp=.venv/.fwd-deps
want=$(sha256sum pyproject.toml requirements-test.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -r requirements-test.txt
  echo "$want" > "$stamp"
fi
# The XDP steering program (fwd/bpf/steer.bpf.o), loaded at run time by `fwd run`.
make -s -C native/bpf
# (Re)build the C core: cheap, and picks up every change under native/.
.venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
echo "setup: ok ($(.venv/bin/python --version), fwd at $(.venv/bin/fwd --version 2>/dev/null || echo '?'))"
