"""Running totals of what a quota counts, kept by PostgreSQL itself (scale-out stores).

A quota check needs the index's pack bytes, blob rows, snapshot rows, record bytes and
manifest rows. Aggregating them over the whole index on every upload batch and every commit
costs time that grows with the store (a user with millions of manifest rows would pay a full
count per batch). Instead, statement triggers with transition tables keep one row of totals in
step with every INSERT, UPDATE and DELETE on those tables, in the same transaction as the
change, whoever makes it (uploads, commits, GC, forget, rebuild-index, copy, the cascade from
a snapshot to its manifest rows). Exact, because it is the database doing it, not a tally.

Stores made before get the table, its triggers and their first totals when a writer opens
them, in one transaction under the store's lock (every write transaction takes it first), so
no change slips between the count and the triggers. Embedded (SQLite) stores keep counting:
one writing process, and their quotas are checked in that process.
"""

from __future__ import annotations

from ..db import Database, Tx

TABLE = "charge_totals"
COLUMNS = ("pack_bytes", "blob_rows", "snapshot_rows", "record_bytes", "manifest_rows")

# Per indexed table: (totals column, aggregate over the changed rows). Only tables whose
# updates can change a total get an UPDATE trigger (blob rows are updated by GC's marks and
# repacking, which change no count).
_SUMS = {
    "packs": (("pack_bytes", "COALESCE(SUM(size), 0)"),),
    "blobs": (("blob_rows", "COUNT(*)"),),
    "snapshots": (
        ("snapshot_rows", "COUNT(*)"),
        ("record_bytes", "COALESCE(SUM(LENGTH(record)), 0)"),
    ),
    "snapshot_blobs": (("manifest_rows", "COUNT(*)"),),
}
_UPDATED = ("packs", "snapshots")

COUNTS = (
    "SELECT (SELECT COALESCE(SUM(size), 0) FROM packs), (SELECT COUNT(*) FROM blobs), "
    "(SELECT COUNT(*) FROM snapshots), "
    "(SELECT COALESCE(SUM(LENGTH(record)), 0) FROM snapshots), "
    "(SELECT COUNT(*) FROM snapshot_blobs)"
)


# Every name spliced into SQL below is a constant of this module or the store's schema name,
# which PostgresDatabase validates (letters, digits, underscores): nothing comes from a request.


def _change(schema: str, sums: tuple[tuple[str, str], ...], rows: str, sign: str) -> str:
    template = "{col} = {col} {sign} (SELECT {agg} FROM {rows})"
    sets = ", ".join(template.format(col=c, sign=sign, agg=a, rows=rows) for c, a in sums)
    return f'UPDATE "{schema}".{TABLE} SET {sets};'  # noqa: S608 (constants, see above)


def _ddl(schema: str) -> list[str]:
    """Table, trigger functions and triggers, every name qualified by the store's schema."""
    s = f'"{schema}"'
    columns = ", ".join(f"{c} BIGINT NOT NULL" for c in COLUMNS)
    out = [f"CREATE TABLE {s}.{TABLE}(one INTEGER PRIMARY KEY CHECK (one = 1), {columns})"]
    for table, sums in _SUMS.items():
        out.append(
            f"CREATE FUNCTION {s}.charge_{table}() RETURNS trigger LANGUAGE plpgsql AS $body$ "
            "BEGIN "
            f"IF TG_OP IN ('INSERT', 'UPDATE') THEN {_change(schema, sums, 'new_rows', '+')} "
            "END IF; "
            f"IF TG_OP IN ('DELETE', 'UPDATE') THEN {_change(schema, sums, 'old_rows', '-')} "
            "END IF; "
            "RETURN NULL; END $body$"
        )
        events = [
            ("insert", "INSERT", "NEW TABLE AS new_rows"),
            ("delete", "DELETE", "OLD TABLE AS old_rows"),
        ]
        if table in _UPDATED:
            events.append(("update", "UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows"))
        for name, event, referencing in events:
            out.append(
                f"CREATE TRIGGER charge_{table}_{name} AFTER {event} ON {s}.{table} "
                f"REFERENCING {referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION {s}.charge_{table}()"
            )
    return out


def install(tx: Tx, schema: str) -> None:
    """Create the totals and their triggers in this transaction, starting from the index as
    it is now (the caller holds the store's lock)."""
    for statement in _ddl(schema):
        tx.execute(statement)
    row = tx.query(COUNTS)[0]
    placeholders = ", ".join("?" for _ in COLUMNS)
    tx.execute(
        f'INSERT INTO "{schema}".{TABLE}(one, {", ".join(COLUMNS)}) VALUES(1, {placeholders})',
        tuple(int(v) for v in row),
    )


def schema_of(db: Database) -> str:
    """The store's PostgreSQL schema (store_<storage id>)."""
    schema = getattr(db, "schema", None)
    if not isinstance(schema, str):
        raise TypeError("charge totals need a PostgreSQL store")
    return schema


def ensure(db: Database) -> None:
    """Install the totals in a store made before they existed (no-op once there)."""
    if db.table_exists(TABLE):
        return
    schema = schema_of(db)
    with db.transaction() as tx:
        exists = tx.query(
            "SELECT 1 FROM pg_tables WHERE schemaname = ? AND tablename = ?", (schema, TABLE)
        )
        if not exists:
            install(tx, schema)


def read(tx_or_db: Tx | Database) -> tuple[int, int, int, int, int]:
    row = tx_or_db.query(f"SELECT {', '.join(COLUMNS)} FROM {TABLE}")[0]  # noqa: S608
    a, b, c, d, e = (int(v) for v in row)
    return a, b, c, d, e
