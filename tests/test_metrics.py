"""/metrics on the console port, parsed with prometheus_client's own parser (issue 10)."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from consolefixtures import console_server
from netfixtures import NetCli, Server
from strongroom.protocol import messages as m
from test_server_hostile import connect

pytestmark = pytest.mark.timeout(180)


def scrape(server: Server, token: str | None = None) -> dict[str, dict[tuple[str, ...], float]]:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"https://127.0.0.1:{server.web_port}/metrics", headers=headers)
    with urllib.request.urlopen(req, context=tls, timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[tuple(f"{k}={v}" for k, v in labels)] = sample.value
    return out


def test_metrics_match_usage_and_count_what_happened(tmp_path: Path) -> None:
    server = console_server(tmp_path)
    try:
        alice = server.add_user("alice", tmp_path, extra=("--quota", "1G"))
        bob = server.add_user("bob", tmp_path, password="bob's password")
        src = tmp_path / "src"
        src.mkdir()
        (src / "data.bin").write_bytes(os.urandom(300_000))
        alice.backup(src)
        alice.backup(src)
        bob.backup(src)
        bad = NetCli(tmp_path / "client-x", server, "alice", "wrong password")
        assert bad.run("snapshots", check=False).returncode == 1
        with connect(server, "bob", "bob's password") as raw:  # as a scheduled run reports
            assert raw.call(m.ReportFailure("server unreachable")) == m.Ok()
        metrics = scrape(server)
        usage = {r["name"]: r for r in json.loads(server.admin("usage", "--json").stdout)}
        for name in ("alice", "bob"):
            key = (f"user={name}",)
            assert metrics["strongroom_user_stored_bytes"][key] == usage[name]["stored_bytes"]
            assert metrics["strongroom_user_snapshots"][key] == usage[name]["snapshots"]
            assert (
                metrics["strongroom_user_quota_used_bytes"][key] == usage[name]["quota_used_bytes"]
            )
        assert metrics["strongroom_user_quota_bytes"] == {("user=alice",): 1024**3}
        assert metrics["strongroom_user_last_backup_success"][("user=alice",)] == 1
        assert metrics["strongroom_user_last_backup_success"][("user=bob",)] == 0
        assert metrics["strongroom_user_seconds_since_last_success"][("user=alice",)] < 120
        assert metrics["strongroom_user_backup_overdue"][("user=alice",)] == 0
        assert metrics["strongroom_commits_total"][("result=ok",)] == 3
        assert metrics["strongroom_auth_failures_total"][()] >= 1
        assert metrics["strongroom_connections_total"][()] >= 5
        assert metrics["strongroom_received_bytes_total"][()] > 600_000
        assert metrics["strongroom_sent_bytes_total"][()] > 0
        assert metrics["strongroom_disk_free_bytes"][()] > 0
        assert metrics["strongroom_users"][()] == 2
        latency = metrics["strongroom_request_duration_seconds_count"]
        assert latency[("request=Commit",)] == 3 and latency[("request=PutBlobs",)] >= 2
    finally:
        server.kill()


def test_metrics_need_the_token_when_one_is_set(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("a-long-random-metrics-token\n")
    server = console_server(tmp_path, env={"STRONGROOM_METRICS_TOKEN_FILE": str(token_file)})
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            scrape(server)
        assert err.value.code == 401
        with pytest.raises(urllib.error.HTTPError):
            scrape(server, "a-wrong-token-of-some-length")
        assert "strongroom_users" in scrape(server, "a-long-random-metrics-token")
    finally:
        server.kill()


def test_the_deploy_examples_use_metrics_that_exist(tmp_path: Path) -> None:
    """deploy/prometheus-alerts.yml and deploy/grafana-dashboard.json name only metrics the
    server exposes (a renamed metric would silently break someone's alerts)."""
    import re

    root = Path(__file__).resolve().parent.parent / "deploy"
    wanted = set()
    for name in ("prometheus-alerts.yml", "grafana-dashboard.json"):
        wanted |= set(re.findall(r"strongroom_[a-z_]+", (root / name).read_text()))
    server = console_server(tmp_path)
    try:
        alice = server.add_user("alice", tmp_path, extra=("--quota", "1G"))
        src = tmp_path / "src"
        src.mkdir()
        (src / "f.txt").write_text("x")
        alice.backup(src)
        exposed = set(scrape(server))
    finally:
        server.kill()
    missing = {w for w in wanted if w not in exposed and f"{w}_total" not in exposed}
    assert not missing, f"not exposed by /metrics: {sorted(missing)}"
    json.loads((root / "grafana-dashboard.json").read_text())
