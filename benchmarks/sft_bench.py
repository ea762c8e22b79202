"""SFT warm-start benchmark: training throughput and held-out executor accuracy before vs after.

Usage:
    python benchmarks/sft_bench.py [--model embedded] [--episodes 20] [--epochs 1] [--lr 3e-4]
        [--batch-size 4] [--train-layers 4] [--eval-seeds 20] [--out bench_out/sft]
    python benchmarks/sft_bench.py --eval-only MODEL_DIR   # accuracy of one folder

Trains in this process (`himac_ray.sft.trainer.train_sft` on Sokoban 6x6 expert demonstrations,
seeds from 100000) and evaluates each model (`action_accuracy`, greedy, vLLM) in a child
process on held-out seeds from 200000, so only one vLLM engine is alive at a time. Prints one
JSON line per phase to stdout; wall and process CPU seconds are both reported because the CPU
may be shared. The defaults (about 7.5 CPU-minutes of training on SmolLM2-135M) take the held-out
executor accuracy from 0 (no valid answer) to about 0.4, chance being 0.25.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ENV_ID = "himac/Sokoban-v0"
ENV_KWARGS = {"dim_room": [6, 6], "num_boxes": 1, "max_steps": 15}
MAX_SUBGOALS, HISTORY_LENGTH = 3, 2
TRAIN_SEED_START, EVAL_SEED_START = 100000, 200000


def evaluate(model_dir: str, eval_seeds: int) -> dict:
    from himac_ray.engines.vllm_engine import VLLMGenerator
    from himac_ray.sft.trainer import action_accuracy

    start = time.perf_counter()
    gen = VLLMGenerator(model_dir, seed=0, max_model_len=2048)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    seeds = range(EVAL_SEED_START, EVAL_SEED_START + eval_seeds)
    metrics = action_accuracy(
        gen, ENV_ID, seeds, env_kwargs=ENV_KWARGS, max_subgoals=MAX_SUBGOALS, history_length=HISTORY_LENGTH
    )
    return {"phase": "eval", "model": model_dir, **metrics, "load_s": load_s, "eval_s": time.perf_counter() - start}


def _eval_in_child(model_dir: str, eval_seeds: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--eval-only", model_dir, "--eval-seeds", str(eval_seeds)],
        check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--train-layers", type=int, default=4, help="top blocks trained; 0 or less = full fine-tune")
    ap.add_argument("--eval-seeds", type=int, default=20)
    ap.add_argument("--out", default="bench_out/sft")
    ap.add_argument("--skip-before", action="store_true", help="do not evaluate the starting model")
    ap.add_argument("--eval-only", metavar="MODEL_DIR", default=None)
    args = ap.parse_args()
    if args.eval_only:
        print(json.dumps(evaluate(args.eval_only, args.eval_seeds)), flush=True)
        return

    from himac_ray.models import resolve_model
    from himac_ray.sft.expert import expert_demonstrations
    from himac_ray.sft.trainer import train_sft

    model_dir = str(resolve_model(args.model))
    if not args.skip_before:
        print(json.dumps({**_eval_in_child(model_dir, args.eval_seeds), "when": "before"}), flush=True)
    seeds = range(TRAIN_SEED_START, TRAIN_SEED_START + args.episodes)
    examples = expert_demonstrations(
        ENV_ID, seeds, env_kwargs=ENV_KWARGS, max_subgoals=MAX_SUBGOALS, history_length=HISTORY_LENGTH
    )
    wall, cpu = time.perf_counter(), time.process_time()
    metrics = train_sft(
        model_path=model_dir, examples=examples, out_dir=args.out, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, train_layers=args.train_layers if args.train_layers > 0 else None,
    )
    print(json.dumps({
        "phase": "train", **vars(args), **metrics,
        "total_wall_s": time.perf_counter() - wall, "total_cpu_s": time.process_time() - cpu,
    }), flush=True)
    print(json.dumps({**_eval_in_child(str(Path(args.out).absolute()), args.eval_seeds), "when": "after"}), flush=True)


if __name__ == "__main__":
    main()
