"""Shards of a stage by condition groups (config generator.sample_shards, features.shards).

Shard i of S takes the i-th of S contiguous groups of the conditions, in the order the stage already uses
(so merging the shards in shard order gives the unsharded table row for row). Batched work stays
byte-identical on CPU: a shard computes every batch of the unsharded run that holds one of its rows, with
the same composition (`aligned_range`), and keeps only its own rows, at the cost of at most one extra batch
at each shard boundary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputError


def check_shard(shard: int, shards: int) -> None:
    if shards < 1 or not 0 <= shard < shards:
        raise InputError(f"shard {shard} of {shards}", where="--shard / --shards", expected="0 <= shard < shards")


def condition_groups(conditions, shards: int) -> list[list[str]]:
    """`shards` contiguous groups of the (ordered, distinct) conditions, sizes differing by at most one."""
    conditions = list(dict.fromkeys(conditions))
    return [list(group) for group in np.array_split(np.array(conditions, dtype=object), shards)]


def shard_conditions(conditions, shard: int, shards: int) -> list[str]:
    check_shard(shard, shards)
    distinct = list(dict.fromkeys(conditions))
    if shards > len(distinct):
        raise InputError(f"{shards} shards for {len(distinct)} conditions", where="config generator.sample_shards / "
                         "features.shards", expected=f"at most {len(distinct)} shards (one condition each)")
    return condition_groups(distinct, shards)[shard]


def shard_range(condition_column: pd.Series, shard: int, shards: int, source="table") -> tuple[int, int]:
    """[start, stop) of the rows of shard `shard` in a table whose rows are grouped by condition."""
    values = condition_column.to_numpy()
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else np.array([], dtype=int)
    if len(starts) != len(set(values)):
        raise InputError("rows of a condition are not contiguous", file=source,
                         expected="rows grouped by Metadata_condition (as the stages write them)")
    mine = set(shard_conditions(values[starts], shard, shards))
    rows = np.flatnonzero([v in mine for v in values])
    return (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 0)


def aligned_range(start: int, stop: int, batch: int, total: int) -> tuple[int, int]:
    """The rows of every batch of size `batch` (counted from row 0) that overlaps [start, stop)."""
    if start >= stop:
        return start, start
    return start // batch * batch, min(-(-stop // batch) * batch, total)
