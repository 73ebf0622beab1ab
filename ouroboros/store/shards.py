"""Parquet shards: <shards dir>/round-NNNN/<name>.parquet, one file per (round, phase, kind).

The shards directory is the run's own (`runs/<run id>/shards`, see store/layout.py), and every
row carries its run id, so a shard read on its own still says which run wrote it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def shard_path(shards_dir: str | Path, round_: int, name: str) -> Path:
    return Path(shards_dir) / f"round-{round_:04d}" / f"{name}.parquet"


def write_shard(shards_dir: str | Path, round_: int, name: str, rows: list[dict], schema: pa.Schema) -> Path:
    """Write rows atomically; rewriting the same (round, name) of the same run replaces the
    shard, so retries are idempotent."""
    path = shard_path(shards_dir, round_, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path
