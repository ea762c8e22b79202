"""Per-iteration metrics: key names, the `metrics.jsonl` log and the learning-curve PNG.

`MetricsLog` also hands every row it writes to the experiment trackers of `run.loggers`
(`himac_ray.trackers`: TensorBoard, W&B, MLflow), opened at the first write.
"""

from __future__ import annotations

import atexit
import json
from collections.abc import Mapping
from pathlib import Path

from himac_ray import trackers
from himac_ray.atomic import publish_file
from himac_ray.names import ENV_POOL_RESTARTS, EPISODES_FAILED, MODES, SAMPLER_RESTARTS

ITERATION = "iteration"
TRAINABLE = "trainable"
MODE = "mode"
"""the rollout mode of the iteration: macro, micro or flat"""
RECORDS = "records"
"""records the iteration's rollout produced"""
WEIGHTS_VERSION = "weights_version"
"""the learner's weights version after the iteration's sync"""
SUCCESS_RATE = "charts/success_rate"
MEAN_RETURN = "charts/mean_return"
ENV_STEPS = "charts/env_steps_total"
INVALID_RATE = "charts/invalid_action_rate"
RESPONSE_LEN = "charts/mean_response_len"
ROLLOUT_TOKENS_PER_S = "perf/rollout_tokens_per_s"
ENV_STEPS_PER_S = "perf/env_steps_per_s"
SYNC_SECONDS = "perf/weight_sync_seconds"
TIME_PREFIX = "time/"
"""phase wall-clock seconds: time/rollout, time/advantage, time/learn, time/sync, time/record"""
EVAL_SUCCESS = "eval/success_rate"
EVAL_RETURN = "eval/mean_return"
EVAL_SAMPLED_SUCCESS = "eval/sampled_success_rate"
SYNC_METHOD = "sync_method"
PLAN_FALLBACK_RATE = "plan_fallback_rate"
LEARNER_RECORDS = "learner/records"
LEARNER_SKIPPED = "learner/skipped_zero_advantage"
"""records left out of the learner step because their advantage is zero"""
# the learner step's metrics (prefixed `plan/` / `act/` when both levels train in one iteration)
PG_LOSS = "losses/pg_loss"
KL = "losses/kl"
ENTROPY = "losses/entropy"
CLIPFRAC = "losses/clipfrac"
APPROX_KL = "losses/approx_kl"
GRAD_NORM = "grad_norm"
LEARNER_TOKENS = "perf/learner_tokens"
"""real (prompt + response) tokens forwarded by all ranks in the step"""
LEARNER_SECONDS = "perf/learner_seconds"
LEARNER_TOKENS_PER_S = "perf/learner_tokens_per_s"
TOKENS_PER_ENV_STEP = "perf/tokens_per_env_step"
"""generated tokens per env step (the macro pre-pass of the executor phase included)"""
SUB_DONE_RATE = "charts/sub_done_rate"
"""fraction of act records whose response declared `<sub_done>`"""
BLUEPRINT_LEN = "charts/mean_blueprint_len"
"""mean subgoals per executed blueprint"""
GROUPS_INFORMATIVE_FRACTION = "groups/informative_fraction"
"""fraction of the iteration's groups (extra ones included) whose members scored differently"""
GROUPS_INFORMATIVE = "groups/informative"
GROUPS_EXTRA = "groups/extra"
"""groups rolled out on fresh tasks by dynamic sampling (algorithm.min_informative_groups)"""
# asynchronous pipeline (himac_ray/pipeline.py) and off-policy correction (algorithm.tis_cap)
SAMPLER_BUSY = "perf/sampler_busy_fraction"
"""fraction of the iteration's wall clock (end of the previous iteration to the end of this one)
during which a rollout was running (in async mode, mostly the next iteration's)"""
LEARNER_BUSY = "perf/learner_busy_fraction"
"""fraction of the iteration's wall clock spent in the learner step"""
ITERATION_SECONDS = "time/iteration"
"""wall clock from the end of the previous iteration to the end of this one"""
ROLLOUT_WAIT = "time/rollout_wait"
"""seconds the iteration waited for its rollout (async: for the rollout running ahead; sync: all of it)"""
OVERLAP_SECONDS = "async/overlap_seconds"
"""seconds of this iteration's rollout that ran while the trainer did other work (learner, sync)"""
DROPPED_STALE = "async/dropped_stale"
"""records not trained because they were staler than run.max_staleness (async mode)"""
STALENESS_PREFIX = "async/staleness_"
"""async/staleness_<k>: trained records k weights versions behind the learner (the staleness histogram)"""
STALENESS_MAX = "async/staleness_max"
IS_WEIGHT_MEAN = "off_policy/is_weight_mean"
"""mean per-token importance weight pi_old / pi_behaviour before truncation (algorithm.tis_cap > 0)"""
IS_WEIGHT_MAX = "off_policy/is_weight_max"
IS_TRUNCATED = "off_policy/is_truncated_fraction"
"""fraction of trained tokens whose importance weight exceeded algorithm.tis_cap"""
GROUP_SIZE_MEAN = {level: f"groups/{level}_size_mean" for level in MODES}
"""rollout level -> mean members per group of the iteration (extra groups included; with
`algorithm.group_size: auto`, the grown sizes)"""
GROUP_START = {level: f"groups/{level}_start" for level in MODES}
"""`algorithm.group_size: auto`: rollout level -> its groups' start size in the next iteration"""
FAULTS = {f"faults/{name}": name for name in (EPISODES_FAILED, ENV_POOL_RESTARTS, SAMPLER_RESTARTS)}
"""metric key -> rollout metric: episodes left out because their env raised, env pools and
sampler engines replaced during the iteration's rollouts (himac_ray.rollout)"""


class MetricsLog:
    """Appends one JSON row per iteration to `metrics.jsonl`; resume-safe.

    Rows written (`append`, `rewrite_last`'s new keys, `append_eval`) also go to the trackers of
    `run.loggers`. `run` is the run's `RunConfig` (or its dict); None = the `run` section of the
    run directory's config.json, the config the run was started with (none: metrics.jsonl only).
    Trackers open at the first write, so a log opened only to read rows never starts one.
    """

    def __init__(self, run_dir: str | Path, *, run: object | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.eval_path = Path(run_dir) / "eval.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._run = run
        self._trackers: list | None = None
        self._purge_step: int | None = None

    def _settings(self) -> dict:
        if isinstance(self._run, Mapping):
            return dict(self._run)
        if self._run is not None:
            return dict(vars(self._run))
        config = self.path.parent / "config.json"
        if not config.exists():
            return {}
        return dict(json.loads(config.read_text()).get("run") or {})

    def _track(self, values: dict[str, float], step: int) -> None:
        if self._trackers is None:
            self._trackers = trackers.open_trackers(self.path.parent, self._settings(), purge_step=self._purge_step)
            if self._trackers:
                atexit.register(self.close)
        if values:
            for tracker in self._trackers:
                tracker.log(values, step)

    def close(self) -> None:
        """Close the trackers (flushed after every row already; W&B and MLflow mark the run finished)."""
        opened, self._trackers = self._trackers or [], None
        for tracker in opened:
            tracker.close()

    @staticmethod
    def _read(path: Path) -> list[dict]:
        """The rows of a JSON-lines file; a partial last line (a crash mid-append) is dropped."""
        if not path.exists():
            return []
        lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        rows = []
        for n, line in enumerate(lines):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if n < len(lines) - 1:
                    raise ValueError(f"{path} line {n + 1} is not JSON (only a partial last line is tolerated)") from None
        return rows

    @staticmethod
    def _write(path: Path, rows: list[dict]) -> None:
        # the fixed temporary name is one of run_state.RUN_FILES (a run dir may hold it after a crash)
        text = "".join(json.dumps(r) + "\n" for r in rows)
        publish_file(path, lambda tmp: tmp.write_text(text), tmp=path.with_suffix(".jsonl.tmp"))

    def rows(self) -> list[dict]:
        return self._read(self.path)

    def eval_rows(self) -> list[dict]:
        """Held-out evaluations; `iteration` = iterations finished before the evaluation."""
        return self._read(self.eval_path)

    def truncate_from(self, iteration: int) -> None:
        """Drop rows of iterations >= `iteration` (they are redone after a resume)."""
        self._purge_step = iteration  # TensorBoard drops the redone iterations' events too
        self._write(self.path, [r for r in self.rows() if r.get(ITERATION, -1) < iteration])
        self._write(self.eval_path, [r for r in self.eval_rows() if r.get(ITERATION, -1) <= iteration])

    def append(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._track(trackers.numeric_items(row), int(row.get(ITERATION, 0)))

    def rewrite_last(self, row: dict) -> None:
        """Replace the last row (adding eval metrics to the iteration just logged)."""
        rows = self.rows()
        self._write(self.path, rows[:-1] + [row])
        before = trackers.numeric_items(rows[-1]) if rows else {}
        added = {k: v for k, v in trackers.numeric_items(row).items() if before.get(k) != v}
        self._track(added, int(row.get(ITERATION, 0)))

    def append_eval(self, row: dict) -> None:
        with self.eval_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        values = trackers.numeric_items({k: v for k, v in row.items() if k != ITERATION}, trackers.HELDOUT_PREFIX)
        self._track(values, int(row.get(ITERATION, 0)))


def plot_curve(rows: list[dict], path: str | Path, *, title: str = "", evals: list[dict] = ()) -> Path | None:
    """Success rate and mean return against env steps, marking the trained level per iteration."""
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r.get(ENV_STEPS, r[ITERATION]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    colors = {"planner": "tab:purple", "executor": "tab:green"}
    for ax, key, label in ((ax1, SUCCESS_RATE, "train success rate"), (ax2, MEAN_RETURN, "mean return")):
        ax.plot(x, [r.get(key, float("nan")) for r in rows], color="0.4", lw=1)
        for level, color in colors.items():
            pts = [(xi, r.get(key)) for xi, r in zip(x, rows) if r.get(TRAINABLE) == level]
            if pts:
                ax.scatter(*zip(*pts), color=color, label=f"{level} phase", zorder=3, s=18)
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if evals:
        ax1.plot([e.get(ENV_STEPS, 0) for e in evals], [e["success_rate"] for e in evals], "k--o", ms=4,
                 label="held-out success")
    ax1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    publish_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return Path(path)
