"""The GPU sizing model: its tables agree with their sources, its estimates behave, its report is
the one docs/scaling.md shows, and `himac-ray plan` works on every paper config."""

import dataclasses
from pathlib import Path

import pytest

from himac_ray.config import load_config
from himac_ray.tools import sizing as S

ROOT = Path(__file__).resolve().parents[3]
PAPER = sorted((ROOT / "configs").glob("*_qwen25_*.yaml"))
H100, A100 = S.GPUS["H100-80GB"], S.GPUS["A100-80GB"]
A = S.Assumptions()

# Hugging Face config.json values of the two paper models
QWEN_1P5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                 intermediate_size=8960, vocab_size=151936, tie_word_embeddings=True)
QWEN_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
               intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False)
LLAMA31_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                  intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False)


@pytest.mark.parametrize("key, hf", [("qwen2.5-1.5b", QWEN_1P5B), ("qwen2.5-7b", QWEN_7B)])
def test_model_table_matches_architecture(key, hf):
    table, derived = S.MODELS[key], S.spec_from_hf_config(hf)
    assert derived.params == pytest.approx(table.params, rel=0.01)
    for f in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab", "tied"):
        assert getattr(derived, f) == getattr(table, f), f


@pytest.mark.parametrize("path, key", [
    ("Qwen/Qwen2.5-1.5B-Instruct", "qwen2.5-1.5b"),
    ("/models/Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b"),
    ("/models/qwen2_5-7b", "qwen2.5-7b"),
    ("embedded", "smollm2-135m"),
])
def test_model_spec_from_path(path, key):
    assert S.model_spec(path) == S.MODELS[key]


def test_model_spec_unknown_and_local_folder(tmp_path):
    with pytest.raises(S.SizingError, match="unknown model"):
        S.model_spec("/nowhere/mystery-model")
    (tmp_path / "config.json").write_text(__import__("json").dumps(QWEN_7B))
    assert S.model_spec(str(tmp_path)).params == pytest.approx(7.61e9, rel=0.01)


def test_decode_model_reproduces_the_published_batch1_figures():
    llama = S.spec_from_hf_config(LLAMA31_8B)
    # H100: TPOT 6.48 ms at batch 1 (FIGURES); A100-40GB (1.555 TB/s): 75 tok/s
    h100 = S.decode_step_s(llama, H100, A, batch=1, context=1100, tp=1)
    a100_40 = dataclasses.replace(A100, hbm_bw=1.555e12, memory_gb=40)
    a100 = S.decode_step_s(llama, a100_40, A, batch=1, context=1100, tp=1)
    assert h100 == pytest.approx(6.48e-3, rel=0.1)
    assert 1 / a100 == pytest.approx(75, rel=0.1)


def test_decode_step_grows_with_batch_and_shrinks_with_tp():
    m = S.MODELS["qwen2.5-7b"]
    steps = [S.decode_step_s(m, H100, A, batch=b, context=1000, tp=1) for b in (1, 16, 128, 512)]
    assert steps == sorted(steps) and steps[-1] > 2 * steps[0]
    assert S.decode_step_s(m, H100, A, batch=64, context=1000, tp=4) < steps[2]


def test_tokens_per_iteration_alfworld():
    w = S.paper_workload("alfworld", 50)
    rows = {r["phase"]: r for r in S.tokens_per_iteration(w)}
    assert set(rows) == {"planner", "executor"} and rows["planner"]["share"] == 0.5
    assert rows["planner"]["plan_records"] == 128 and rows["planner"]["act_records"] == 128 * 50
    assert rows["planner"]["trained_records"] == 128
    # executor: macro pass to pick z*, then 8 executions of it per group
    assert rows["executor"]["act_records"] == 2 * 128 * 50
    assert rows["executor"]["trained_records"] == 128 * 50
    assert rows["executor"]["trained_tokens"] > 50 * rows["planner"]["trained_tokens"]


def test_phases_for_every_algorithm_shape():
    base = S.paper_workload("webshop", 15)
    flat = S.phases(dataclasses.replace(base, algorithm="grpo"), A)
    assert [p.name for p in flat] == ["flat"] and flat[0].trained_act == 128 * 15 and not flat[0].trained_plan
    both = S.phases(dataclasses.replace(base, coevolution=False), A)
    assert [p.name for p in both] == ["both"] and both[0].trained_plan == 128 and both[0].trained_act == 128 * 15
    skew = S.phases(dataclasses.replace(base, planner_iters=1, executor_iters=3), A)
    assert [p.weight for p in skew] == [0.25, 0.75]
    reuse = S.phases(base, dataclasses.replace(A, executor_reuses_blueprints=True))
    assert reuse[1].plan_records == 0 and len(reuse[1].rounds) == 15
    half = S.phases(base, dataclasses.replace(A, mean_steps_fraction=0.5))
    assert half[0].act_records == 128 * 15 * 0.5


def test_candidate_layouts_respect_heads():
    seven = S.candidate_layouts(8, model=S.MODELS["qwen2.5-7b"])  # 28 heads: no TP 8
    assert {lay.tp for lay in seven} == {1, 2, 4}
    small = S.candidate_layouts(2, model=S.MODELS["qwen2.5-1.5b"])
    assert sum(lay.colocated for lay in small) == 2 and all(lay.total == 2 for lay in small)
    assert [lay for lay in S.candidate_layouts(1)] == [S.Layout(1, 1, 1, True)]
    with pytest.raises(S.SizingError):
        S.candidate_layouts(0)


def test_sync_paths_order():
    m = S.MODELS["qwen2.5-7b"]
    t = {p: S.sync_seconds(p, m, H100, A, receiver_nodes=7) for p in S.SYNC_PATHS}
    assert t["ipc"] < t["nccl-ib"] and t["nccl-nvlink"] < t["nccl-ib"] < t["shm"] < t["objstore"]
    assert S.sync_seconds("nccl-ib", m, H100, A, learner_ranks=8, zero_stage=3) > t["nccl-ib"]
    with pytest.raises(S.SizingError):
        S.sync_seconds("pigeon", m, H100, A)


def test_memory_model():
    w7 = S.paper_workload("alfworld", 50, zero_stage=3, micro_batch=2)
    m = S.MODELS["qwen2.5-7b"]
    one, four = (S.learner_memory_gb(w7, m, ranks=r, seq=1191) for r in (1, 4))
    assert one > 16 * 7.61 and four < one / 3  # ZeRO-3 shards states and reference
    assert S.learner_memory_gb(w7, m, ranks=4, seq=1191, checkpointing=True) < four
    assert S.sampler_memory_gb(m, seqs=128, context=1700, tp=1) > S.sampler_memory_gb(m, seqs=128, context=1700, tp=4)


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_plan_from_paper_configs(path):
    cfg = load_config(path)
    rows = S.plan_from_config(cfg)
    own = [r for r in rows if r["origin"] == "config"]
    assert len(own) == 1 and own[0]["fits"], own
    assert sum(r["best"] for r in rows) == 1
    best = next(r for r in rows if r["best"])
    assert best["iter_s"] <= own[0]["iter_s"]
    assert all(r["gpus"] == own[0]["gpus"] for r in rows)
    for r in rows:
        assert r["iter_s"] == pytest.approx(r["rollout_s"] + r["train_s"] + r["sync_s"])
        assert r["sync_s"] < r["async_iter_s"] <= r["iter_s"] + 1e-9
        assert 0 < r["gpu_busy"] <= 1.0 + 1e-9
    table = S.format_plan_table(rows)
    assert "(config)" in table and "* " in table


def test_more_gpus_are_not_slower_and_cpu_configs_need_gpus():
    cfg = load_config(ROOT / "configs" / "alfworld_qwen25_7b.yaml")
    best = lambda n: next(r for r in S.plan_from_config(cfg, gpus=n) if r["best"])["iter_s"]  # noqa: E731
    assert best(64) < best(8) < best(4)
    tiny = load_config(ROOT / "configs" / "sokoban_tiny.yaml")
    with pytest.raises(S.SizingError, match="--gpus"):
        S.plan_from_config(tiny)
    with pytest.raises(S.SizingError, match="unknown model"):
        S.plan_from_config(tiny, gpus=2)  # a random tiny Llama: pass --model
    assert S.plan_from_config(tiny, gpus=2, model="qwen2.5-0.5b")


def test_async_iteration_estimate():
    """Async (one rollout ahead) per iteration = max(rollout, learn) + sync, never above sync's
    rollout + learn + sync; with co-evolution each learner step runs beside the next phase's rollout."""
    assert S.async_iteration_seconds(rollout_s=10.0, learn_s=4.0, sync_s=1.0) == 11.0
    assert S.async_iteration_seconds(rollout_s=4.0, learn_s=10.0, sync_s=1.0) == 11.0
    assert S.async_iteration_seconds(rollout_s=5.0, learn_s=5.0, sync_s=0.5) == 5.5 < 5.0 + 5.0 + 0.5

    m = S.MODELS["qwen2.5-1.5b"]
    split, colocated = S.Layout(1, 1, 1, False), S.Layout(2, 1, 2, True)
    flat = dataclasses.replace(S.paper_workload("webshop", 15), algorithm="grpo")
    r = S.estimate(flat, m, H100, split)
    assert r["async_iter_s"] == pytest.approx(max(r["rollout_s"], r["train_s"]) + r["sync_s"])
    assert r["async_iter_s"] < r["iter_s"] == pytest.approx(r["rollout_s"] + r["train_s"] + r["sync_s"])
    c = S.estimate(flat, m, H100, colocated)
    assert c["async_iter_s"] == c["iter_s"]  # the same GPUs would do both: no gain counted

    for planner_iters, executor_iters in ((1, 1), (1, 3)):
        w = dataclasses.replace(S.paper_workload("alfworld", 50), planner_iters=planner_iters,
                                executor_iters=executor_iters)
        r = S.estimate(w, m, H100, split)
        (rp, lp), (re, le) = ((r["phase_s"][k]["rollout_s"], r["phase_s"][k]["train_s"]) for k in ("planner", "executor"))
        sync = r["sync_s"]
        # cycle P..P E..E: (P, P) x (P-1), (P, E), (E, E) x (E-1), (E, P); learner of one, rollout of the next
        pairs = ([max(rp, lp)] * (planner_iters - 1) + [max(re, lp)] + [max(re, le)] * (executor_iters - 1)
                 + [max(rp, le)])
        assert r["async_iter_s"] == pytest.approx(sum(pairs) / len(pairs) + sync)
        assert r["async_iter_s"] <= r["iter_s"]


def test_paper_rows_and_report():
    rows = S.paper_rows()
    assert [r["setting"] for r in rows] == [f"{s[0]} / {s[4]} GPUs" for s in S.PAPER_SETTINGS]
    assert all(r["fits"] for r in rows)
    split = S.paper_rows(split_only=True)
    assert not any(r["colocated"] for r in split)
    assert all(b["iter_s"] <= s["iter_s"] + 1e-9 for b, s in zip(rows, split))
    md = S.format_plan_table(rows, markdown=True)
    assert len({line.count("|") for line in md.splitlines()}) == 1


def test_scaling_doc_embeds_the_current_report():
    text = (ROOT / "docs" / "scaling.md").read_text()
    begin, end = "<!-- BEGIN GENERATED: python -m himac_ray.tools.sizing --paper -->\n", "<!-- END GENERATED -->"
    assert begin in text and end in text
    embedded = text.split(begin, 1)[1].split(end, 1)[0]
    assert embedded.strip() == S.paper_report().strip(), (
        "docs/scaling.md is stale: paste the output of `python -m himac_ray.tools.sizing --paper` between the markers"
    )
    figures = text.split("<!-- BEGIN GENERATED: python -m himac_ray.tools.sizing --figures -->\n", 1)[1]
    assert figures.split(end, 1)[0].strip() == S.figures_table().strip()


def test_main_prints_a_plan(capsys):
    cfg = str(ROOT / "configs" / "webshop_qwen25_1p5b.yaml")
    assert S.main(["--config", cfg, "--gpus", "4", "--top", "2", "--assume", "mean_steps_fraction=0.5"]) == 0
    out = capsys.readouterr().out
    assert "Qwen2.5-1.5B" in out and "iter s" in out and "mean_steps_fraction=0.5" in out
    assert "async s" in out and S.ASYNC_ASSUMPTION in out and "(by iter s:" in out
    assert S.main(["--config", cfg, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"iter_s"' in out and '"async_iter_s"' in out
    assert S.main(["--config", cfg, "--set", "run.pipeline=async", "--top", "1"]) == 0
    assert "(by async s:" in capsys.readouterr().out
    assert S.main(["--config", cfg, "--assume", "nonsense=1"]) == 2
    assert S.main(["--config", str(ROOT / "configs" / "sokoban_tiny.yaml")]) == 2
    assert S.main(["--figures"]) == 0 and "source" in capsys.readouterr().out


def test_add_arguments_fits_a_parent_parser():
    import argparse

    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config")
    parent.add_argument("--set", dest="overrides", action="append", default=[])
    p = S.add_arguments(argparse.ArgumentParser(parents=[parent]), config_args=False)
    args = p.parse_args(["--config", "x.yaml", "--gpus", "64", "--gpu", "A100-80GB"])
    assert (args.config, args.gpus, args.gpu, args.overrides) == ("x.yaml", 64, "A100-80GB", [])


@pytest.mark.slow  # ~10 s: loads transformers and a tokenizer
def test_prompt_token_table_matches_a_measurement():
    """The PROMPT_TOKENS table is what `measure_prompt_tokens` gives with the embedded tokenizer
    (a prompt change that moves lengths by more than a third should refresh the table)."""
    from himac_ray.models import EMBEDDED_MODEL_NAME, cache_dir

    folder = cache_dir() / EMBEDDED_MODEL_NAME
    if not (folder / "tokenizer.json").exists():
        pytest.skip("embedded model not prepared (make install)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    for env_id, kind in (("himac/Sokoban-v0", "sokoban"), ("himac/ALFWorld-v0", "alfworld"),
                         ("himac/WebShop-v0", "webshop")):
        measured = S.measure_prompt_tokens(env_id, tok, episodes=3)
        for got, table in zip(measured, S.PROMPT_TOKENS[kind]):
            assert got == pytest.approx(table, rel=0.35), (env_id, measured, S.PROMPT_TOKENS[kind])
