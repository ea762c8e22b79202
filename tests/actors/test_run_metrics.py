"""RunMetrics: gauge names/tags match the Grafana dashboard; rates come from sampler-stat deltas.

Runs without a Ray cluster (a fake gauge class records what would be exported); the real
export through Prometheus is tests/e2e/test_metrics_prometheus.py.
"""

import json
import re
from pathlib import Path

import pytest

from actors.metrics import GAUGES, PREFIX, RunMetrics, SamplerRates

ROOT = Path(__file__).parents[2]


class FakeGauge:
    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys, self.default, self.values = name, tuple(tag_keys), {}, {}

    def set_default_tags(self, tags):
        assert set(tags) <= set(self.tag_keys)
        self.default = dict(tags)
        return self

    def set(self, value, tags=None):
        final = {**self.default, **(tags or {})}
        assert set(final) == set(self.tag_keys), (self.name, final)
        assert isinstance(value, float) and all(isinstance(v, str) for v in final.values())
        self.values[tuple(final[k] for k in self.tag_keys)] = value


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def row(**extra):
    base = {
        "iteration": 0, "trainable": "planner", "charts/success_rate": 0.25, "charts/mean_return": -0.5,
        "charts/invalid_action_rate": 0.1, "charts/mean_response_len": 17.0, "charts/env_steps_total": 60,
        "perf/rollout_tokens_per_s": 400.0, "perf/env_steps_per_s": 12.0, "perf/weight_sync_seconds": 0.2,
        "perf/learner_tokens_per_s": 900.0, "time/rollout": 5.0, "time/advantage": 0.01, "time/learn": 2.0,
        "time/sync": 0.2, "time/record": 0.05, "perf/sampler_busy_fraction": 0.7, "perf/learner_busy_fraction": 0.3,
        "async/overlap_seconds": 1.5, "async/dropped_stale": 0, "async/staleness_0": 3, "async/staleness_1": 5,
        "async/staleness_max": 1, "off_policy/is_weight_mean": 1.01, "off_policy/is_weight_max": 1.3,
        "off_policy/is_truncated_fraction": 0.0,
    }
    return {**base, **extra}


def make(run="r1"):
    clock = Clock()
    return RunMetrics(run, gauge_cls=FakeGauge, clock=clock), clock


def test_gauges_match_the_grafana_dashboard():
    dash = json.loads((ROOT / "deploy" / "grafana" / "himac-ray.json").read_text())
    queried = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"ray_(himac_\w+)\{", t["expr"])}
    assert queried == {PREFIX + name for name in GAUGES}
    for panel in dash["panels"]:
        for target in panel["targets"]:
            name = re.search(r"ray_himac_(\w+)\{", target["expr"]).group(1)
            for label in re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")):
                assert label in GAUGES[name][1], (name, label)


def test_record_iteration_sets_every_gauge():
    m, clock = make()
    clock.t += 10
    stats = [{"role": "both", "generated_tokens": 800, "busy_seconds": 4.0, "busy_fraction": 0.4}]
    out = m.record_iteration(row(), stats)
    g = m.gauges
    assert g["rollout_tokens_per_s"].values == {("r1", "both"): 200.0}
    assert g["sampler_busy_fraction"].values == {("r1", "both"): pytest.approx(0.4)}
    assert g["success_rate"].values == {("r1",): 0.25}
    assert g["mean_return"].values == {("r1",): -0.5}
    assert g["invalid_action_rate"].values == {("r1",): 0.1}
    assert g["env_steps_per_s"].values == {("r1",): 12.0}
    assert g["weight_sync_seconds"].values == {("r1",): 0.2}
    assert g["learner_tokens_per_s"].values == {("r1",): 900.0}
    assert g["response_length"].values == {("r1", "both"): 17.0}
    assert g["trainable_level"].values == {("r1",): 0.0}
    assert set(g["phase_seconds"].values) == {("r1", p) for p in ("rollout", "advantage", "learn", "sync", "record")}
    assert out[("phase_seconds", "learn")] == 2.0
    assert g["staleness_records"].values == {("r1", "0"): 3.0, ("r1", "1"): 5.0}
    assert g["learner_busy_fraction"].values == {("r1",): 0.3} and g["is_weight_max"].values == {("r1",): 1.3}
    assert all(gauge.values for gauge in g.values())


def test_rates_come_from_deltas_per_role():
    m, clock = make()
    clock.t += 10
    first = [{"role": "planner", "generated_tokens": 100, "busy_seconds": 1.0},
             {"role": "executor", "generated_tokens": 300, "busy_seconds": 2.0},
             {"role": "executor", "generated_tokens": 500, "busy_seconds": 2.0}]
    m.record_iteration(row(), first)
    clock.t += 20
    second = [{"role": "planner", "generated_tokens": 400, "busy_seconds": 3.0},
              {"role": "executor", "generated_tokens": 700, "busy_seconds": 6.0},
              {"role": "executor", "generated_tokens": 900, "busy_seconds": 6.0}]
    m.record_iteration(row(trainable="executor"), second)
    tok = m.gauges["rollout_tokens_per_s"].values
    busy = m.gauges["sampler_busy_fraction"].values
    assert tok[("r1", "planner")] == pytest.approx(300 / 2.0)
    # two executor engines side by side: 800 new tokens over the 4 s each was busy
    assert tok[("r1", "executor")] == pytest.approx(800 / 4.0)
    assert busy[("r1", "planner")] == pytest.approx(2.0 / 20)
    assert busy[("r1", "executor")] == pytest.approx(4.0 / 20)
    assert m.gauges["trainable_level"].values == {("r1",): 1.0}


def test_restarted_sampler_starts_a_new_baseline():
    rates = SamplerRates(Clock())
    rates.clock.t += 5
    rates.update([{"role": "both", "generated_tokens": 1000, "busy_seconds": 5.0}])
    rates.clock.t += 5
    out = rates.update([{"role": "both", "generated_tokens": 50, "busy_seconds": 0.5}])  # counters reset
    assert out["both"]["tokens_per_s"] == pytest.approx(100.0)
    assert 0 <= out["both"]["busy_fraction"] <= 1


def test_both_levels_and_missing_values():
    m, _ = make()
    r = row(trainable="both")
    del r["perf/learner_tokens_per_s"]
    r.update({"plan/perf/learner_tokens_per_s": 100.0, "act/perf/learner_tokens_per_s": 300.0,
              "charts/success_rate": float("nan"), "perf/weight_sync_seconds": None})
    m.record_iteration(r, [])
    assert m.gauges["learner_tokens_per_s"].values == {("r1",): 200.0}
    assert m.gauges["trainable_level"].values == {("r1",): 2.0}
    assert m.gauges["success_rate"].values == {} and m.gauges["weight_sync_seconds"].values == {}
    assert m.gauges["rollout_tokens_per_s"].values == {}  # no sampler stats, no rate
