#!/usr/bin/env bash
# Icarus Verilog (the second simulator) comes from the system's packages.
set -euo pipefail
if command -v iverilog >/dev/null && command -v vvp >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Icarus Verilog with apt-get" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog >/dev/null
else
    echo "moepim: Icarus Verilog is missing; install it with 'sudo apt-get install -y iverilog'" \
         "(Debian/Ubuntu) or your system's iverilog 11+ package. Icarus tests fail until then." >&2
fi
