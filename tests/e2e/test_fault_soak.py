"""The fault-injection soak (issue #15): 6 tiny-model iterations while a seeded schedule kills an env
pool, a sampler, a learner rank (SIGKILL to the actor's pid, a descendant of this test) and the
driver (then `--resume`); compared with an uninterrupted run of the same config and seeds.

Tolerance: final weights within `benchmarks.fault_bench.WEIGHT_TOL` (1e-5) of the reference's,
while the reference's weights moved by far more than that from the initial ones.
"""

import pytest

from benchmarks.fault_bench import ITERATIONS, WEIGHT_TOL, format_table, soak

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.timeout(3600)]


def test_soak_loses_and_duplicates_nothing(tmp_path):
    out = soak(work_dir=tmp_path, seed=0, iterations=ITERATIONS)
    print(format_table(out))
    assert sorted(r["kind"] for r in out["schedule"]) == ["driver", "env_pool", "learner", "sampler"]
    assert out["faults_recovered"] == out["faults_injected"] == 4, out["recoveries_logged"]
    assert out["reached_last_iteration"] and out["metrics_rows_one_per_iteration"]
    assert out["records_soak"] == out["records_reference"] > 0
    assert out["records_lost"] == out["records_duplicated"] == out["records_extra"] == 0
    assert out["weights_moved_max_abs"] > 100 * WEIGHT_TOL
    assert out["final_weight_max_abs_diff"] <= WEIGHT_TOL
