#!/usr/bin/env python3
"""Make docs/console-dashboard.png: a real server with demo accounts, its console in chromium.

Four accounts with real backups (one near its quota, one reporting a failed backup, one
overdue), plus 30 days of made-up usage history written into the history table so the chart
has a shape (the only invented data; it is labelled "demo data" in the README).

    .venv/bin/python scripts/console_screenshot.py [--out docs/console-dashboard.png]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("STRONGROOM_INSECURE_TEST_KDF", "1")  # fast logins for the demo accounts

from playwright.sync_api import sync_playwright  # noqa: E402

from consolefixtures import CONSOLE_ADMIN, CONSOLE_PASSWORD, console_server  # noqa: E402
from strongroom.protocol import messages as m  # noqa: E402
from test_server_hostile import connect  # noqa: E402

DAY_NS = 86400 * 10**9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console-dashboard.png")
    parser.add_argument("--path", default="/", help="the console page to show, e.g. /users/bert")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="strongroom-shot-"))
    server = console_server(tmp, env={"STRONGROOM_EXPECTED_INTERVAL": str(26 * 3600)})
    try:
        people = {
            "ann": ("/home/ann/Documents", "2G", 40),
            "bert": ("C:\\Users\\bert\\Pictures", "600M", 520),
            "carla": ("/Users/carla/Projects", "", 90),
            "dev-laptop": ("/home/dev", "5G", 160),
        }
        for name, (folder, quota, mib) in people.items():
            extra = ("--quota", quota) if quota else ()
            cli = server.add_user(name, tmp, directory=folder, extra=extra)
            src = tmp / f"src-{name}"
            src.mkdir()
            (src / "data.bin").write_bytes(os.urandom(mib * 1024 * 1024))
            cli.backup(src)
        with connect(server, "carla") as raw:
            raw.call(m.ReportFailure("server unreachable (network is down)"))
        db = sqlite3.connect(server.data_dir / "users.sqlite")
        # dev-laptop last backed up 3 days ago (overdue); a month of usage history for all.
        db.execute(
            "UPDATE users SET last_backup_ns = ?, last_success_ns = ? WHERE name = 'dev-laptop'",
            (time.time_ns() - 3 * DAY_NS, time.time_ns() - 3 * DAY_NS),
        )
        now = time.time_ns()
        for uid, (_name, (_f, _q, mib)) in enumerate(people.items(), start=1):
            for day in range(30, 0, -1):
                stored = int(mib * 1024 * 1024 * (0.55 + 0.45 * (30 - day) / 30))
                db.execute(
                    "INSERT INTO usage_history VALUES(?, ?, ?, ?, 'day')",
                    (uid, now - day * DAY_NS, stored, 1),
                )
        db.commit()
        db.close()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1280, "height": 1000}
            ).new_page()
            page.goto(f"https://127.0.0.1:{server.web_port}/")
            page.get_by_label("Name").fill(CONSOLE_ADMIN)
            page.get_by_label("Password").fill(CONSOLE_PASSWORD)
            page.get_by_role("button", name="Log in").click()
            if args.path != "/":
                page.goto(f"https://127.0.0.1:{server.web_port}{args.path}")
            page.wait_for_function("document.querySelector('#usage-chart').width > 0")
            time.sleep(0.5)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
