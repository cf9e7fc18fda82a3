"""Alerts: a backup overdue or failed, a quota nearly full, damage found by scrub, a disk
filling up. Checked every `alert_check_interval` seconds; sent by e-mail (SMTP, STARTTLS by
default) and/or a webhook (a JSON POST); repeated every `alert_repeat` while in force; a
"resolved" notice when it clears. The state is in the database, so a restart neither repeats
nor forgets an alert. A notice that cannot be sent is logged and tried again at the next check;
nothing here may take the server down.

Webhook payload (one POST per notice, `Content-Type: application/json`):
    {"event": "firing" | "repeat" | "resolved", "kind": "stale" | "failed" | "quota" |
     "damage" | "disk", "user": NAME or null (the server), "detail": TEXT,
     "since": ISO-8601, "time": ISO-8601, "server": HOSTNAME}
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import aiohttp

from ..cli import format as fmt
from .opsdb import DAY_NS, Alert
from .overview import AccountStatus, all_statuses, disk_status, record_daily_usage
from .runs import last_run

if TYPE_CHECKING:
    from .context import ServerContext

log = logging.getLogger("strongroom.server")

DISK_FULL_SOON_NS = 14 * DAY_NS  # warn when the disk's estimated full date is this close
DISK_FREE_MIN = 0.05  # or when less than this share is free
SEND_TIMEOUT = 20.0


@dataclass(frozen=True)
class Notice:
    event: str  # "firing", "repeat", "resolved"
    alert: Alert
    user: str | None  # None: the server itself
    email: str | None  # the user's own address, when they are told too

    @property
    def subject(self) -> str:
        who = self.user or "server"
        if self.event == "resolved":
            return f"[strongroom] resolved: {who}: {self.alert.kind}"
        return f"[strongroom] {who}: {self.alert.detail}"

    def payload(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "kind": self.alert.kind,
            "user": self.user,
            "detail": self.alert.detail,
            "since": _iso(self.alert.since_ns),
            "time": _iso(time.time_ns()),
            "server": socket.gethostname(),
        }

    def text(self) -> str:
        who = f"user {self.user}" if self.user else "the server"
        if self.event == "resolved":
            return f"Resolved for {who}: {self.alert.kind} ({self.alert.detail}).\n"
        again = " (still in force)" if self.event == "repeat" else ""
        return (
            f"Alert for {who}{again}: {self.alert.detail}\n"
            f"Since {_iso(self.alert.since_ns)}.\n\n"
            "Details are in the strongroom web console.\n"
        )


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).isoformat(timespec="seconds")


def conditions(statuses: list[AccountStatus]) -> dict[tuple[int, str], str]:
    """The alerts that should be in force for these accounts: (user ID, kind) -> detail."""
    out: dict[tuple[int, str], str] = {}
    for st in statuses:
        u = st.user
        if st.overdue:
            last = "never" if u.last_success_ns is None else _iso(u.last_success_ns)
            out[(u.id, "stale")] = (
                f"no successful backup within {_hours(st.expected_interval_s)} (last: {last})"
            )
        if (u.last_backup_result or "").startswith("failed"):
            out[(u.id, "failed")] = f"the last backup failed ({u.last_backup_result})"
        fraction = st.quota_fraction
        if fraction is not None and fraction >= 0.9:
            out[(u.id, "quota")] = (
                f"{100 * fraction:.0f} % of the quota used "
                f"({fmt.size(st.quota_used_bytes)} of {fmt.size(u.quota or 0)})"
            )
    return out


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:.0f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


class AlertLoop:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        # ((user ID, kind), event, channel) -> the notice that channel could not take yet
        self.retry: dict[tuple[tuple[int, str], str, str], Notice] = {}
        self._leadership: contextlib.AbstractContextManager[bool] | None = None

    async def run(self) -> None:
        try:
            while True:
                try:
                    if await self._lead():
                        await self.check()
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug here must not end the checks, nor the server
                    log.exception("alert check failed")
                await asyncio.sleep(self.cfg.alert_check_interval)
        finally:
            if self._leadership is not None:
                with contextlib.suppress(Exception):
                    self._leadership.__exit__(None, None, None)

    async def _lead(self) -> bool:
        """Scale-out: one node sends the alerts, the one holding a PostgreSQL advisory lock
        (released by PostgreSQL if that node dies; another one takes over at its next check)."""
        if self.ctx.backend.kind != "scaleout" or self._leadership is not None:
            return True
        held = self.ctx.backend.db.try_advisory_lock("alert-leader")
        if await asyncio.to_thread(held.__enter__):
            self._leadership = held
            return True
        await asyncio.to_thread(held.__exit__, None, None, None)
        return False

    async def check(self) -> None:
        wanted, users = await asyncio.to_thread(self._evaluate)
        now = time.time_ns()
        repeat_ns = int(self.cfg.alert_repeat * 1e9)
        current = {(a.user_id, a.kind): a for a in await asyncio.to_thread(self.ctx.ops.alerts)}
        # Notices a channel could not take last time, that still make sense: try again.
        for pending in list(self.retry):
            alert_key, event, _channel = pending
            if (event == "resolved") == (alert_key in wanted):
                del self.retry[pending]  # it came back, or it was resolved meanwhile
        for pending, notice in list(self.retry.items()):
            if await self._send(notice, pending[2]):
                del self.retry[pending]
        for key, detail in wanted.items():
            await asyncio.to_thread(self.ctx.ops.raise_alert, key[0], key[1], detail)
        for alert in await asyncio.to_thread(self.ctx.ops.alerts):
            key = (alert.user_id, alert.kind)
            if key not in wanted:
                continue
            if alert.last_sent_ns is None:
                event = "firing"
            elif now - alert.last_sent_ns >= repeat_ns:
                event = "repeat"
            else:
                continue
            await self._notify(Notice(event, alert, *users.get(alert.user_id, (None, None))))
            await asyncio.to_thread(self.ctx.ops.alert_sent, alert.user_id, alert.kind, now)
        for key in current:
            if key in wanted:
                continue
            cleared = await asyncio.to_thread(self.ctx.ops.clear_alert, *key)
            if cleared is not None and cleared.last_sent_ns is not None:
                # Told about it, so told that it is over.
                await self._notify(Notice("resolved", cleared, *users.get(key[0], (None, None))))

    def _evaluate(self) -> tuple[dict[tuple[int, str], str], dict[int, tuple[str, str | None]]]:
        statuses = all_statuses(
            self.ctx.userdb, self.ctx.backend.storage, self.cfg.expected_interval
        )
        record_daily_usage(self.ctx.ops, statuses)
        wanted = conditions(statuses)
        for st in statuses:
            scrubbed = last_run(self.ctx.userdb, "scrub", st.user)
            if scrubbed is not None and not scrubbed.ok:
                wanted[(st.user.id, "damage")] = f"scrub found damage: {scrubbed.summary}"
        history = self.ctx.ops.total_usage(time.time_ns() - 30 * DAY_NS)
        disk = disk_status(self.ctx.datadir.root, history)
        if disk.free_bytes < DISK_FREE_MIN * disk.total_bytes:
            wanted[(0, "disk")] = (
                f"only {fmt.size(disk.free_bytes)} free of {fmt.size(disk.total_bytes)}"
            )
        elif disk.estimated_full_ns is not None and (
            disk.estimated_full_ns - time.time_ns() < DISK_FULL_SOON_NS
        ):
            wanted[(0, "disk")] = f"the disk is estimated full on {_iso(disk.estimated_full_ns)}"
        users = {
            st.user.id: (st.user.name, st.user.notify_email if self.cfg.notify_users else None)
            for st in statuses
        }
        return wanted, users

    def _channels(self) -> list[str]:
        out = []
        if self.cfg.smtp_host and (self.cfg.alert_email.strip() or self.cfg.notify_users):
            out.append("mail")
        if self.cfg.alert_webhook:
            out.append("webhook")
        return out

    async def _notify(self, notice: Notice) -> None:
        """Send by every configured channel; what one could not take is retried at the next
        checks, by that channel only (the others are not sent the same notice twice)."""
        for channel in self._channels():
            if not await self._send(notice, channel):
                self.retry[((notice.alert.user_id, notice.alert.kind), notice.event, channel)] = (
                    notice
                )

    async def _send(self, notice: Notice, channel: str) -> bool:
        try:
            if channel == "mail":
                recipients = [a.strip() for a in self.cfg.alert_email.split(",") if a.strip()]
                if notice.email and notice.alert.kind != "disk":
                    recipients.append(notice.email)
                if not recipients:
                    return True
                await asyncio.to_thread(self._mail, notice, recipients)
            else:
                await self._post(notice)
        except (OSError, smtplib.SMTPException, ssl.SSLError, aiohttp.ClientError) as exc:
            log.warning("alert %s not sent (%s); will retry: %s", channel, notice.subject, exc)
            return False
        log.info("alert %s by %s: %s", notice.event, channel, notice.subject)
        return True

    def _mail(self, notice: Notice, recipients: list[str]) -> None:
        cfg = self.cfg
        msg = EmailMessage()
        msg["Subject"] = notice.subject
        msg["From"] = cfg.smtp_from or f"strongroom@{socket.gethostname()}"
        msg["To"] = ", ".join(recipients)
        msg.set_content(notice.text())
        context = ssl.create_default_context(
            cafile=str(cfg.smtp_ca_file) if cfg.smtp_ca_file else None
        )
        smtp: smtplib.SMTP
        if cfg.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(
                cfg.smtp_host, cfg.smtp_port, timeout=SEND_TIMEOUT, context=context
            )
        else:
            smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=SEND_TIMEOUT)
        with smtp:
            if cfg.smtp_security == "starttls":
                smtp.starttls(context=context)
            elif cfg.smtp_security == "none" and not _loopback(cfg.smtp_host):
                raise smtplib.SMTPException("smtp_security 'none' is only for a loopback server")
            if cfg.smtp_user:
                smtp.login(cfg.smtp_user, _secret(cfg.smtp_password_file))
            smtp.send_message(msg)

    async def _post(self, notice: Notice) -> None:
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(self.cfg.alert_webhook, json=notice.payload()) as response,
        ):
            if response.status >= 300:
                raise aiohttp.ClientError(f"the webhook answered HTTP {response.status}")


def _loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1")


def _secret(path: Any) -> str:
    if path is None:
        return ""
    with open(path, encoding="utf-8") as fh:
        return fh.readline().rstrip("\r\n")
