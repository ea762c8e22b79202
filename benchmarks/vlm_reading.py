"""Does SFT on the expert's demonstrations teach the local VLM to read the Sokoban board?

`python -m benchmarks.vlm_reading experiment --cpu-budget 600` builds the VLM, measures held-out
reading accuracy (box coordinates from the image, the expert's action choice, each against a
control with another room's image), trains with `himac_ray.sft.vision.train_vlm_sft` for a CPU
budget and measures again (JSON on stdout; results in benchmarks/RESULTS.md).
`python -m benchmarks.vlm_reading build` builds the VLM and prints its folder.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from himac_ray.engines.vision_chat import chat_images, processor_inputs, render_vlm_chat
from himac_ray.models.vision import DEFAULT_SCALE_FACTOR, TEXT_MODELS, build_local_vlm, load_vlm
from himac_ray.sft.vision import action_choice_accuracy, replace_images, train_vlm_sft


def coordinate_reading_accuracy(
    model, processor, examples: Sequence[dict], *, image_fn: Callable[[int, Any], Any] | None = None
) -> dict:
    """Teacher-forced accuracy at reading the first `(row R, col C)` of each expert blueprint.

    Planner prompts of visual Sokoban hold no positions in their text, so the first box
    coordinates of the expert's plan can only come from the image: for each "plan" example the
    plan is fed up to each of the two numbers and the model's most likely digit (0-9) there is
    compared to the expert's. `image_fn` as in `action_choice_accuracy` (i counts plan
    examples). Returns `{"accuracy", "n"}` (n = numbers scored).
    """
    import re

    import torch

    tok = processor.tokenizer
    digits = [tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    correct = total = 0
    plans = [ex for ex in examples if ex.get("level") == "plan"]
    for i, ex in enumerate(plans):
        chat = ex["messages"][:-1]
        if image_fn is not None:
            chat = replace_images(chat, lambda im, i=i: image_fn(i, im))
        target = ex["messages"][-1]["content"]
        m = re.search(r"\(row (\d), col (\d)\)", target)
        if not m:
            continue
        prompt_text = render_vlm_chat(processor, chat)
        for group in (1, 2):
            inputs = processor_inputs(processor, prompt_text + target[: m.start(group)], chat_images(chat))
            with torch.no_grad():
                logits = model.lm_head(model.model(**inputs).last_hidden_state[0, -1]).float()
            pred = int(torch.argmax(logits[digits]))
            correct += pred == int(m.group(group))
            total += 1
    return {"accuracy": correct / max(1, total), "n": total}


def _shuffled_images(examples: Sequence[dict], seed: int = 0) -> Callable[[int, Any], Any]:
    """An `image_fn` giving example i the image of another (fixed random) example: the
    no-vision control (same text, someone else's board)."""
    images = [chat_images(ex["messages"][:-1])[0] for ex in examples]
    order = list(range(len(images)))
    random.Random(seed).shuffle(order)
    return lambda i, image: images[order[i]]


def reading_metrics(model, processor, heldout: Sequence[dict]) -> dict:
    """Held-out teacher-forced metrics, each with a shuffled-image control.

    `act` / `act_shuffled`: `action_choice_accuracy` on the "act" examples with their own / a
    different room's image; `coord` / `coord_shuffled`: `coordinate_reading_accuracy` on the
    "plan" examples. The gap between a metric and its control is what the image contributes.
    """
    acts = [ex for ex in heldout if ex.get("level") == "act"]
    plans = [ex for ex in heldout if ex.get("level") == "plan"]
    model.eval()
    out = {}
    if acts:
        out["act"] = action_choice_accuracy(model, processor, acts)["accuracy"]
        out["act_shuffled"] = action_choice_accuracy(model, processor, acts, image_fn=_shuffled_images(acts))["accuracy"]
        out["act_n"] = len(acts)
    if plans:
        out["coord"] = coordinate_reading_accuracy(model, processor, plans)["accuracy"]
        out["coord_shuffled"] = coordinate_reading_accuracy(model, processor, plans, image_fn=_shuffled_images(plans))["accuracy"]
        out["coord_n"] = 2 * len(plans)
    return out


def sft_reading_experiment(
    *,
    text_model: str = "tiny",
    text_init_range: float | None = 0.02,
    scale_factor: int = DEFAULT_SCALE_FACTOR,
    env_id: str = "himac/SokobanVisual-v0",
    train_seeds: Sequence[int] = range(1000, 1600),
    heldout_seeds: Sequence[int] = range(0, 60),
    levels: Sequence[str] = ("plan", "act"),
    cpu_budget: float = 600.0,
    lr: float = 1e-3,
    vision_lr: float | None = None,
    batch_size: int = 8,
    freeze_embeddings: bool = False,
    seed: int = 0,
    out_path: str | Path | None = None,
    eval_every: int = 0,
    log_fn: Callable[[str], None] | None = print,
) -> dict:
    """Does SFT on the expert's demonstrations teach the VLM to read the board?

    Builds the VLM (`build_local_vlm(text_model=..., text_init_range=...)`), measures
    `reading_metrics` on the demonstrations of `heldout_seeds`, trains with `train_vlm_sft`
    (one torch thread, bf16 autocast) for `cpu_budget` CPU seconds on
    the `levels` examples of `train_seeds`, and measures again. Returns
    `{"before", "after", "curve", "train": {...}, "config": {...}}`.
    """
    import torch

    from himac_ray.sft.expert import expert_demonstrations

    torch.set_num_threads(1)
    path = build_local_vlm(text_model=text_model, seed=seed, text_init_range=text_init_range, scale_factor=scale_factor)
    train = [ex for ex in expert_demonstrations(env_id, train_seeds) if ex["level"] in levels]
    heldout = expert_demonstrations(env_id, heldout_seeds)
    model, processor = load_vlm(path)
    before = reading_metrics(model, processor, heldout)
    if log_fn:
        log_fn(f"[vlm-sft] before: {before}")
    del model
    curve = []

    def evaluate(step, model):
        curve.append({"step": step, **reading_metrics(model, processor, heldout)})
        if log_fn:
            log_fn(f"[vlm-sft] step {step}: {curve[-1]}")

    res = train_vlm_sft(
        path, train, out_path=out_path, epochs=1e6, lr=lr, vision_lr=vision_lr, batch_size=batch_size,
        freeze_embeddings=freeze_embeddings, bf16_autocast=True, seed=seed, max_cpu_seconds=cpu_budget, log_fn=log_fn,
        log_every=100, callback=evaluate if eval_every else None, callback_every=eval_every,
    )
    after = reading_metrics(res["model"], res["processor"], heldout)
    if log_fn:
        log_fn(f"[vlm-sft] after: {after}")
    return {
        "before": before,
        "after": after,
        "curve": curve,
        "train": {k: res[k] for k in ("path", "steps", "examples_seen", "seconds", "cpu_seconds", "first_loss", "last_loss")},
        "config": {
            "model": str(path), "text_model": text_model, "text_init_range": text_init_range,
            "scale_factor": scale_factor, "levels": list(levels),
            "train_examples": len(train), "train_seeds": [min(train_seeds), max(train_seeds)],
            "heldout_seeds": [min(heldout_seeds), max(heldout_seeds)], "cpu_budget": cpu_budget, "lr": lr,
            "vision_lr": vision_lr, "batch_size": batch_size, "freeze_embeddings": freeze_embeddings,
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m benchmarks.vlm_reading build|experiment ...` (see --help)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.vlm_reading", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the local VLM and print its folder")
    b.add_argument("--text-model", choices=TEXT_MODELS, default="embedded")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true")
    e = sub.add_parser("experiment", help="SFT on expert demonstrations: held-out reading accuracy before/after (JSON)")
    e.add_argument("--text-model", choices=TEXT_MODELS, default="tiny")
    e.add_argument("--text-init-range", type=float, default=0.02)
    e.add_argument("--seed", type=int, default=0, help="seeds the model build and the SFT order")
    e.add_argument("--scale-factor", type=int, default=DEFAULT_SCALE_FACTOR,
                   help="pixel-shuffle factor: 2 = one image token per 2x2 tiles, 1 = one per tile")
    e.add_argument("--train-episodes", type=int, default=600)
    e.add_argument("--heldout-episodes", type=int, default=60)
    e.add_argument("--levels", default="plan,act")
    e.add_argument("--cpu-budget", type=float, default=600.0)
    e.add_argument("--lr", type=float, default=1e-3)
    e.add_argument("--vision-lr", type=float, default=None)
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--eval-every", type=int, default=0)
    e.add_argument("--out", default=None, help="save the tuned model here")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        print(build_local_vlm(text_model=args.text_model, seed=args.seed, force=args.force))
        return 0
    result = sft_reading_experiment(
        text_model=args.text_model,
        text_init_range=args.text_init_range if args.text_model == "tiny" else None, scale_factor=args.scale_factor,
        train_seeds=range(1000, 1000 + args.train_episodes), heldout_seeds=range(0, args.heldout_episodes),
        levels=tuple(args.levels.split(",")), cpu_budget=args.cpu_budget, lr=args.lr, vision_lr=args.vision_lr,
        batch_size=args.batch_size, eval_every=args.eval_every, out_path=args.out, seed=args.seed,
    )
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
