"""Server settings: flags over environment over config file over built-in defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..crypto import KdfParams, kdf_floor
from ..errors import UsageError

DEFAULT_PORT = 44000
DEFAULT_DATA_DIR = "./strongroom-data"


def default_kdf() -> KdfParams:
    """Argon2id cost for admin-set passwords and for the fake salts of unknown users: the
    client's floor (crypto.kdf_floor), which real clients refuse to go below anyway."""
    return kdf_floor()


@dataclass
class ServerConfig:
    host: str = "0.0.0.0"  # noqa: S104 - a server listens on all interfaces unless told
    port: int = DEFAULT_PORT
    data_dir: Path = field(default_factory=lambda: Path(DEFAULT_DATA_DIR))
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_connections: int = 64
    idle_timeout: float = 300.0  # seconds without a complete frame
    login_timeout: float = 30.0  # from TCP accept to a successful login
    log_file: Path | None = None
    # Hostile clients: connections not logged in yet per address (IPv6: per /64), connections
    # per account, commits per account per hour, snapshots per account, and how far ahead of
    # the server's clock a snapshot's own time may be.
    max_unauthenticated_per_address: int = 8
    max_connections_per_user: int = 16
    max_commits_per_hour: int = 120
    max_snapshots: int = 10_000
    max_clock_skew: float = 3600.0
    # Password guessing (server/throttle.py): answers are slowed after `login_free_attempts`
    # failures (doubling from 0.5 s up to `login_max_delay`), and every `login_lockout_after`
    # failures lock the name or address for `login_lockout` seconds, doubling up to an hour.
    login_free_attempts: int = 3
    login_max_delay: float = 10.0
    login_lockout_after: int = 10
    login_lockout: float = 60.0
    # The web console and /metrics (server/web/): HTTPS with the server's certificate on its
    # own port (0 = off); /metrics wants `Authorization: Bearer <token from this file>`, or
    # without a token file, a request from the loopback interface.
    web_port: int = 44080
    web_host: str | None = None  # None: the same address as the backup port
    metrics_token_file: Path | None = None
    # Alerts (server/alerts.py): a user's backup is overdue after `expected_interval` seconds
    # without a success (unless their own is set); checks run every `alert_check_interval`,
    # and an alert in force is repeated every `alert_repeat` seconds.
    expected_interval: float = 26 * 3600.0
    alert_check_interval: float = 60.0
    alert_repeat: float = 24 * 3600.0
    alert_email: str = ""  # comma-separated addresses of the admins
    alert_webhook: str = ""  # a URL that gets a JSON POST per alert
    notify_users: bool = False  # also mail a user their own alerts (if they have an address)
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_security: str = "starttls"  # starttls | tls | none (none: loopback only)
    smtp_user: str = ""
    smtp_password_file: Path | None = None
    smtp_from: str = ""
    smtp_ca_file: Path | None = None  # to trust a private mail server's certificate
    # Scale-out (server/deployment.py): PostgreSQL for every piece of shared state and an S3
    # bucket for the packs; both or neither (neither: SQLite and the data folder). Secrets
    # never in argv: the password from this file (or libpq's PGPASSWORD / ~/.pgpass), S3 keys
    # from an AWS credentials file (or AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
    metadata: str = ""  # postgresql://USER@HOST[:PORT]/DATABASE[?sslmode=…]
    blobs: str = ""  # s3://BUCKET[/PREFIX]?endpoint=URL&region=R[&ca_file=PEM]
    metadata_password_file: Path | None = None
    s3_credentials_file: Path | None = None
    # Nodes prove they are alive every heartbeat_interval seconds; a node silent for
    # missed_heartbeats intervals is dead and its sessions no longer hold GC back.
    node_id: str = ""  # default: host name, port and a random suffix
    # Every S3 request: seconds to wait for an answer, and tries (a hung object store becomes
    # an error after about s3_read_timeout x s3_attempts, never a wait without end).
    s3_read_timeout: float = 60.0
    s3_attempts: int = 4
    heartbeat_interval: float = 5.0
    missed_heartbeats: int = 6

    @property
    def scaleout(self) -> bool:
        """PostgreSQL + S3 instead of SQLite + the data folder."""
        return bool(self.metadata)


_ENV = {
    "host": "STRONGROOM_HOST",
    "port": "STRONGROOM_PORT",
    "data_dir": "STRONGROOM_DATA_DIR",
    "tls_cert": "STRONGROOM_TLS_CERT",
    "tls_key": "STRONGROOM_TLS_KEY",
    "max_connections": "STRONGROOM_MAX_CONNECTIONS",
    "idle_timeout": "STRONGROOM_IDLE_TIMEOUT",
    "login_timeout": "STRONGROOM_LOGIN_TIMEOUT",
    "log_file": "STRONGROOM_LOG_FILE",
    "max_unauthenticated_per_address": "STRONGROOM_MAX_UNAUTHENTICATED_PER_ADDRESS",
    "max_connections_per_user": "STRONGROOM_MAX_CONNECTIONS_PER_USER",
    "max_commits_per_hour": "STRONGROOM_MAX_COMMITS_PER_HOUR",
    "max_snapshots": "STRONGROOM_MAX_SNAPSHOTS",
    "max_clock_skew": "STRONGROOM_MAX_CLOCK_SKEW",
    "login_free_attempts": "STRONGROOM_LOGIN_FREE_ATTEMPTS",
    "login_max_delay": "STRONGROOM_LOGIN_MAX_DELAY",
    "login_lockout_after": "STRONGROOM_LOGIN_LOCKOUT_AFTER",
    "login_lockout": "STRONGROOM_LOGIN_LOCKOUT",
    "web_port": "STRONGROOM_WEB_PORT",
    "web_host": "STRONGROOM_WEB_HOST",
    "metrics_token_file": "STRONGROOM_METRICS_TOKEN_FILE",
    "expected_interval": "STRONGROOM_EXPECTED_INTERVAL",
    "alert_check_interval": "STRONGROOM_ALERT_CHECK_INTERVAL",
    "alert_repeat": "STRONGROOM_ALERT_REPEAT",
    "alert_email": "STRONGROOM_ALERT_EMAIL",
    "alert_webhook": "STRONGROOM_ALERT_WEBHOOK",
    "notify_users": "STRONGROOM_NOTIFY_USERS",
    "smtp_host": "STRONGROOM_SMTP_HOST",
    "smtp_port": "STRONGROOM_SMTP_PORT",
    "smtp_security": "STRONGROOM_SMTP_SECURITY",
    "smtp_user": "STRONGROOM_SMTP_USER",
    "smtp_password_file": "STRONGROOM_SMTP_PASSWORD_FILE",
    "smtp_from": "STRONGROOM_SMTP_FROM",
    "smtp_ca_file": "STRONGROOM_SMTP_CA_FILE",
    "metadata": "STRONGROOM_METADATA",
    "blobs": "STRONGROOM_BLOBS",
    "metadata_password_file": "STRONGROOM_METADATA_PASSWORD_FILE",
    "s3_credentials_file": "STRONGROOM_S3_CREDENTIALS_FILE",
    "node_id": "STRONGROOM_NODE_ID",
    "s3_read_timeout": "STRONGROOM_S3_READ_TIMEOUT",
    "s3_attempts": "STRONGROOM_S3_ATTEMPTS",
    "heartbeat_interval": "STRONGROOM_HEARTBEAT_INTERVAL",
    "missed_heartbeats": "STRONGROOM_MISSED_HEARTBEATS",
}
_INTS = (
    "port",
    "max_connections",
    "max_unauthenticated_per_address",
    "max_connections_per_user",
    "max_commits_per_hour",
    "max_snapshots",
    "login_free_attempts",
    "login_lockout_after",
    "web_port",
    "smtp_port",
    "missed_heartbeats",
    "s3_attempts",
)
_FLOATS = (
    "idle_timeout",
    "login_timeout",
    "max_clock_skew",
    "login_max_delay",
    "login_lockout",
    "expected_interval",
    "alert_check_interval",
    "alert_repeat",
    "heartbeat_interval",
    "s3_read_timeout",
)
_PATHS = (
    "data_dir",
    "tls_cert",
    "tls_key",
    "log_file",
    "metrics_token_file",
    "smtp_password_file",
    "smtp_ca_file",
    "metadata_password_file",
    "s3_credentials_file",
)
_BOOLS = ("notify_users",)


def load_config(config_file: Path | None, overrides: dict[str, Any]) -> ServerConfig:
    """Build the settings. `overrides` are command-line values (None = not given)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                raw = tomllib.load(fh)
        except OSError as exc:
            raise UsageError(f"cannot read config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"config file {config_file} is not valid TOML: {exc}") from None
        section = raw.get("server", raw)
        if not isinstance(section, dict):
            raise UsageError(f"config file {config_file}: [server] must be a table")
        known = {f.name for f in fields(ServerConfig)}
        for key, value in section.items():
            name = key.replace("-", "_")
            if name not in known:
                raise UsageError(f"config file {config_file}: unknown setting {key!r}")
            values[name] = value
    for name, env in _ENV.items():
        if env in os.environ and os.environ[env] != "":
            values[name] = os.environ[env]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _typed(values)


def _typed(values: dict[str, Any]) -> ServerConfig:
    cfg = ServerConfig()
    for f in fields(ServerConfig):
        if f.name not in values:
            continue
        value = values[f.name]
        try:
            if f.name in _INTS:
                value = int(value)
            elif f.name in _FLOATS:
                value = float(value)
            elif f.name in _PATHS:
                value = Path(os.path.expanduser(str(value)))
            elif f.name in _BOOLS:
                value = _bool(value)
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise UsageError(f"setting {f.name} has an invalid value: {value!r}") from None
        setattr(cfg, f.name, value)
    if not 0 <= cfg.port < 65536:
        raise UsageError(f"port {cfg.port} is out of range (1-65535, or 0 for any free port)")
    if cfg.max_connections < 1 or cfg.idle_timeout <= 0 or cfg.login_timeout <= 0:
        raise UsageError("max_connections and the timeouts must be positive")
    if min(_positive(cfg)) < 1 or not 0 < cfg.max_clock_skew < 1e9:
        raise UsageError(
            "max_unauthenticated_per_address, max_connections_per_user, max_commits_per_hour, "
            "max_snapshots and max_clock_skew must be positive"
        )
    if (
        cfg.login_free_attempts < 0
        or cfg.login_lockout_after < 1
        or not 0 <= cfg.login_max_delay <= 60
        or not 0 <= cfg.login_lockout <= 86400
    ):
        raise UsageError(
            "login_free_attempts must be >= 0, login_lockout_after >= 1, login_max_delay "
            "0-60 s and login_lockout 0-86400 s"
        )
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise UsageError("give both tls_cert and tls_key, or neither")
    if not 0 <= cfg.web_port < 65536:
        raise UsageError(f"web_port {cfg.web_port} is out of range (0 turns the console off)")
    if cfg.smtp_security not in ("starttls", "tls", "none"):
        raise UsageError("smtp_security must be starttls, tls or none")
    if min(cfg.expected_interval, cfg.alert_check_interval, cfg.alert_repeat) <= 0:
        raise UsageError("expected_interval, alert_check_interval and alert_repeat must be > 0")
    if bool(cfg.metadata) != bool(cfg.blobs):
        raise UsageError(
            "scale-out needs both metadata (postgresql://…) and blobs (s3://…), or neither"
        )
    if not 0.1 <= cfg.heartbeat_interval <= 3600 or not 2 <= cfg.missed_heartbeats <= 1000:
        raise UsageError("heartbeat_interval must be 0.1-3600 s and missed_heartbeats 2-1000")
    if not 0.5 <= cfg.s3_read_timeout <= 3600 or not 1 <= cfg.s3_attempts <= 20:
        raise UsageError("s3_read_timeout must be 0.5-3600 s and s3_attempts 1-20")
    return cfg


def _positive(cfg: ServerConfig) -> tuple[int, ...]:
    return (
        cfg.max_unauthenticated_per_address,
        cfg.max_connections_per_user,
        cfg.max_commits_per_hour,
        cfg.max_snapshots,
    )


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)
