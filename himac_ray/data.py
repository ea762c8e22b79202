"""Trajectory records: one row per generated response (a blueprint or an action).

The rollout driver emits `Record`s; `advantage.py` fills `advantage`; the learner trains on the
padded tensors from `batch.pad_batch`. Records travel between processes and to disk as Arrow tables
with the fixed schema `RECORD_SCHEMA` (one column per `Record` field, in field order):

| column          | Arrow type       | notes                                                   |
|-----------------|------------------|---------------------------------------------------------|
| group_id        | string           |                                                         |
| traj_id         | string           |                                                         |
| level           | string           | "plan" or "act" (checked on write)                      |
| env_id          | string           |                                                         |
| seed            | int64            |                                                         |
| step            | int32            | -1 for `plan`                                           |
| subgoal_index   | int32            | -1 for `plan` and flat records                          |
| prompt_ids      | list<int32>      | token ids fit int32 for every real vocabulary           |
| response_ids    | list<int32>      |                                                         |
| logprobs        | list<float64>    | float64 so Python floats round-trip exactly             |
| response_text   | string           |                                                         |
| reward          | float64          |                                                         |
| valid           | bool             |                                                         |
| sub_done        | bool             |                                                         |
| anchor          | string           |                                                         |
| episode_return  | float64          |                                                         |
| won             | bool             |                                                         |
| advantage       | float64          |                                                         |
| image           | binary           | raw PNG bytes, bit-exact                                |
| extra           | string           | `json.dumps(extra)`; keys must be str, values JSON-able |
| num_subgoals    | int32            | K of the episode's blueprint, 0 if unknown / flat       |
| weights_version | int64            | sampler weights version that generated the response     |

No column is nullable. The schema carries `himac_ray.schema_version` in its metadata. Tables written
before a column existed read back with that field's default (`OPTIONAL_COLUMNS`).

Padding records into learner tensors (`pad_batch`) lives in `himac_ray.batch`, so the records,
and `advantage.py` / `rollout.py` with them, do not need torch. No Ray, no torch here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from himac_ray.atomic import publish_file
from himac_ray.names import LEVELS  # record levels: `plan` = planner / macro, `act` = executor or flat / micro

SCHEMA_VERSION = "2"


@dataclass
class Record:
    """One generated response and what came of it."""

    group_id: str
    """the group whose members are compared (macro group for `plan`, micro group for `act`)"""
    traj_id: str
    """the episode this response belongs to"""
    level: str
    """"plan" (a blueprint, macro level) or "act" (an executor / flat-agent action, micro level)"""
    env_id: str
    seed: int
    """the env seed of the episode (all members of a group share it)"""
    step: int
    """env step index the response acted at (the planner's record has step -1)"""
    subgoal_index: int
    """index of the subgoal being executed (-1 for `plan` and flat records)"""
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    """sampling logprobs of `response_ids`"""
    response_text: str = ""
    reward: float = 0.0
    """env reward of this step plus any invalid-action penalty (0 for `plan`)"""
    valid: bool = True
    """the response parsed into a valid action / plan"""
    sub_done: bool = False
    """the executor declared the current subgoal done"""
    anchor: str = ""
    """raw observation the response acted on, without history (GiGPO step groups)"""
    episode_return: float = 0.0
    """return of the whole episode; set on every record of the trajectory (advantage.py reads
    it from the trajectory's last record, so setting it on the final step alone also works)"""
    won: bool = False
    """the episode ended in success (advantage.py treats a trajectory as won if any record is)"""
    advantage: float = 0.0
    image: bytes = b""
    """PNG bytes of the visual observation, empty for text envs"""
    extra: dict = field(default_factory=dict)
    """small per-record metadata (e.g. task type); stored as JSON text in Arrow"""
    num_subgoals: int = 0
    """number of subgoals K in the episode's blueprint (0 if unknown or flat); used only by the
    optional subgoal-completion shaping in advantage.py"""
    weights_version: int = 0
    """version of the sampler weights that generated the response (0 = the starting weights; each
    weight sync adds one): how stale the record is when trained (himac_ray/pipeline.py)"""


def _list_of(value_type: pa.DataType) -> pa.DataType:
    # name the list item "element" as Parquet's nested-type spec does, so a table read back
    # from Parquet has exactly the in-memory schema
    return pa.list_(pa.field("element", value_type, nullable=False))


_ARROW_TYPES: dict[str, pa.DataType] = {
    "group_id": pa.string(),
    "traj_id": pa.string(),
    "level": pa.string(),
    "env_id": pa.string(),
    "seed": pa.int64(),
    "step": pa.int32(),
    "subgoal_index": pa.int32(),
    "num_subgoals": pa.int32(),
    "prompt_ids": _list_of(pa.int32()),
    "response_ids": _list_of(pa.int32()),
    "logprobs": _list_of(pa.float64()),
    "response_text": pa.string(),
    "reward": pa.float64(),
    "valid": pa.bool_(),
    "sub_done": pa.bool_(),
    "anchor": pa.string(),
    "episode_return": pa.float64(),
    "won": pa.bool_(),
    "advantage": pa.float64(),
    "image": pa.binary(),
    "extra": pa.string(),
    "weights_version": pa.int64(),
}
_FIELD_NAMES = [f.name for f in dataclasses.fields(Record)]
assert set(_FIELD_NAMES) == set(_ARROW_TYPES), "Record fields and Arrow schema disagree"

RECORD_SCHEMA = pa.schema(
    [pa.field(name, _ARROW_TYPES[name], nullable=False) for name in _FIELD_NAMES],
    metadata={"himac_ray.schema_version": SCHEMA_VERSION},
)
"""Arrow schema of a table of `Record`s (column order = `Record` field order)."""


OPTIONAL_COLUMNS = {"weights_version": 0}
"""columns added after schema version 1 -> the value a table without them reads back as"""


def _check_record(r: Record) -> None:
    if r.level not in LEVELS:
        raise ValueError(f"Record.level must be one of {LEVELS}, got {r.level!r}")
    if len(r.logprobs) != len(r.response_ids):
        raise ValueError(
            f"Record {r.traj_id}/{r.step}: {len(r.logprobs)} logprobs for "
            f"{len(r.response_ids)} response tokens"
        )


def records_to_table(records: Sequence[Record]) -> pa.Table:
    """Records -> Arrow table with `RECORD_SCHEMA`.

    Raises:
        ValueError: on an unknown `level` or `len(logprobs) != len(response_ids)`.
    """
    columns: dict[str, list] = {name: [] for name in _FIELD_NAMES}
    for r in records:
        _check_record(r)
        for name in _FIELD_NAMES:
            value = getattr(r, name)
            columns[name].append(json.dumps(value) if name == "extra" else value)
    arrays = [pa.array(columns[name], type=_ARROW_TYPES[name]) for name in _FIELD_NAMES]
    return pa.Table.from_arrays(arrays, schema=RECORD_SCHEMA)


def table_to_records(table: pa.Table) -> list[Record]:
    """Arrow table (with `RECORD_SCHEMA`'s columns) -> Records; inverse of `records_to_table`."""
    missing = set(_FIELD_NAMES) - set(table.column_names) - set(OPTIONAL_COLUMNS)
    if missing:
        raise ValueError(f"table lacks Record columns {sorted(missing)}")
    present = [name for name in _FIELD_NAMES if name in table.column_names]
    records = []
    for row in table.select(present).to_pylist():
        row["extra"] = json.loads(row["extra"])
        for name, default in OPTIONAL_COLUMNS.items():
            row.setdefault(name, default)
        records.append(Record(**row))
    return records


def write_parquet(table_or_records: pa.Table | Sequence[Record], path: str | os.PathLike) -> None:
    """Write records (or a table) to one Parquet file, atomically (`atomic.publish_file`: written
    under a temporary name in the same directory, then renamed), so a reader never sees a
    half-written file.
    """
    table = table_or_records
    if not isinstance(table, pa.Table):
        table = records_to_table(table_or_records)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    publish_file(path, lambda tmp: pq.write_table(table, os.fspath(tmp)))


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet file written by `write_parquet` back into an Arrow table."""
    return pq.read_table(os.fspath(path))


def png_bytes(image) -> bytes:
    """PNG encoding of an HxWx3 (or HxW) uint8 array (`Record.image`)."""
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_image(data: bytes):
    """The PIL RGB image of `Record.image` PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")
