"""Benchmarks: the registry, the pure helpers, the RLlib env view; one slow smoke run of the rollout bench."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import BENCHES, QUICK_SET, run_bench
from benchmarks.rllib_sokoban import SokobanGridEnv, SokobanHierarchy
from himac_ray.data import Record
from himac_ray.envs.sokoban import ACTIONS


def test_registry_lists_every_benchmark():
    assert set(BENCHES) == {"env", "rollout", "sync", "learner", "learning", "ablations", "rllib", "profile",
                           "faults", "pipeline", "lora", "quick"}
    assert set(QUICK_SET) <= set(BENCHES)
    with pytest.raises(KeyError, match="unknown benchmark"):
        run_bench("nope")


def test_env_bench_through_the_registry_returns_json_figures(capsys):
    out = run_bench("env", {"seconds": 0.05})
    assert out["bench"] == "env" and out["steps_per_s"]["himac/Sokoban-v0"] > 0
    json.dumps(out)
    assert "himac/Sokoban-v0" in capsys.readouterr().out


def _rec(level, step, traj):
    return Record(group_id="g", traj_id=traj, level=level, env_id="e", seed=0, step=step, subgoal_index=0,
                  prompt_ids=[1, 2], response_ids=[3], logprobs=[0.0])


def test_replay_rounds_follow_the_rollout_generate_calls():
    from benchmarks.rollout_bench import replay_rounds

    recs = [_rec("plan", -1, "a"), _rec("plan", -1, "b"), _rec("act", 0, "a"), _rec("act", 1, "a"), _rec("act", 0, "b")]
    rounds = replay_rounds(recs)
    assert [[(r.level, r.step, r.traj_id) for r in rnd] for rnd in rounds] == [
        [("plan", -1, "a"), ("plan", -1, "b")], [("act", 0, "a"), ("act", 0, "b")], [("act", 1, "a")]]


def test_learning_curve_helpers():
    from benchmarks.learning_bench import aggregate, steps_to_reach, success_at

    a = {"curve": [{"env_steps": 0, "success": 0.1}, {"env_steps": 50, "success": 0.5}, {"env_steps": 100, "success": 0.4}]}
    b = {"curve": [{"env_steps": 0, "success": 0.3}, {"env_steps": 100, "success": 0.7}]}
    assert success_at(a["curve"], 49) == 0.1 and success_at(a["curve"], 50) == 0.5
    agg = aggregate([a, b], budget=100, points=3)
    assert [p["env_steps"] for p in agg] == [0, 50, 100]
    assert agg[1]["mean"] == pytest.approx(0.4) and agg[2]["min"] == 0.4 and agg[2]["max"] == 0.7
    assert steps_to_reach(agg, 0.4) == 50 and steps_to_reach(agg, 0.9) is None


def test_learning_summary_compares_algorithms_within_a_family():
    from benchmarks.learning_bench import summarize

    def run(algo, seed, fam, finals, **extra):
        curve = [{"env_steps": 0, "success": 0.5}] + [{"env_steps": 50 * (i + 1), "success": f} for i, f in enumerate(finals)]
        return {"algo": algo, "seed": seed, "curve": curve, "start_success": 0.5, "final_success": finals[-1],
                "rise": finals[-1] - 0.5, "rise_ci95": [0.01, 0.2], **({"family": fam} if fam is not None else {}), **extra}

    out = {"spec": {"budget": 100}, "runs": {
        "a": run("himac", 0, "[lr=1]@ws2", [0.6, 0.8]), "b": run("himac", 1, "[lr=1]@ws2", [0.7, 0.7]),
        "c": run("grpo", 0, "[lr=1]@ws2", [0.6, 0.65]),
        "d": run("grpo", 0, "@ws1", [0.9, 0.9]),  # another warm start: not compared with the ones above
        "e": run("himac", 0, None, [0.4, 0.4], variant="lr=1"),  # recorded before families: `[overrides]`
    }}
    summarize(out)
    assert set(out["by_algo"]) == {"himac[lr=1]@ws2", "grpo[lr=1]@ws2", "grpo@ws1", "himac[lr=1]"}
    assert out["by_algo"]["himac[lr=1]@ws2"]["seeds"] == [0, 1]
    assert out["by_algo"]["himac[lr=1]@ws2"]["final"] == pytest.approx(0.75)
    assert out["grpo_best_success"] == {"[lr=1]@ws2": 0.65, "@ws1": 0.9}
    # HiMAC's seed mean reaches GRPO's best 0.65 at the first evaluation (50 steps); GRPO itself at 100
    assert out["steps_to_grpo_best"]["[lr=1]@ws2"] == {"grpo": 100, "himac": 50}
    assert out["steps_to_grpo_best"]["@ws1"] == {"grpo": 50}
    assert out["by_algo"]["himac[lr=1]@ws2"]["rise_ci95"] is None  # these runs keep no per-room evaluations


def test_learning_summary_never_averages_runs_of_different_budgets():
    from benchmarks.learning_bench import summarize

    def run(seed, final):
        return {"algo": "himac", "seed": seed, "curve": [{"env_steps": 0, "success": 0.5}, {"env_steps": 90, "success": final}],
                "start_success": 0.5, "final_success": final, "rise": final - 0.5, "rise_ci95": [0, 0.1], "family": "@ws"}

    out = {"spec": {"budget": 100}, "runs": {"himac-seed0-budget50@ws": run(0, 0.6), "himac-seed0-budget100@ws": run(0, 0.9),
                                             "himac-seed1-budget100@ws": run(1, 0.7)}}
    summarize(out)
    assert set(out["by_algo"]) == {"himac-budget50@ws", "himac-budget100@ws"}
    assert out["by_algo"]["himac-budget100@ws"]["seeds"] == [0, 1]
    assert out["by_algo"]["himac-budget100@ws"]["final"] == pytest.approx(0.8)
    assert out["by_algo"]["himac-budget50@ws"]["budget"] == 50


def test_learning_summary_interval_of_the_seed_mean_pairs_rooms_across_seeds():
    from benchmarks.learning_bench import summarize

    def run(seed, before, after):
        evals = [{"won_by_seed": dict(enumerate(before))}, {"won_by_seed": dict(enumerate(after))}]
        return {"algo": "himac", "seed": seed, "curve": [{"env_steps": 0, "success": 0.5}], "evals": evals,
                "start_success": 0.5, "final_success": 0.5, "rise": 0.0, "rise_ci95": [0, 0], "family": "@ws"}

    # seed 0 wins rooms 0-7 it lost, seed 1 loses nothing: every room's mean rise is 0.5 or 0
    rises = {"a": run(0, [0] * 8 + [1] * 8, [1] * 16), "b": run(1, [0] * 8 + [1] * 8, [0] * 8 + [1] * 8)}
    out = {"spec": {"budget": 100}, "runs": rises}
    summarize(out)
    lo, hi = out["by_algo"]["himac@ws"]["rise_ci95"]
    assert 0 < lo < 0.25 < hi <= 0.5
    # seed 1 loses rooms 8-15 instead: mean rise +0.5 on rooms 0-7, -0.5 on rooms 8-15, 0 overall
    out["runs"]["b"] = run(1, [0] * 8 + [1] * 8, [0] * 16)
    summarize(out)
    lo, hi = out["by_algo"]["himac@ws"]["rise_ci95"]
    assert lo < 0 < hi


def test_long_run_keys_make_short_distinct_directories(tmp_path):
    from benchmarks.learning_bench import MAX_DIR_NAME, run_dir_name

    short = "himac-seed0-budget8000[learner.lr=5e-5]"
    assert run_dir_name(short) == short
    tags = ",".join(f"algorithm.option_{i}=value" for i in range(12))
    a, b = run_dir_name(f"himac-seed1-budget8000[{tags}]"), run_dir_name(f"himac-seed1-budget8000[{tags},x=1]")
    assert len(a) == MAX_DIR_NAME and a != b and a.startswith("himac-seed1-budget8000[")
    (tmp_path / a).mkdir()  # a valid file name


def test_grid_env_is_the_text_env_with_planes():
    env = SokobanGridEnv({"seeds": [3, 4]})
    obs, info = env.reset()
    assert obs.shape == (6, 6, 4) and obs.dtype == np.float32 and info["seed"] == 3
    assert obs[..., 3].sum() == 1 and obs[..., 2].sum() == 1 and obs[..., 1].sum() == 1
    assert env.observation_space.contains(obs)
    ret, done = 0.0, False
    for a in env.inner.expert_actions():
        obs, r, terminated, truncated, info = env.step(ACTIONS.index(a))
        ret += r
        done = terminated
    assert done and info["won"] and ret > 9
    assert env.reset()[1]["seed"] == 4 and env.reset()[1]["seed"] == 3  # cycles through fixed seeds
    train = SokobanGridEnv({"seed_offset": 1})
    seeds = {train.reset()[1]["seed"] for _ in range(5)}
    assert min(seeds) >= 1000 and len(seeds) > 1


def test_hierarchy_turns_alternate_between_planner_and_executor():
    h = SokobanHierarchy({"seeds": [0], "subgoal_steps": 2})
    obs, _ = h.reset()
    assert list(obs) == ["planner"]
    obs, rew, term, trunc, _ = h.step({"planner": 0})  # a wall cell: never reached
    assert list(obs) == ["executor"] and obs["executor"].shape == (6, 6, 5) and rew == {"planner": 0.0}
    obs, rew, *_ = h.step({"executor": 0})
    assert list(obs) == ["executor"]
    obs, rew, term, trunc, _ = h.step({"executor": 0})  # budget of 2 steps spent: back to the planner
    assert list(obs) == ["planner"] and rew["planner"] == pytest.approx(-0.2) and not term["__all__"]


def test_ablation_bench_takes_set_overrides_and_never_overwrites_another_table(tmp_path, monkeypatch):
    """`--set` reaches every variant after the recipe's overrides; a results file of another budget
    or other overrides stops the command (before any run) and is left as it was."""
    from benchmarks import ablation_bench as A

    spec = A.variant_spec(A.L.with_run_options(dict(A.SIZES["full"]), {"overrides": ["learner.lr=1e-4"]}), "G=2")
    assert spec["overrides"][-2:] == ("learner.lr=1e-4", "algorithm.group_size=2")
    assert spec["overrides"][:-2] == A.SIZES["full"]["overrides"]
    monkeypatch.setattr(A, "RESULTS_DIR", tmp_path)
    saved = tmp_path / "ablations_full.json"
    saved.write_text(json.dumps({"spec": {"budget": 4000, "overrides": list(A.SIZES["full"]["overrides"])},
                                 "runs": {"himac-seed0": {}}}))
    before = saved.read_text()
    for args in ({"size": "full", "budget": 2000}, {"size": "full", "budget": 4000, "overrides": ["learner.lr=1e-4"]}):
        with pytest.raises(ValueError, match="holds runs of budget 4000"):
            A.run(args, quick=False)
    assert saved.read_text() == before


@pytest.mark.slow
def test_ablation_bench_smoke_runs_each_kind_of_variant():
    """Full HiMAC (the baseline), prompting only (no RL), flat GRPO (its own warm start) and the
    adaptive group size, on the tiny model, through the registry."""
    from benchmarks.ablation_bench import VARIANTS

    variants = ["himac", "prompting_only", "no_hierarchy", "G=auto"]
    out = run_bench("ablations", {"size": "smoke", "variants": ",".join(variants)})
    budget = out["spec"]["budget"]
    assert list(out["table"]) == variants and set(variants) <= set(VARIANTS)
    runs = {r["variant"]: r for r in out["runs"].values()}
    for name in ("himac", "no_hierarchy", "G=auto"):  # RL until the same env-step budget
        assert runs[name]["env_steps"] >= budget and runs[name]["iterations"]
    assert runs["prompting_only"]["env_steps"] == 0
    assert runs["prompting_only"]["final_success"] == runs["himac"]["start_success"]  # the same warm start, no RL
    assert runs["no_hierarchy"]["warm_start"] != runs["himac"]["warm_start"]  # flat prompts: its own warm start
    for name in variants[1:]:  # paired with full HiMAC of the same seed over the same rooms
        (vs,) = out["table"][name]["vs_himac"]
        assert vs["ci95"][0] <= vs["diff"] <= vs["ci95"][1]
    auto = runs["G=auto"]["iterations"]
    assert all(2 <= it["groups/macro_size_mean"] <= 8 for it in auto if "groups/macro_size_mean" in it)
    assert any("groups/macro_start" in it for it in auto)
    assert json.loads(open(out["path"]).read())["table"] == out["table"]


@pytest.mark.slow
def test_rollout_bench_smoke_returns_the_ratio_keys():
    out = run_bench("rollout", {"model": "tiny", "size": "smoke"})
    for key in ("ratio_vs_naive_hf", "ratio_vs_raw_vllm", "tokens_per_s", "env_steps_per_s"):
        assert key in out
    assert out["models"]["tiny"]["a_himac_ray"]["gen_tokens"] > 0
    assert out["models"]["tiny"]["c_raw_vllm"]["gen_tokens"] == out["models"]["tiny"]["a_himac_ray"]["gen_tokens"]
    json.dumps(out)


@pytest.mark.slow
def test_lora_bench_smoke_syncs_only_the_adapter():
    out = run_bench("lora", {"model": "tiny", "size": "smoke"})
    full, lora = out["systems"]["full"], out["systems"]["lora"]
    assert lora["trainable_params"] < full["trainable_params"] / 20
    assert out["sync_bytes_ratio"] >= 20 and lora["learner_tokens"] == full["learner_tokens"] > 0
    json.dumps(out)


def test_fault_schedule_is_seeded_one_fault_per_kind_in_distinct_middle_iterations():
    from benchmarks.fault_bench import FAULT_KINDS, make_schedule

    a, b = make_schedule(0, 6), make_schedule(0, 6)
    assert a == b and a != make_schedule(1, 6)
    assert sorted(f["kind"] for f in a) == sorted(FAULT_KINDS)
    assert sorted(f["iteration"] for f in a) == [1, 2, 3, 4]  # never the last iteration
    assert all(0 < f["at_fraction"] < 1 for f in a)


def test_pipeline_bench_summary_weighs_busy_fractions_by_iteration_time():
    from benchmarks.pipeline_bench import summarize

    rows = [{"time/iteration": 10.0, "charts/env_steps_total": 30, "perf/sampler_busy_fraction": 1.0,
             "perf/learner_busy_fraction": 0.0},
            {"time/iteration": 30.0, "charts/env_steps_total": 90, "perf/sampler_busy_fraction": 0.5,
             "perf/learner_busy_fraction": 0.5, "async/overlap_seconds": 4.0, "async/dropped_stale": 2}]
    out = summarize(rows, mode="async")
    assert out["env_steps"] == 90 and out["env_steps_per_s"] == pytest.approx(90 / 40)
    assert out["sampler_idle"] == pytest.approx(1 - 25 / 40) and out["learner_idle"] == pytest.approx(1 - 15 / 40)
    assert (out["overlap_s"], out["dropped_stale"]) == (4.0, 2)


def test_pipeline_bench_set_overrides_reach_both_modes_but_not_the_placement_and_save_apart(tmp_path):
    from benchmarks.pipeline_bench import RESULTS_DIR, mode_config, results_path

    sets = ("learner.train_layers=1", "run.pipeline=async", "sampler.threads=2")
    sync, async_ = (mode_config("sokoban_tiny.yaml", 2, m, tmp_path / m, sets) for m in ("sync", "async"))
    assert sync.learner.train_layers == async_.learner.train_layers == 1
    assert (sync.run.pipeline, async_.run.pipeline) == ("sync", "async")  # the mode's key wins
    assert sync.sampler.threads == async_.sampler.threads == 1  # so does the placement
    assert results_path(()) == RESULTS_DIR / "pipeline_full.json"
    assert results_path(sets[:1]) == RESULTS_DIR / "pipeline_full[learner.train_layers=1].json"


def test_learning_bench_env_choice_selects_config_sizes_and_result_files():
    from benchmarks import learning_bench as L
    from himac_ray import cli

    assert tuple(L.ENVS) == cli.BENCH_ENVS and L.DEFAULT_ENV == cli.BENCH_ENVS[0]
    sokoban = L.bench_spec({"size": "full"}, quick=True)
    assert sokoban["env"] == "sokoban" and sokoban["budget"] == L.SIZES["full"]["budget"]
    assert L.result_path(sokoban) == L.RESULTS_DIR / "learning_recipe_full.json"  # Sokoban's name unchanged
    alf = L.bench_spec({"env": "alfworld", "size": "full", "algos": "himac,grpo"}, quick=True)
    assert alf["eval_episodes"] == 128 and alf["algos"] == ("himac", "grpo") and alf["max_steps"] == 20
    assert L.result_path(alf) == L.RESULTS_DIR / "learning_alfworld_full.json"
    smoke = L.bench_spec({"env": "alfworld", "size": "smoke"}, quick=True)
    assert L.result_path(smoke) == L.WORK_DIR / "learning_alfworld_smoke.json"  # never into the results
    with pytest.raises(ValueError, match="unknown learning-bench env 'webshop'"):
        L.bench_spec({"env": "webshop"}, quick=True)
    cfg = L.make_cfg(L.WORK_DIR / "x", algo="grpo", seed=1, spec=alf)
    assert cfg.env.id == "himac/ALFWorld-v0" and cfg.env.kwargs["max_steps"] == 20 and cfg.env.eval_temperature == 0
    assert L.make_cfg(L.WORK_DIR / "x", algo="grpo", seed=1, spec=sokoban).env.id == "himac/Sokoban-v0"
    # the warm start's key covers the env: the two envs' runs never share a family (nor a run key)
    assert L.family(smoke) != L.family(L.bench_spec({"size": "smoke"}, quick=True))


def test_bench_env_flag_errors_are_one_line(capsys):
    from himac_ray import cli

    assert cli.main(["bench", "learning", "--env", "webshop", "--size", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "--env webshop: unknown env; the learning bench runs on sokoban, alfworld" in err and "Traceback" not in err
    assert cli.main(["bench", "ablations", "--env", "alfworld", "--size", "smoke"]) == 2
    assert "applies to the learning bench only" in capsys.readouterr().err


def test_alfworld_evaluation_is_split_by_task_type_with_paired_intervals():
    """A scripted policy's held-out evaluation on ALFWorld carries each task's type; the bench turns a
    warm start and a final evaluation into per-type success with a paired interval over that type's tasks."""
    from benchmarks import learning_bench as L
    from himac_ray.config import load_config
    from himac_ray.envs.alfworld_world import TASK_TYPES
    from himac_ray.evaluate import run_eval
    from himac_ray.generation import ScriptedGenerator
    from himac_ray.rollout import run_rollout

    cfg = load_config(L.ALFWORLD_CONFIG, ["env.eval_episodes=8", "env.kwargs.max_steps=2"])
    gen = ScriptedGenerator(lambda chat, i: "<plan>\n1. look\n</plan>" if "<plan>" in chat[-1]["content"]
                            else "<action>look</action>")

    def rollout(**kw):
        return run_rollout(generator=gen, env_id=cfg.env.id, env_kwargs=cfg.env.kwargs, max_subgoals=4,
                           prompt_format=cfg.rollout.prompt_format, **kw)

    out = run_eval(cfg, rollout)
    types = out["task_type_by_seed"]
    assert sorted(types, key=int) == [str(s) for s in range(8)] and set(types.values()) <= set(TASK_TYPES.values())
    assert {t: s["episodes"] for t, s in out["by_task_type"].items()} == {
        t: sum(v == t for v in types.values()) for t in set(types.values())}
    # warm start: no task won; final: every task of the first type won
    first = types["0"]
    start = {"won_by_seed": {s: 0 for s in types}, "task_type_by_seed": types}
    final = {"won_by_seed": {s: int(t == first) for s, t in types.items()}, "task_type_by_seed": types}
    rise = L.rise_by_task_type(start, final)
    assert set(rise) == set(types.values())
    assert rise[first]["start_success"] == 0 and rise[first]["final_success"] == 1
    assert rise[first]["rise"] == 1 and rise[first]["rise_ci95"] == [1.0, 1.0]
    assert all(r["rise"] == 0 and r["rise_ci95"] == [0.0, 0.0] for t, r in rise.items() if t != first)
    assert L.rise_by_task_type({"won_by_seed": {"0": 1}}, {"won_by_seed": {"0": 1}}) == {}  # Sokoban: no types


def test_learning_summary_and_table_show_task_types():
    from benchmarks.learning_bench import format_table, summarize

    def run(seed, rise):
        by_type = {"pick_and_place_simple": {"tasks": 3, "start_success": 0.0, "final_success": rise, "rise": rise,
                                             "rise_ci95": [0.0, rise]}}
        return {"algo": "himac", "seed": seed, "curve": [{"env_steps": 0, "success": 0.0}], "start_success": 0.0,
                "final_success": rise, "rise": rise, "rise_ci95": [0.0, rise], "family": "@ws", "env_steps": 10,
                "seconds": 60, "by_task_type": by_type}

    out = {"size": "smoke", "spec": {"budget": 10, "env": "alfworld", "model": "tiny", "eval_episodes": 3},
           "runs": {"a": run(0, 1 / 3), "b": run(1, 2 / 3)}}
    summarize(out)
    t = out["by_algo"]["himac@ws"]["by_task_type"]["pick_and_place_simple"]
    assert t["final_success"] == pytest.approx(0.5) and t["every_interval_above_0"] is False
    table = format_table(out)
    assert "ALFWorld" in table and "3 tasks" in table and "pick_and_place_simple" in table


@pytest.mark.slow
def test_learning_bench_alfworld_smoke_reports_success_by_task_type():
    """The ALFWorld learning bench end to end at its smallest size (tiny model, SFT on 2 expert episodes,
    3 held-out tasks, one RL iteration): the JSON it writes holds each evaluation's success by task type, and
    the run keeps its final policy as a model folder (the warm start's config and tokenizer, all of its weights)."""
    from pathlib import Path

    from safetensors import safe_open

    from benchmarks import learning_bench as L
    from himac_ray.envs.alfworld_world import TASK_TYPES

    out = run_bench("learning", {"env": "alfworld", "size": "smoke"})
    saved = json.loads(Path(out["path"]).read_text())
    assert saved["env"] == "alfworld" and saved["config"] == "configs/alfworld_embedded_cpu.yaml"
    assert Path(out["path"]).name == "learning_alfworld_smoke.json" and Path(out["path"]).with_suffix(".png").exists()
    (run,) = saved["runs"].values()
    assert run["env_steps"] >= saved["spec"]["budget"] and run["iterations"]
    types = set(run["by_task_type"])
    assert types and types <= set(TASK_TYPES.values())
    assert sum(t["tasks"] for t in run["by_task_type"].values()) == saved["spec"]["eval_episodes"]
    for ev in (*saved["start_evals"].values(), *run["evals"]):
        assert set(ev["by_task_type"]) == types and len(ev["task_type_by_seed"]) == saved["spec"]["eval_episodes"]
    assert set(saved["by_algo"][f"himac{saved['family']}"]["by_task_type"]) == types
    final, warm = Path(run["final_policy"]), Path(L.warm_start("himac", saved["spec"], build=False))
    assert final.is_relative_to(L.WORK_DIR) and final.name == L.FINAL_POLICY
    assert (final / "config.json").read_text() == (warm / "config.json").read_text()
    assert (final / "tokenizer.json").exists() and not (final / "warm_start_key.json").exists()

    def shapes(path):
        with safe_open(path / "model.safetensors", "pt") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}
    assert shapes(final).items() >= shapes(warm).items()


def test_sokoban_rooms_are_split_into_straight_pushes_and_walk_arounds():
    """Sokoban's held-out rooms are classed by the expert's blueprint (one subgoal: a straight push); a
    learning run's rise is then reported per class with a paired interval over that class's rooms."""
    from benchmarks import learning_bench as L
    from himac_ray.config import load_config
    from himac_ray.envs.sokoban import SokobanTextEnv

    cfg = load_config(L.CONFIG)
    classes = L.room_classes(cfg.env, [str(s) for s in range(16)])
    assert sorted(classes, key=int) == [str(s) for s in range(16)] and set(classes.values()) == set(L.ROOM_CLASSES)
    env = SokobanTextEnv(**cfg.env.kwargs)
    for room, cls in classes.items():
        env.reset(seed=int(room))
        assert (cls == "straight push") == (len(set(env.expert_actions())) == 1)  # pushes in one line, no walk
    start = {"won_by_seed": {s: 0 for s in classes}}  # no task types in Sokoban's evaluations
    final = {"won_by_seed": {s: int(c == "walk-around") for s, c in classes.items()}}
    rise = L.rise_by_task_type(start, final, classes)
    assert rise["walk-around"]["rise"] == 1 and rise["straight push"]["rise"] == 0
    assert rise["walk-around"]["tasks"] + rise["straight push"]["tasks"] == 16
    assert L.rise_by_task_type(start, final) == {}
