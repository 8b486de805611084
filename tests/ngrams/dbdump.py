"""Read a whole n-gram store for comparisons (test helper)."""

from __future__ import annotations

from pathlib import Path

import duckdb

IGNORED = {"created_at", "finished_at", "seconds", "committed_at"}


def dump(db: Path) -> dict[str, list]:
    """Every table of a store, rows sorted, without timestamps and timings."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for (t,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
            cur = con.execute(f"SELECT * FROM {t}")
            cols = [d[0] for d in cur.description]
            rows = [tuple(v for c, v in zip(cols, r) if c not in IGNORED) for r in cur.fetchall()]
            out[t] = sorted((r for r in rows if not (t == "meta" and r[0] == "created_at")), key=repr)
        return out
    finally:
        con.close()
