"""Only the Ray ZeRO-3 (2 ranks) system of `himac-ray bench learner --size full` (same records, same code)."""
import json

from benchmarks.common import local_ray, log, machine
from benchmarks.learner_bench import MICRO, SIZES, bench_group, make_records
from himac_ray.models import resolve_model

n, steps = SIZES["full"]
records = make_records(str(resolve_model("embedded")), n)
out = {"bench": "learner (Ray ZeRO-3 2 ranks only)", "machine": machine(), "records": len(records),
       "tokens_per_step": sum(len(r.prompt_ids) + len(r.response_ids) for r in records), "micro_batch_size": MICRO, "steps": steps}
with local_ray():
    out["ray_zero3_2ranks"] = bench_group("embedded", records, steps, ranks=2, zero_stage=3, cpus_per_rank=1)
log(f"Ray ZeRO-3 2 ranks {out['ray_zero3_2ranks']['tokens_per_s']:.1f} tok/s")
print(json.dumps(out, default=str))
