"""Plots for benchmarks/RESULTS.md from the JSON files in this folder.

Usage (from the repo root): `.venv/bin/python benchmarks/results/plots.py`. Writes
rollout_full.png and learning_full*.png here (profile / rllib PNGs are written by their benches
into benchmarks/ and copied here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))


def rollout() -> None:
    systems = (("a_himac_ray", "(a) himac-ray pool"), ("b_naive_hf", "(b) naive HF, batch 1"),
               ("c_raw_vllm", "(c) raw vLLM, same rounds"), ("c_raw_vllm_one_batch", "(c') raw vLLM, one batch"))
    models = {}
    for m in ("tiny", "embedded"):
        p = HERE / f"rollout_{m}_full.json"
        if p.exists():
            models[m] = json.loads(p.read_text())["models"][m]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, (m, r) in zip(axes[0], models.items()):
        vals = [r[k]["tokens_per_s"] for k, _ in systems]
        bars = ax.bar(range(len(systems)), vals, color=["C0", "C3", "C2", "C2"])
        bars[3].set_alpha(0.5)
        ax.set_yscale("log")
        ax.set_xticks(range(len(systems)), [lab for _, lab in systems], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("generated tokens / s (log)")
        ax.set_title(f"{m}: a/b = {r['ratio_vs_naive_hf']:.1f}, a/c = {r['ratio_vs_raw_vllm']:.2f} "
                     f"(load {r['load_avg_1m']:.1f})", fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "rollout_full.png", dpi=100)
    plt.close(fig)


def learning() -> None:
    """Every run's raw curve in session 3's learning_full.json (no grid, no truncation at the budget). Its runs
    predate the learning bench's current record (no start_success, family or budget): the bench's own
    summary and plot no longer read them, so learning_full.png and learning_group_size_full.png stay as committed."""
    p = HERE / "learning_full.json"
    if not p.exists():
        return
    out = json.loads(p.read_text())
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"himac": "C0", "grpo": "C1", "gigpo": "C2"}
    for key, r in out["runs"].items():
        if r["group_size"] != 4:
            continue
        ax.plot([q["env_steps"] for q in r["curve"]], [q["success"] for q in r["curve"]], marker="o", ms=3,
                color=colors.get(r["algo"], "k"), alpha=0.8, label=key)
    ax.set_xlabel("training env steps")
    ax.set_ylabel("held-out success (32 seeds)")
    ax.set_ylim(0, 0.6)
    ax.set_title("every completed G=4 run (tiny Llama + SFT, Sokoban 6x6/1 box)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "learning_runs_full.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    rollout()
    learning()
