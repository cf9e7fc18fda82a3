#!/usr/bin/env bash
# Install strongroom into .venv and run the whole system on the embedded defaults (SQLite and a
# local data folder, nothing else to install): start strongroom-server on 127.0.0.1, add a user
# with strongroom-admin, log in with the client (which makes the user replace the admin's
# password), back up a sample folder, change it, back up again, show the diff, restore it,
# compare, verify, and stop the server.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e .
BIN=.venv/bin
DEMO="${DEMO_DIR:-demo}"
rm -rf "$DEMO"
mkdir -p "$DEMO/sample/docs" "$DEMO/sample/photos"
DEMO="$(cd "$DEMO" && pwd)"
echo "quarterly report" > "$DEMO/sample/docs/report.txt"
echo "shopping list" > "$DEMO/sample/docs/list.txt"
head -c 3000000 /dev/urandom > "$DEMO/sample/photos/holiday.jpg"
ln -s docs/report.txt "$DEMO/sample/latest-report"
# The client keeps its settings and cache inside the demo folder, not in your home.
export STRONGROOM_CONFIG_DIR="$DEMO/client-config" STRONGROOM_CACHE_DIR="$DEMO/client-cache"

# 1. The server: first start creates the data folder, the users database and a TLS certificate.
$BIN/strongroom-server --host 127.0.0.1 --port 0 --data-dir "$DEMO/server-data" \
    > "$DEMO/server.out" 2> "$DEMO/server.log" &
SERVER_PID=$!
trap 'kill $SERVER_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    grep -q "fingerprint" "$DEMO/server.out" 2>/dev/null && break
    sleep 0.1
done
cat "$DEMO/server.out"
PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$DEMO/server.out")
FINGERPRINT=$($BIN/strongroom-admin --data-dir "$DEMO/server-data" fingerprint)

set -x
# 2. The admin adds a user and records the folder to back up on the user's machine.
echo "temporary password from the admin" | $BIN/strongroom-admin --data-dir "$DEMO/server-data" \
    user add ann --directory "$DEMO/sample" --password-stdin
$BIN/strongroom-admin --data-dir "$DEMO/server-data" user list
set +x

# 3. The user logs in: pins the certificate, and replaces the admin's password with their own
#    (the data keys are created on the client and wrapped with it; the admin cannot read them).
echo "ann's own secret password" > "$DEMO/ann-password"
STRONGROOM_PASSWORD="temporary password from the admin" $BIN/strongroom passwd \
    --server "127.0.0.1:$PORT" --user ann --fingerprint "$FINGERPRINT" \
    --new-password-file "$DEMO/ann-password"
export STRONGROOM_PASSWORD="ann's own secret password"
SR=$BIN/strongroom
set -x
$SR login --server "127.0.0.1:$PORT" --user ann --fingerprint "$FINGERPRINT"

# 4. Back up the recorded folder (no PATH needed), change it, back up again.
$SR backup
echo "one more line" >> "$DEMO/sample/docs/report.txt"
rm "$DEMO/sample/docs/list.txt"
echo "new" > "$DEMO/sample/docs/notes.txt"
$SR backup
$SR snapshots
$SR diff "$($SR snapshots --json | $BIN/python -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')" latest

# 5. Restore and compare; verify every stored byte.
$SR restore latest --target "$DEMO/restored"
diff -r "$DEMO/sample" "$DEMO/restored/sample"
$SR check --read-data
set +x
kill -TERM $SERVER_PID
wait $SERVER_PID || true
trap - EXIT
echo "server log:"
cat "$DEMO/server.log"
echo "demo ok: the restored copy in $DEMO/restored/sample equals $DEMO/sample"
