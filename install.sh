#!/usr/bin/env bash
# Set up MagickBox on Debian/Ubuntu: system tools (dcmtk, jq, curl, PostgreSQL for its
# tests, a C compiler for the receiver's compiled walk) and a virtualenv in .venv with the
# package and its test tools.
set -euo pipefail
cd "$(dirname "$0")"

as_root=()
[[ $(id -u) -eq 0 ]] || as_root=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends \
  python3 python3-venv python3-dev gcc libc6-dev \
  dcmtk jq curl postgresql chromium orthanc podman runc busybox-static \
  slurm-wlm munge openssl \
  >/dev/null

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[test,postgres]"
echo "MagickBox installed in $(pwd)/.venv"
