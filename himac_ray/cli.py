"""`himac-ray` command line: model preparation, training, evaluation, benchmarks, play.

Every command accepts `--config FILE` and `--set a.b=c` (repeatable); the config is validated
before anything starts. Ray and the actors are imported lazily, only by the commands that need
them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from himac_ray.config import ConfigError, TrainConfig, config_to_dict, load_config
from himac_ray.models import ModelUnavailableError
from himac_ray.models.store import ModelDirError
from himac_ray.run_state import RunStateError


def _config_args() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", help="YAML config file (see configs/)")
    parent.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set algorithm.group_size=4 (repeatable)",
    )
    return parent


def _load(args) -> TrainConfig:
    return load_config(args.config, args.overrides)


def cmd_model(args) -> int:
    from himac_ray.models import build_tiny_llama, prepare_embedded_model

    path = build_tiny_llama(force=args.force) if args.tiny else prepare_embedded_model(force=args.force)
    print(path)
    return 0


DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "sokoban_embedded_cpu.yaml"
DEMO_SETTINGS = ("sft.train_layers=4", "env.eval_temperature=0", "run.iterations=2", "run.eval_every=2",
                 "run.checkpoint_every=2", "learner.warmup_steps=8")
"""what `himac-ray demo` sets on top of DEMO_CONFIG (the fast CPU recipe) to stay within ~15 minutes on a
2-core CPU without native bfloat16: SFT of the top 4 blocks, a greedy-only evaluation, one planner and one
executor iteration, and a learning-rate warm-up over each level's first 8 optimizer steps (the demo's 4
steps at full rate — Adam's first steps are sign steps of every weight, from ~50 records — took its warm
start from 12 to 3 of 32 rooms; benchmarks/RESULTS.md 29.1). `--set` overrides come after these; with
`--config` none of them applies."""


def demo_config(args) -> TrainConfig:
    """The demo's config: DEMO_CONFIG + DEMO_SETTINGS + the user's overrides, or `--config` + overrides."""
    if args.config:
        return _load(args)
    return load_config(DEMO_CONFIG, [*DEMO_SETTINGS, *args.overrides])


def cmd_demo(args) -> int:
    if args.generation:
        from himac_ray.models import resolve_model
        from himac_ray.tools.generation_demo import run_generation_demo

        run_generation_demo(resolve_model(_load(args).model.path))
        return 0
    from himac_ray.train import train

    if not args.config:
        print(f"demo: {DEMO_CONFIG.name} with {' '.join(DEMO_SETTINGS)}", flush=True)
    cfg = demo_config(args)
    train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    return 0


def cmd_train(args) -> int:
    from himac_ray.train import train

    train(_load(args), resume=args.resume, allow_config_change=args.allow_config_change)
    return 0


def cmd_sft(args) -> int:
    from pathlib import Path

    from himac_ray.sft.trainer import sft_from_config

    cfg = _load(args)
    out = Path(args.out) if args.out else Path(cfg.run.dir) / "sft_model"
    print(sft_from_config(cfg, out))
    return 0


def cmd_eval(args) -> int:
    from himac_ray.evaluate import evaluate_checkpoint

    cfg = _load(args) if args.config or args.overrides else None
    out = evaluate_checkpoint(args.checkpoint, episodes=args.episodes, cfg=cfg)
    print(f"checkpoint {out['checkpoint']}: greedy success {out['success_rate']:.3f} "
          f"mean return {out['mean_return']:+.2f} over {out['episodes']} held-out episodes")
    for task_type, t in out["by_task_type"].items():
        print(f"  {task_type:<32} success {t['success_rate']:.3f} ({t['episodes']} episodes)")
    sampled = out.get("sampled")
    if sampled:
        print(f"sampled at temperature {sampled['temperature']:g}: success {sampled['success_rate']:.3f} over "
              f"{sampled['episodes']} episodes ({sampled['samples']} per held-out task)")
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_config(args) -> int:
    cfg = _load(args)
    print(json.dumps(config_to_dict(cfg), indent=2))
    return 0


def cmd_play(args) -> int:
    from himac_ray.envs.play import play

    play(args.env, args.seed)
    return 0


ALLOW_CHANGE_HELP = ("with --resume: continue although the config differs from the run's config.json "
                     "(the changes are logged and recorded in config_changes.jsonl)")
BENCH_NAMES = ("env", "rollout", "sync", "learner", "learning", "ablations", "rllib", "profile", "faults", "pipeline",
               "lora", "quick")
BENCH_ENVS = ("sokoban", "alfworld")
"""`bench learning --env` choices (benchmarks.learning_bench.ENVS)"""


def cmd_bench(args) -> int:
    from benchmarks import run_bench

    if args.env is not None and args.env not in BENCH_ENVS:
        raise ConfigError(f"--env {args.env}: unknown env; the learning bench runs on {', '.join(BENCH_ENVS)}")
    if args.env not in (None, "sokoban") and args.name != "learning":
        raise ConfigError(f"--env {args.env} applies to the learning bench only ({args.name} runs on Sokoban)")
    figures = run_bench(args.name, args, quick=args.size != "full")
    if args.json:
        print(json.dumps(figures, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="himac-ray",
        description="HiMAC (hierarchical macro-micro RL) for long-horizon LLM agents on Ray + vLLM + DeepSpeed.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _config_args()

    p = sub.add_parser("model", parents=[common], help="prepare local models (no downloads)")
    p.add_argument("action", choices=["prepare"], help="prepare: convert the embedded SmolLM2-135M GGUF once")
    p.add_argument("--tiny", action="store_true", help="build the tiny random Llama instead")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("demo", parents=[common],
                       help="HiMAC on Sokoban with the embedded model: SFT warm start, then RL (both phases)")
    p.add_argument("--generation", action="store_true",
                   help="instead: the same agent prompts through vLLM and HF side by side, with tokens/s")
    p.add_argument("--resume", action="store_true", help="continue the demo run from its latest checkpoint")
    p.add_argument("--allow-config-change", action="store_true", help=ALLOW_CHANGE_HELP)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", parents=[common], help="train with HiMAC (or a flat baseline) on Ray")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in run.dir")
    p.add_argument("--allow-config-change", action="store_true", help=ALLOW_CHANGE_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", parents=[common], help="success on held-out seeds, by env / task type")
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint), checkpoint dir or HF folder")
    p.add_argument("--episodes", type=int, default=32, help="held-out episodes")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sft", parents=[common], help="warm-start the policy on the envs' expert demonstrations")
    p.add_argument("--out", help="output model folder (default: <run.dir>/sft_model)")
    p.set_defaults(func=cmd_sft)

    from himac_ray.tools import sizing

    p = sub.add_parser("plan", parents=[common], help="estimate GPU layout, tokens and iteration time for a config")
    sizing.add_arguments(p, config_args=False)
    p.set_defaults(func=sizing.run)

    from himac_ray.tools import sweep

    p = sub.add_parser("sweep", parents=[common], help="Ray Tune grid over config overrides, one training run per point")
    sweep.add_arguments(p, config_args=False)
    p.set_defaults(func=sweep.run)

    from himac_ray.tools import viewer

    p = sub.add_parser("view", help="HTML report of a run's trajectories (blueprints, steps, boards, curve)")
    viewer.add_arguments(p)
    p.set_defaults(func=viewer.run)

    p = sub.add_parser("config", parents=[common], help="print the validated config as JSON")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("play", parents=[common], help="play an environment in the terminal")
    p.add_argument("env", help="env id, e.g. himac/Sokoban-v0")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("bench", parents=[common], help="run a benchmark and print its figures")
    p.add_argument("name", choices=BENCH_NAMES, help="quick = env, rollout, sync and learner (make bench)")
    p.add_argument("--json", action="store_true", help="print one JSON object of the figures last")
    p.add_argument("--size", choices=["smoke", "quick", "full"], default="quick",
                   help="smoke: seconds (tests); quick: minutes (make bench); full: the RESULTS.md runs")
    p.add_argument("--model", choices=["tiny", "embedded"], help="model for rollout/sync/learner benches")
    p.add_argument("--seconds", type=float, help="time per measurement (env bench)")
    p.add_argument("--compare", action="store_true",
                   help="profile bench: also profile the recipe before the fast CPU recipe, in the same run")
    p.add_argument("--env", metavar="ENV", help=f"learning bench: environment, one of {', '.join(BENCH_ENVS)} "
                   "(default: sokoban)")
    p.add_argument("--algos", help="learning bench: comma-separated algorithms (default: the size's)")
    p.add_argument("--seeds", help="learning / ablations bench: comma-separated RL seeds (default: the size's)")
    p.add_argument("--budget", type=int, help="learning / ablations bench: env steps per run (default: the size's)")
    p.add_argument("--minutes", type=float,
                   help="learning / ablations bench: wall-clock cap per run (default: the size's)")
    p.add_argument("--variants", help="ablations bench: comma-separated variants (default: all; see "
                   "benchmarks/ablation_bench.py)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"himac-ray: config error: {err}", file=sys.stderr)
        return 2
    except (ModelUnavailableError, ModelDirError, RunStateError) as err:
        print(f"himac-ray: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("himac-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
