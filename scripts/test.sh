#!/usr/bin/env bash
# Install what the tests need into .venv, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet -e '.[test]'
# Debian packages the tests run for real: chromium for the console's browser tests (Playwright
# uses it, downloads nothing); PostgreSQL 15 and Ceph's radosgw for the scale-out tests (issue 9,
# tests/pgfixtures.py and tests/s3fixtures.py start private instances on 127.0.0.1); acl,
# libcap2-bin and e2fsprogs for extended attributes, capabilities and file flags.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/lib/postgresql/15/bin/initdb ] || missing+=(postgresql)
{ command -v ceph-mon && command -v ceph-osd && command -v radosgw && command -v ceph; } \
    >/dev/null 2>&1 || missing+=(ceph-mon ceph-osd radosgw ceph-common)
# FUSE 3 for the `strongroom mount` tests (libfuse3 and fusermount3; /dev/fuse must exist).
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v setfacl >/dev/null 2>&1 || missing+=(acl)
command -v setcap >/dev/null 2>&1 || missing+=(libcap2-bin)
command -v chattr >/dev/null 2>&1 || missing+=(e2fsprogs)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing ${missing[*]} (apt-get)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "the tests need Debian's ${missing[*]}: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi
# The fidelity tests run strongroom as user nobody (so that mode 000 is really unreadable);
# nobody must be able to reach this checkout's .venv: give the folders above it the
# traverse bit only (o+x, no listing) when a private temp folder (a CI clone) hides it.
if [ "$(id -u)" = 0 ]; then
    dir="$(pwd)"
    while [ "$dir" != "/" ]; do
        [ -x "$dir" ] && [ "$(stat -c %A "$dir" | cut -c10)" = "-" ] && chmod o+x "$dir"
        dir="$(dirname "$dir")"
    done
fi
echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy --strict"
.venv/bin/mypy --strict src/strongroom
echo "== pytest"
.venv/bin/python -m pytest -n 2 -q "$@"
if [ "$#" -eq 0 ]; then
    # The network end-to-end tests once more, each against two scale-out nodes on PostgreSQL
    # and radosgw behind a round-robin proxy (tests/clusterfixtures.py: ClusterServer).
    echo "== pytest: the network end-to-end tests through two scale-out nodes"
    STRONGROOM_TEST_NODES=2 .venv/bin/python -m pytest -n 2 -q -m "not embedded_only" \
        tests/test_network_e2e.py tests/test_network_tls.py tests/test_network_interactive.py \
        tests/test_adversarial_commits.py tests/test_server_hostile.py tests/test_recovery.py \
        tests/test_copy.py tests/test_mount.py
fi
