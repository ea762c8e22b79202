"""Record <-> Arrow <-> Parquet round trip and pad_batch alignment."""

import math
import os

import pyarrow as pa
import pytest
import torch

from himac_ray.batch import LEVEL_IDS, pad_batch
from himac_ray.data import (
    RECORD_SCHEMA,
    Record,
    read_parquet,
    records_to_table,
    table_to_records,
    write_parquet,
)


def _records() -> list[Record]:
    png = bytes(range(256)) + b"\x89PNG\r\n\x1a\n\x00\xff" * 3  # every byte value, NULs included
    return [
        Record(
            group_id="g0", traj_id="t0", level="plan", env_id="sokoban", seed=2**40 + 3, step=-1,
            subgoal_index=-1, prompt_ids=[1, 2, 3], response_ids=[7, 8],
            logprobs=[-0.1, -1 / 3], response_text="<plan>1. push</plan>", episode_return=10.0,
            won=True, advantage=0.123456789012345678, num_subgoals=2,
        ),
        Record(
            group_id="g1", traj_id="t0", level="act", env_id="sokoban", seed=2**40 + 3, step=0,
            subgoal_index=0, prompt_ids=[4, 5], response_ids=[9, 10, 11],
            logprobs=[-2.5e-310, -math.pi, 0.0], response_text="héllo ✓", reward=-0.1,
            valid=False, sub_done=True, anchor="#__P\n#O_X", episode_return=9.9, image=png,
            extra={"task": "pick", "n": [1, 2.5, None], "nested": {"a": True}},
        ),
        Record(
            group_id="g1", traj_id="t1", level="act", env_id="sokoban", seed=0, step=1,
            subgoal_index=1, prompt_ids=[], response_ids=[], logprobs=[],
        ),
    ]


def test_table_round_trip_and_schema():
    records = _records()
    table = records_to_table(records)
    assert table.schema.equals(RECORD_SCHEMA, check_metadata=True)
    assert table.num_rows == 3
    assert table_to_records(table) == records


def test_parquet_round_trip_bit_exact(tmp_path):
    records = _records()
    path = tmp_path / "batch.parquet"
    write_parquet(records, path)
    assert os.listdir(tmp_path) == ["batch.parquet"]  # no temp file left behind
    table = read_parquet(path)
    assert table.schema.equals(RECORD_SCHEMA, check_metadata=True)
    assert table.equals(records_to_table(records))
    back = table_to_records(table)
    assert back == records
    assert back[1].image == records[1].image and type(back[1].image) is bytes
    assert [x.hex() for x in back[1].logprobs] == [x.hex() for x in records[1].logprobs]
    # writing a table overwrites atomically too
    write_parquet(records_to_table(records[:1]), path)
    assert table_to_records(read_parquet(path)) == records[:1]


def test_records_to_table_validates():
    bad = _records()[0]
    bad.level = "think"
    with pytest.raises(ValueError, match="level"):
        records_to_table([bad])
    bad = _records()[0]
    bad.logprobs = [0.0]
    with pytest.raises(ValueError, match="logprobs"):
        records_to_table([bad])


def _pad_records():
    return [
        Record(group_id="g", traj_id="a", level="plan", env_id="e", seed=0, step=-1,
               subgoal_index=-1, prompt_ids=[11, 12, 13], response_ids=[21, 22],
               logprobs=[-0.5, -0.25], advantage=1.5),
        Record(group_id="g", traj_id="a", level="act", env_id="e", seed=0, step=0,
               subgoal_index=0, prompt_ids=[31], response_ids=[41, 42, 43],
               logprobs=[-1.0, -2.0, -3.0], advantage=-0.5),
    ]


@pytest.mark.parametrize("as_table", [False, True])
def test_pad_batch_alignment(as_table):
    records = _pad_records()
    src = records_to_table(records) if as_table else records
    b = pad_batch(src, pad_token_id=0)
    assert b["input_ids"].tolist() == [[11, 12, 13, 21, 22], [31, 41, 42, 43, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # column t describes token t+1: plan's response tokens at positions 3,4 -> columns 2,3
    assert b["response_mask"].tolist() == [[0, 0, 1, 1, 0], [1, 1, 1, 0, 0]]
    assert b["old_logprobs"].tolist() == [[0, 0, -0.5, -0.25, 0], [-1, -2, -3, 0, 0]]
    assert b["advantages"].tolist() == [1.5, -0.5]
    assert b["level_ids"].tolist() == [LEVEL_IDS["plan"], LEVEL_IDS["act"]]
    assert b["input_ids"].dtype == torch.int64 and b["response_mask"].dtype == torch.float32
    # generic check: every masked column t predicts a response token whose logprob it carries
    for row, r in enumerate(records):
        cols = b["response_mask"][row].nonzero().flatten().tolist()
        P = len(r.prompt_ids)
        assert [b["input_ids"][row, t + 1].item() for t in cols] == r.response_ids
        assert [t + 1 - P for t in cols] == list(range(len(r.response_ids)))


def test_pad_batch_levels_and_truncation():
    records = _pad_records()
    b = pad_batch(records, pad_token_id=-1, levels=("act",))
    assert b["response_mask"][0].sum() == 0 and b["response_mask"][1].sum() == 3
    assert b["old_logprobs"][0].tolist() == [0, 0, -0.5, -0.25, 0]  # still filled
    # max_len=4: plan row loses its oldest prompt token, act row fits untouched
    b = pad_batch(records, pad_token_id=-1, max_len=4)
    assert b["input_ids"].tolist() == [[12, 13, 21, 22], [31, 41, 42, 43]]
    assert b["response_mask"].tolist() == [[0, 1, 1, 0], [1, 1, 1, 0]]
    assert b["old_logprobs"][0].tolist() == [0, -0.5, -0.25, 0]
    with pytest.raises(ValueError, match="max_len"):
        pad_batch(records, pad_token_id=0, max_len=3)


def test_pad_batch_empty_prompt_skips_unpredictable_token():
    r = Record(group_id="g", traj_id="a", level="act", env_id="e", seed=0, step=0,
               subgoal_index=-1, prompt_ids=[], response_ids=[5, 6, 7], logprobs=[-1.0, -2.0, -3.0])
    b = pad_batch([r], pad_token_id=0)
    assert b["response_mask"].tolist() == [[1, 1, 0]]
    assert b["old_logprobs"].tolist() == [[-2, -3, 0]]


def test_table_missing_column():
    table = records_to_table(_records()).drop_columns(["anchor"])
    with pytest.raises(ValueError, match="anchor"):
        table_to_records(table)
    assert isinstance(table, pa.Table)


def test_a_table_from_before_weights_version_reads_back_with_version_0(tmp_path):
    r = Record(group_id="g", traj_id="t", level="act", env_id="e", seed=1, step=0, subgoal_index=-1,
               prompt_ids=[1], response_ids=[2], logprobs=[-0.5], weights_version=7)
    table = records_to_table([r])
    assert table_to_records(table)[0].weights_version == 7
    old = table.drop_columns(["weights_version"])
    assert "weights_version" not in old.column_names and table_to_records(old)[0].weights_version == 0
