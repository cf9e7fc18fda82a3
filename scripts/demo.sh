#!/usr/bin/env bash
# Install strongroom into .venv and run a backup + restore of a sample folder on the embedded
# defaults (a local repository folder, SQLite index, nothing else to install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
SR=.venv/bin/strongroom
DEMO="${DEMO_DIR:-demo}"
rm -rf "$DEMO"
mkdir -p "$DEMO/sample/docs" "$DEMO/sample/photos"
echo "quarterly report" > "$DEMO/sample/docs/report.txt"
echo "shopping list" > "$DEMO/sample/docs/list.txt"
head -c 3000000 /dev/urandom > "$DEMO/sample/photos/holiday.jpg"
ln -s docs/report.txt "$DEMO/sample/latest-report"
export STRONGROOM_PASSWORD="${STRONGROOM_PASSWORD:-demo password, change me}"
export STRONGROOM_CACHE_DIR="$DEMO/cache"
set -x
$SR init --repo "$DEMO/repo"
$SR backup --repo "$DEMO/repo" "$DEMO/sample"
echo "one more line" >> "$DEMO/sample/docs/report.txt"
rm "$DEMO/sample/docs/list.txt"
echo "new" > "$DEMO/sample/docs/notes.txt"
$SR backup --repo "$DEMO/repo" "$DEMO/sample"
$SR snapshots --repo "$DEMO/repo"
$SR diff --repo "$DEMO/repo" "$($SR snapshots --repo "$DEMO/repo" --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')" latest
$SR restore latest --repo "$DEMO/repo" --target "$DEMO/restored"
diff -r "$DEMO/sample" "$DEMO/restored/sample"
$SR check --repo "$DEMO/repo" --read-data
set +x
echo "demo ok: the restored copy in $DEMO/restored/sample equals $DEMO/sample"
