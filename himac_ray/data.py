"""Trajectory records: one row per generated response (a blueprint or an action).

The rollout driver emits `Record`s; `advantage.py` fills `advantage`; the learner trains on the
padded tensors from `pad_batch`. Records travel between processes and to disk as Arrow tables
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

No column is nullable. The schema carries `himac_ray.schema_version` in its metadata.

Token alignment of `pad_batch` ("predictor alignment"): a causal LM's logits at position t
predict the token at position t+1. Every per-token (B, T) tensor that the loss consumes
(`old_logprobs`, `response_mask`, and the learner's `loss.token_logprobs(logits, input_ids)`)
is indexed by the PREDICTING position: column t describes token `input_ids[:, t+1]`. The last
column (T-1) predicts nothing and is always 0 in both `response_mask` and `old_logprobs`.

No Ray here.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from himac_ray.names import LEVELS  # record levels: `plan` = planner / macro, `act` = executor or flat / micro

LEVEL_IDS = {"plan": 0, "act": 1}
"""integer id of each level in `pad_batch(...)["level_ids"]`"""
SCHEMA_VERSION = "1"


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
}
_FIELD_NAMES = [f.name for f in dataclasses.fields(Record)]
assert set(_FIELD_NAMES) == set(_ARROW_TYPES), "Record fields and Arrow schema disagree"

RECORD_SCHEMA = pa.schema(
    [pa.field(name, _ARROW_TYPES[name], nullable=False) for name in _FIELD_NAMES],
    metadata={"himac_ray.schema_version": SCHEMA_VERSION},
)
"""Arrow schema of a table of `Record`s (column order = `Record` field order)."""


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
    missing = set(_FIELD_NAMES) - set(table.column_names)
    if missing:
        raise ValueError(f"table lacks Record columns {sorted(missing)}")
    records = []
    for row in table.select(_FIELD_NAMES).to_pylist():
        row["extra"] = json.loads(row["extra"])
        records.append(Record(**row))
    return records


def write_parquet(table_or_records: pa.Table | Sequence[Record], path: str | os.PathLike) -> None:
    """Write records (or a table) to one Parquet file, atomically.

    The file is written under a temporary name in the same directory and then renamed with
    `os.replace`, so a reader never sees a half-written file.
    """
    table = table_or_records
    if not isinstance(table, pa.Table):
        table = records_to_table(table_or_records)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_parquet(path: str | os.PathLike) -> pa.Table:
    """Read a Parquet file written by `write_parquet` back into an Arrow table."""
    return pq.read_table(os.fspath(path))


def _columns(records_or_table: pa.Table | Sequence[Record]) -> dict[str, list]:
    names = ("level", "prompt_ids", "response_ids", "logprobs", "advantage")
    if isinstance(records_or_table, pa.Table):
        return {n: records_or_table.column(n).to_pylist() for n in names}
    return {n: [getattr(r, n) for r in records_or_table] for n in names}


def pad_batch(
    records_or_table: pa.Table | Sequence[Record],
    *,
    pad_token_id: int,
    levels: Sequence[str] = LEVELS,
    max_len: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response sequences into learner tensors (predictor alignment).

    Row b holds `prompt_ids + response_ids` of record b, left-aligned, then `pad_token_id`.
    Response token j of record b sits at position p = P_b + j (P_b = kept prompt length), and
    its sampling logprob / mask entry sits at column p - 1, the position whose logits predict it.
    Every record keeps its row; records whose level is not in `levels` get an all-zero
    `response_mask` (filter them out beforehand to save compute).

    Truncation: with `max_len` set, a sequence longer than `max_len` loses prompt tokens from
    the LEFT (the oldest context) until it fits. Response tokens are never dropped; a response
    of `max_len` tokens or more raises ValueError (at least one prompt token must remain to
    predict the first response token). T is the longest (truncated) row, so T <= max_len.

    Args:
        records_or_table: B records, or an Arrow table with `RECORD_SCHEMA` columns.
        pad_token_id: id written into padding positions of `input_ids`.
        levels: levels whose response tokens are trained (`response_mask` = 1).
        max_len: longest sequence kept, or None for no limit.

    Returns:
        dict with
            input_ids:      (B, T) int64, prompt + response, right-padded.
            attention_mask: (B, T) int64, 1 on real (prompt or response) tokens.
            response_mask:  (B, T) float32, [b, t] = 1 iff input_ids[b, t+1] is a response token
                            of a record whose level is in `levels`.
            old_logprobs:   (B, T) float32, [b, t] = sampling logprob of input_ids[b, t+1] where
                            that is a response token (any level), else 0.
            advantages:     (B,) float32, `Record.advantage`.
            level_ids:      (B,) int64, `LEVEL_IDS[level]` (plan 0, act 1).
    """
    cols = _columns(records_or_table)
    n = len(cols["level"])
    if n == 0:
        raise ValueError("pad_batch needs at least one record")
    unknown = set(levels) - set(LEVELS)
    if unknown:
        raise ValueError(f"unknown levels {sorted(unknown)}; expected a subset of {LEVELS}")

    rows = []
    for prompt, response in zip(cols["prompt_ids"], cols["response_ids"]):
        if max_len is not None and len(prompt) + len(response) > max_len:
            if len(response) >= max_len:
                raise ValueError(
                    f"response of {len(response)} tokens does not fit max_len={max_len} "
                    "with at least one prompt token"
                )
            # left-truncate: keep the most recent max_len - len(response) prompt tokens
            prompt = prompt[len(prompt) + len(response) - max_len :]
        rows.append((prompt, response))
    T = max(len(p) + len(r) for p, r in rows)

    input_ids = torch.full((n, T), pad_token_id, dtype=torch.int64)
    attention_mask = torch.zeros((n, T), dtype=torch.int64)
    response_mask = torch.zeros((n, T), dtype=torch.float32)
    old_logprobs = torch.zeros((n, T), dtype=torch.float32)
    for b, (prompt, response) in enumerate(rows):
        P, R = len(prompt), len(response)
        input_ids[b, : P + R] = torch.tensor(list(prompt) + list(response), dtype=torch.int64)
        attention_mask[b, : P + R] = 1
        if R == 0:
            continue
        # response token j is at position P + j and is predicted by position P + j - 1;
        # with an empty prompt the first response token has no predictor and is skipped
        start = max(P - 1, 0)
        skip = start - (P - 1)
        old_logprobs[b, start : P + R - 1] = torch.tensor(
            cols["logprobs"][b][skip:], dtype=torch.float32
        )
        if cols["level"][b] in levels:
            response_mask[b, start : P + R - 1] = 1.0

    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "old_logprobs": old_logprobs,
        "advantages": torch.tensor(cols["advantage"], dtype=torch.float32),
        "level_ids": torch.tensor([LEVEL_IDS[lv] for lv in cols["level"]], dtype=torch.int64),
    }


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
