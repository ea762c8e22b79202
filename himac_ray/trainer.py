"""The training loop: rollout -> advantages -> learn -> sync -> record, with co-evolution phases.

Pure Python: the loop talks to duck-typed services, so the same code runs against Ray actors
(`actors/coordinator.py` builds them) or in-process objects:

- `rollout(*, seeds, mode, group_size, planner_params, executor_params) -> RolloutResult`
- `learner`: `train_step(records, *, trainable) -> dict`, `save_checkpoint(dir)`,
  `load_checkpoint(dir)`
- `sync(*, trainable, version) -> dict` pushes the trained policy's weights to its samplers and
  returns at least `{"seconds": float, "path": str}`.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Callable

import numpy as np

from himac_ray import metrics as M
from himac_ray import rollout_result as R
from himac_ray.adaptive_groups import AdaptiveRollout
from himac_ray.advantage import compute_advantages, group_informative
from himac_ray.config import TrainConfig
from himac_ray.data import write_parquet
from himac_ray.evaluate import SAMPLED, run_eval
from himac_ray.names import JOINT, LEVEL_OF, ROLES
from himac_ray.pipeline import ASYNC, RolloutAhead, busy_seconds, lookahead, staleness_histogram, staleness_split
from himac_ray.rollout import env_step_cap
from himac_ray.rollout_result import RolloutResult, merge_results
from himac_ray.run_state import (
    CoordinatorState,
    RunStateError,
    begin_checkpoint,
    checkpoint_problem,
    clean_partial_checkpoints,
    commit_checkpoint,
    complete_checkpoints,
    latest_checkpoint,
)
from himac_ray.schedule import Phase, both_phases, extra_seeds, iteration_seeds, phase_of, sampling_params


class Trainer:
    """Runs iterations and checkpoints; see the module docstring for the services."""

    def __init__(self, cfg: TrainConfig, *, rollout: Callable, learner, sync: Callable, log: Callable = print):
        self.cfg = cfg
        self.rollout = rollout
        self.learner = learner
        self.sync = sync
        self.log = log
        self.run_dir = Path(cfg.run.dir)
        self.metrics = M.MetricsLog(self.run_dir, run=cfg.run)
        self.state = CoordinatorState()
        self.rng = np.random.default_rng(cfg.run.seed)
        self.status = {"iteration": 0, "phase": "starting"}
        self._iteration_start: tuple[CoordinatorState, dict] | None = None
        """(state, rng state) at the start of the running iteration; None between iterations"""
        self._learner_stepped = False
        """the running iteration reached the learner: its weights no longer match `state`"""
        self.ahead = RolloutAhead()
        """async mode: the next iteration's rollout, running while this one learns (himac_ray/pipeline.py)"""
        self._lookahead = lookahead(pipeline=cfg.run.pipeline, max_staleness=cfg.run.max_staleness)
        self._until = cfg.run.iterations
        """iterations of the current `run` call: no rollout ahead for an iteration past them"""
        self._spans: dict[str, list[tuple[float, float]]] = {"rollout": [], "learn": []}
        """(start, end) perf_counter spans of the rollouts run inline and of the learner steps"""
        self._window_start: float | None = None
        """perf_counter at the end of the previous iteration (the busy fractions' window)"""
        self._step_cap: int | None = None
        """the env's max_steps (the adaptive group size's worst case per member), looked up once"""

    # ------------------------------------------------------------ lifecycle

    def restore(self) -> bool:
        """Load the newest loadable complete checkpoint; returns whether there was any checkpoint.

        A corrupt or truncated checkpoint is skipped with a warning naming it, and the next older
        one is tried; when checkpoints exist but none loads, RunStateError (never a silent fresh start).
        """
        self.ahead.discard()  # made from the state being replaced
        clean_partial_checkpoints(self.run_dir)
        found = complete_checkpoints(self.run_dir)
        for ckpt in reversed(found):
            problem = checkpoint_problem(ckpt)
            if problem is None:
                try:
                    self.learner.load_checkpoint(str(ckpt / "learner"))
                    self.state = CoordinatorState.load(ckpt / "coordinator.json")
                except Exception as err:  # noqa: BLE001  (any load failure: try the next older one)
                    problem = f"{type(err).__name__}: {err}"
            if problem is None:
                break
            self.log(f"WARNING: skipping checkpoint {ckpt}, it cannot be loaded ({problem}); trying an older one")
        else:
            if found:
                raise RunStateError(f"none of the {len(found)} checkpoint(s) in {self.run_dir / 'checkpoints'} "
                                    "can be loaded (see the warnings above)")
            return False
        if self.state.rng:
            self.rng.bit_generator.state = self.state.rng
        self.metrics.truncate_from(self.state.iteration)
        # the samplers start from the base weights: give them the checkpoint's
        self.sync(trainable=None, version=self.state.weights_version)
        self.log(f"resumed from {ckpt} at iteration {self.state.iteration}")
        return True

    def checkpoint(self) -> Path:
        self.status["phase"] = "checkpoint"
        tmp = begin_checkpoint(self.run_dir)
        self.learner.save_checkpoint(str(tmp / "learner"))
        self.state.rng = self.rng.bit_generator.state
        self.state.save(tmp / "coordinator.json")
        return commit_checkpoint(tmp, self.run_dir, self.state.iteration, keep=self.cfg.run.keep_checkpoints)

    def run(self, iterations: int | None = None, on_iteration: Callable[[dict], None] | None = None) -> list[dict]:
        """Run until `iterations` (default `run.iterations`) are done; checkpoint at exit.

        0 iterations is the prompting-only baseline: one held-out evaluation of the starting
        policy (the base model or the SFT warm start), no RL, no checkpoint."""
        total = self.cfg.run.iterations if iterations is None else iterations
        self._until = total
        if total == 0 and self.state.iteration == 0:
            self.evaluate()
            return []
        every = self.cfg.run.eval_every
        rows = []
        if every and self.state.iteration == 0 and total > 0:
            self.evaluate()  # the starting point (e.g. the SFT warm start)
        try:
            while self.state.iteration < total:
                row = self.run_iteration()
                done = self.state.iteration
                if (every and done % every == 0) or done == total:
                    self.ahead.wait()  # evaluation shares the samplers and env pools: not beside a rollout
                    row.update(self.evaluate())
                    self.metrics.rewrite_last(row)
                rows.append(row)
                if on_iteration:
                    on_iteration(row)
                if done % self.cfg.run.checkpoint_every == 0 and done < total:
                    self.checkpoint()
        finally:
            self.ahead.discard()  # not in any checkpoint: a resume rolls its iteration out again
            if rows:
                self._final_checkpoint()
                M.plot_curve(self.metrics.rows(), self.run_dir / "curve.png", title=self._title(),
                             evals=self.metrics.eval_rows())
        return rows

    def _final_checkpoint(self) -> None:
        """Checkpoint at exit, only ever a consistent state: after a failure inside an iteration
        the state at its start (while the learner has not stepped), else nothing."""
        if self._iteration_start is not None:
            if self._learner_stepped:
                self.log(f"not checkpointing at exit: iteration {self.state.iteration} failed after its learner "
                         f"step, so the weights match no iteration boundary; latest complete checkpoint: "
                         f"{latest_checkpoint(self.run_dir)}")
                return
            self.state, rng = copy.deepcopy(self._iteration_start)
            self.rng.bit_generator.state = rng
        try:
            self.checkpoint()
        except Exception as err:  # e.g. the learner died: keep the last complete checkpoint
            ckpt = latest_checkpoint(self.run_dir)
            self.log(f"could not checkpoint at exit ({type(err).__name__}: {err}); "
                     f"latest complete checkpoint: {ckpt}")

    def evaluate(self) -> dict:
        """Held-out evaluation (greedy, and sampled with `env.eval_temperature` > 0); logged to
        eval.jsonl and returned as eval/* metrics."""
        self.status["phase"] = "eval"
        out = run_eval(self.cfg, self.rollout)
        self.metrics.append_eval({M.ITERATION: self.state.iteration, M.ENV_STEPS: self.state.env_steps, **out})
        row = {M.EVAL_SUCCESS: out["success_rate"], M.EVAL_RETURN: out["mean_return"]}
        sampled = out.get(SAMPLED)
        note = ""
        if sampled:
            row[M.EVAL_SAMPLED_SUCCESS] = sampled["success_rate"]
            note = (f"; sampled at temperature {sampled['temperature']:g}: {sampled['success_rate']:.3f} "
                    f"({sampled['samples']} per room)")
        self.log(f"held-out success after {self.state.iteration} iteration(s): {out['success_rate']:.3f} "
                 f"greedy ({out['episodes']} episodes){note}")
        return row

    # ------------------------------------------------------------ one iteration

    def run_iteration(self) -> dict:
        i = self.state.iteration
        phase = phase_of(self.cfg, i)
        self.status.update(iteration=i, trainable=phase.trainable or "both")
        times = {}
        self._iteration_start = copy.deepcopy((self.state, self.rng.bit_generator.state))
        self._learner_stepped = False

        if self._window_start is None:
            self._window_start = time.perf_counter()
        self.status["phase"] = "rollout"
        result, groups, times["rollout"], times["rollout_wait"] = self._rollout(i, phase)

        self.status["phase"] = "advantage"
        start = time.perf_counter()
        if both_phases(self.cfg) and result.pre is not None:
            # z*'s macro group is the macro phase: its plan records train the planner (the act
            # records under each blueprint only score it); the micro records train the executor
            macro, micro = result.pre.records, result.records
            for part, level in ((macro, "planner"), (micro, "executor")):
                if phase.trainable in (None, level):
                    self._with_advantages(part, level)
                else:  # the other level's records are written, never trained
                    for r in part:
                        r.advantage = 0.0
            records = macro + micro  # all written to Parquet
            train = [r for r in macro if r.level == "plan"] + [r for r in micro if r.level == "act"]
        else:
            records = train = self._with_advantages(result.records, phase.trainable)
        stale = {}
        if self.cfg.run.pipeline == ASYNC:
            train, stale = self._fresh(train)
        times["advantage"] = time.perf_counter() - start

        self.status["phase"] = "learn"
        start = time.perf_counter()
        self._learner_stepped = True
        learn = self._learn(train, phase.trainable)
        times["learn"] = time.perf_counter() - start
        self._spans["learn"].append((start, start + times["learn"]))

        self.status["phase"] = "sync"
        start = time.perf_counter()
        self.state.weights_version += 1
        sync = self.sync(trainable=phase.trainable, version=self.state.weights_version)
        times["sync"] = time.perf_counter() - start

        self.status["phase"] = "record"
        start = time.perf_counter()
        self.state.env_steps += int(result.metrics.get(R.ENV_STEPS, 0))
        if result.pre is not None:  # micro mode's macro pre-pass that chose z* also stepped envs
            self.state.env_steps += int(result.pre.metrics.get(R.ENV_STEPS, 0))
        row = self._row(i, phase, result, learn, sync, times)
        row.update(groups)
        row.update(stale)
        if self.cfg.run.save_trajectories:
            write_parquet(records, self.run_dir / "trajectories" / f"iter_{i:05d}.parquet")
        times["record"] = time.perf_counter() - start
        row.update({f"{M.TIME_PREFIX}{k}": v for k, v in times.items()})
        row.update(self._busy(times))
        self.metrics.append(row)
        self.state.iteration = i + 1
        self.state.trainable = phase.trainable or "both"
        self._iteration_start, self._learner_stepped = None, False
        return row

    def _rollout(self, i: int, phase: Phase) -> tuple[RolloutResult, dict, float, float]:
        """Iteration i's rollout: the one run ahead for it, else `_collect` now; then, in async mode,
        iteration i+1's rollout starts ahead (on a copy of the state: `pipeline.RolloutAhead`).

        Returns (result, groups/* metrics, rollout seconds, seconds this iteration waited for it).
        """
        taken = self.ahead.take(i, self.state)
        if taken is None:
            start = time.perf_counter()
            result, groups = self._collect(i, phase)
            seconds = waited = time.perf_counter() - start
            self._spans["rollout"].append((start, start + seconds))
        else:
            (result, groups), seconds, waited = taken
        nxt = i + 1
        if self._lookahead and nxt < self._until:
            self.ahead.start(iteration=nxt, state=self.state, collect=lambda state: self._collect_ahead(nxt, state))
        return result, groups, seconds, waited

    def _collect_ahead(self, i: int, state: CoordinatorState) -> tuple[RolloutResult, dict]:
        """`_collect` of iteration i on a copy of the state (its extra-seed cursor advances there)."""
        shadow = copy.copy(self)
        shadow.state, shadow.status = state, {}
        return shadow._collect(i, phase_of(self.cfg, i))

    def _fresh(self, records: list) -> tuple[list, dict]:
        """The records the learner may train on (at most `run.max_staleness` versions old) and the
        async/* metrics: records dropped as stale, the staleness histogram of those kept, its max."""
        version, limit = self.state.weights_version, self.cfg.run.max_staleness
        kept, dropped = staleness_split(records, version=version, max_staleness=limit)
        if dropped:
            self.log(f"iteration {self.state.iteration}: {len(dropped)} record(s) older than run.max_staleness="
                     f"{limit} version(s) not trained (learner at version {version})")
        hist = staleness_histogram(kept, version=version)
        out = {M.DROPPED_STALE: len(dropped), M.STALENESS_MAX: max(hist, default=0)}
        out.update({f"{M.STALENESS_PREFIX}{k}": hist.get(k, 0) for k in range(limit + 1)})
        return kept, out

    def _busy(self, times: dict) -> dict:
        """Busy fractions of the rollout and the learner over this iteration's window (from the end
        of the previous iteration to now), the window and the rollout's overlap with other work."""
        now = time.perf_counter()
        lo, self._window_start = self._window_start, now
        wall = max(now - lo, 1e-9)
        rollout = busy_seconds([*self._spans["rollout"], *self.ahead.spans(now)], lo=lo, hi=now)
        learn = busy_seconds(self._spans["learn"], lo=lo, hi=now)
        for kind in self._spans:
            self._spans[kind] = [s for s in self._spans[kind] if s[1] >= now]
        self.ahead.forget_before(now)
        return {M.SAMPLER_BUSY: rollout / wall, M.LEARNER_BUSY: learn / wall, M.ITERATION_SECONDS: wall,
                M.OVERLAP_SECONDS: times["rollout"] - times["rollout_wait"]}

    def _collect(self, i: int, phase: Phase) -> tuple[RolloutResult, dict]:
        """The iteration's rollout, plus fresh tasks while too few groups are informative.

        Dynamic sampling (DAPO, at whichever level the phase rolls out): while fewer than
        `algorithm.min_informative_groups` groups have members that score differently, roll out
        more groups on fresh env seeds, at most `algorithm.max_extra_groups` in all. Tied groups
        stay in the batch (their records are kept and written; their advantage is 0), and every
        env step counts. With `algorithm.group_size: auto` every group is sized by
        `AdaptiveRollout` and extra groups are drawn only while the iteration's env-step budget
        covers them. Returns the merged result and the groups/* metrics.
        """
        a = self.cfg.algorithm
        planner_params, executor_params = sampling_params(self.cfg, phase)
        sizer = self._adaptive(phase, planner_params, executor_params) if a.adaptive else None

        def roll(seeds: list[int]) -> RolloutResult:
            if sizer is not None:
                return sizer.roll(seeds)
            return self.rollout(seeds=seeds, mode=phase.mode, group_size=a.group_size_of(phase.mode),
                                plan_group_size=a.group_size_of("macro"), planner_params=planner_params,
                                executor_params=executor_params)

        def informative_groups(res: RolloutResult) -> int:
            # paper iterations training the planner judge the macro groups (the pre-pass)
            level = res.pre if (res.pre is not None and phase.trainable == "planner") else res
            return sum(group_informative(level.episodes, episode_score=a.episode_score).values())

        results = [roll(iteration_seeds(self.cfg, i))]
        informative = informative_groups(results[0])
        extra = 0
        while informative < a.min_informative_groups and extra < a.max_extra_groups:
            count = min(a.min_informative_groups - informative, a.max_extra_groups - extra)
            if sizer is not None and (count := sizer.affordable(count)) == 0:
                break  # the iteration's env-step budget cannot cover another task
            self.status["phase"] = f"rollout (+{count} groups)"
            results.append(roll(extra_seeds(self.cfg, self.state.extra_groups, count)))
            self.state.extra_groups += count
            extra += count
            informative += informative_groups(results[-1])
        total = a.num_groups + extra
        result = merge_results(results)
        groups = {M.GROUPS_INFORMATIVE_FRACTION: informative / max(total, 1), M.GROUPS_INFORMATIVE: informative,
                  M.GROUPS_EXTRA: extra}
        for level, res in ((phase.mode, result), ("macro", result.pre)):
            if res is not None:
                members = [e["group_id"] for e in res.episodes]
                groups[M.GROUP_SIZE_MEAN[level]] = len(members) / max(len(set(members)), 1)
        if sizer is not None:
            # a new dict, not an update in place: a rollout ahead (async) runs on a shallow copy of the state
            self.state.group_starts = {**self.state.group_starts, **sizer.next_starts()}
            groups.update({M.GROUP_START[level]: start for level, start in self.state.group_starts.items()})
        return result, groups

    def _adaptive(self, phase: Phase, planner_params, executor_params) -> AdaptiveRollout:
        """This iteration's adaptive-size rollouts (`algorithm.group_size: auto`)."""
        a = self.cfg.algorithm
        if self._step_cap is None:
            self._step_cap = env_step_cap(self.cfg.env.id, self.cfg.env.kwargs)
        return AdaptiveRollout(
            rollout=self.rollout, mode=phase.mode, planner_params=planner_params, executor_params=executor_params,
            starts=self.state.group_starts, auto=a.auto_group, episode_score=a.episode_score, num_groups=a.num_groups,
            step_cap=self._step_cap, budget=a.auto_group.env_steps)

    def _with_advantages(self, records, trainable):
        a = self.cfg.algorithm
        return compute_advantages(
            records, algorithm=a.name, trainable=trainable, norm_std=a.norm_std, eps=a.eps, gamma=a.gamma,
            step_advantage_w=a.step_advantage_w, episode_score=a.episode_score,
            subgoal_shaping_w=a.subgoal_shaping_w, micro_step_term=a.micro_step_term,
            episode_norm_over_steps=a.episode_norm_over_steps, step_weighting=a.step_weighting,
        )

    def _learn(self, records, trainable) -> dict:
        """The learner step(s): the trained level's records; with co-evolution off, both levels in
        one joint update of the shared policy (two policies: one update each)."""
        if trainable:
            levels = [trainable]
        else:
            levels = [JOINT] if self.cfg.model.planner_path is None else list(ROLES)
        out = {}
        for level in levels:
            batch = [r for r in records if level == JOINT or r.level == LEVEL_OF[level]]
            if self.cfg.learner.skip_zero_advantage:
                kept = [r for r in batch if r.advantage != 0.0]
                out[M.LEARNER_SKIPPED] = out.get(M.LEARNER_SKIPPED, 0) + len(batch) - len(kept)
                batch = kept
            metrics = self.learner.train_step(batch, trainable=level)
            out.update({f"{LEVEL_OF[level]}/{k}" if len(levels) > 1 else k: v for k, v in metrics.items()})
            out[M.LEARNER_RECORDS] = out.get(M.LEARNER_RECORDS, 0) + len(batch)
        return out

    def _row(self, i, phase, result, learn, sync, times) -> dict:
        m = result.metrics
        rollout_s = max(times["rollout"], 1e-9)
        acts = [r for r in result.records if r.level == "act"]
        env_steps = m.get(R.ENV_STEPS, 0) + (result.pre.metrics.get(R.ENV_STEPS, 0) if result.pre else 0)
        gen_tokens = m.get(R.GEN_TOKENS, 0) + (result.pre.metrics.get(R.GEN_TOKENS, 0) if result.pre else 0)
        row = {
            M.ITERATION: i,
            M.TRAINABLE: phase.trainable or "both",
            M.MODE: phase.mode,
            M.SUCCESS_RATE: m.get(R.SUCCESS_RATE, 0.0),
            M.MEAN_RETURN: m.get(R.MEAN_RETURN, 0.0),
            M.INVALID_RATE: m.get(R.INVALID_ACTION_RATE, 0.0),
            M.RESPONSE_LEN: m.get(R.MEAN_RESPONSE_LEN, 0.0),
            M.ENV_STEPS: self.state.env_steps,
            M.ROLLOUT_TOKENS_PER_S: gen_tokens / rollout_s,
            M.ENV_STEPS_PER_S: env_steps / rollout_s,
            M.TOKENS_PER_ENV_STEP: gen_tokens / max(env_steps, 1),
            M.SUB_DONE_RATE: sum(r.sub_done for r in acts) / max(len(acts), 1),
            M.BLUEPRINT_LEN: m.get(R.MEAN_NUM_SUBGOALS, 0.0),
            M.SYNC_SECONDS: sync.get("seconds", 0.0),
            M.SYNC_METHOD: sync.get("method", ""),
            M.PLAN_FALLBACK_RATE: m.get(R.PLAN_FALLBACK_RATE, 0.0),
            M.RECORDS: len(result.records),
            M.WEIGHTS_VERSION: self.state.weights_version,
        }
        pre = result.pre.metrics if result.pre is not None else {}
        row.update({key: m.get(name, 0) + pre.get(name, 0) for key, name in M.FAULTS.items()})
        row.update({k: v for k, v in learn.items() if isinstance(v, (int, float))})
        return row

    def _title(self) -> str:
        return f"{self.cfg.algorithm.name} on {self.cfg.env.id} ({self.cfg.model.path})"
