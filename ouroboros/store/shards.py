"""Parquet shards: shards/round-NNNN/<name>.parquet, one file per (round, phase, kind)."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def shard_path(run_dir: str | Path, round_: int, name: str) -> Path:
    return Path(run_dir) / "shards" / f"round-{round_:04d}" / f"{name}.parquet"


def write_shard(run_dir: str | Path, round_: int, name: str, rows: list[dict], schema: pa.Schema) -> Path:
    """Write rows atomically; rewriting the same (round, name) replaces the shard, so retries are idempotent."""
    path = shard_path(run_dir, round_, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path
