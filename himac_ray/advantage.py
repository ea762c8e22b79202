"""Critic-free group-relative advantages: HiMAC (macro + micro), flat GRPO, RLOO and GiGPO.

Pure numpy, no Ray, no torch. The array functions take one entry per record (N,) plus group
keys and return (N,) float64 arrays; `compute_advantages` applies them to a list of `Record`s.
Formulas and every choice the paper leaves open are written down in docs/algorithm.md.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from himac_ray.data import Record
from himac_ray.names import ALGORITHMS, ROLES, STEP_WEIGHTINGS

EPISODE_SCORES = ("return", "won")


# ---------------------------------------------------------------------------------------------
# array primitives
# ---------------------------------------------------------------------------------------------


def _factorize(*keys: Sequence) -> np.ndarray:
    """(N,) integer codes, equal iff every key array is equal at both positions."""
    codes = np.zeros(len(keys[0]), dtype=np.int64)
    for key in keys:
        _, inverse = np.unique(np.asarray(key), return_inverse=True)
        inverse = inverse.reshape(-1)
        codes = codes * (int(inverse.max(initial=-1)) + 1) + inverse
    _, codes = np.unique(codes, return_inverse=True)  # compact to 0..G-1
    return codes.reshape(-1)


def _as_scores(scores: Sequence[float]) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(scores)):
        raise ValueError("advantage inputs must be finite (got NaN or inf)")
    return scores


def _degenerate_groups(scores: np.ndarray, codes: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(G,) bool: the group has fewer than 2 members or all its scores are equal."""
    gmax = np.full(count.size, -np.inf)
    gmin = np.full(count.size, np.inf)
    np.maximum.at(gmax, codes, scores)
    np.minimum.at(gmin, codes, scores)
    return (count < 2) | (gmax == gmin)


def group_normalize(
    scores: Sequence[float],  # (N,)
    group_ids: Sequence,  # (N,)
    *,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """Group-relative advantage (GRPO): A_i = (R_i - mean_g R) / (std_g R + eps).

    Vectorized; `group_normalize_loop` is the plain reference. std is the sample standard
    deviation (ddof=1, as torch.std in verl / verl-agent). A group of one member, or whose
    members all have the same score, gets exactly 0 (it carries no relative signal).

    Args:
        scores: (N,) one score per member.
        group_ids: (N,) hashable, sortable group keys (str or int).
        norm_std: divide by the group std (False: mean-centering only, verl-agent "mean_norm").
        eps: added to the std.

    Returns:
        (N,) float64 advantages.
    """
    scores = _as_scores(scores)
    if scores.size == 0:
        return scores
    codes = _factorize(group_ids)
    n_groups = int(codes.max()) + 1
    count = np.bincount(codes, minlength=n_groups)
    mean = np.bincount(codes, weights=scores, minlength=n_groups) / count
    adv = scores - mean[codes]
    # singleton and constant groups get exact zeros (mean-centering leaves ~1e-17 residue,
    # and with eps=0 their std would be 0)
    degenerate = _degenerate_groups(scores, codes, count)
    if norm_std:
        var = np.bincount(codes, weights=adv**2, minlength=n_groups) / np.maximum(count - 1, 1)
        denom = np.where(degenerate, 1.0, np.sqrt(var) + eps)
        adv = adv / denom[codes]
    adv[degenerate[codes]] = 0.0
    return adv


def group_normalize_loop(
    scores: Sequence[float],  # (N,)
    group_ids: Sequence,  # (N,)
    *,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """Reference loop implementation of `group_normalize` (same arguments and result)."""
    scores = _as_scores(scores)
    members: dict = {}
    for i, g in enumerate(group_ids):
        members.setdefault(g, []).append(i)
    adv = np.zeros_like(scores)
    for idx in members.values():
        values = [scores[i] for i in idx]
        if len(values) < 2 or max(values) == min(values):
            continue  # no relative signal: advantage 0
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        for i in idx:
            adv[i] = (scores[i] - mean) / (std + eps) if norm_std else scores[i] - mean
    return adv


def rloo_advantages(
    scores: Sequence[float],  # (N,)
    group_ids: Sequence,  # (N,)
) -> np.ndarray:
    """REINFORCE leave-one-out: A_i = R_i - mean_{j != i in g} R_j = n/(n-1) (R_i - mean_g R).

    Singleton and constant groups get 0. No std normalization (RLOO is defined without it).

    Returns:
        (N,) float64 advantages.
    """
    scores = _as_scores(scores)
    if scores.size == 0:
        return scores
    codes = _factorize(group_ids)
    n_groups = int(codes.max()) + 1
    count = np.bincount(codes, minlength=n_groups)
    total = np.bincount(codes, weights=scores, minlength=n_groups)
    n = count[codes]
    adv = np.zeros_like(scores)
    many = n > 1
    adv[many] = scores[many] - (total[codes][many] - scores[many]) / (n[many] - 1)
    adv[_degenerate_groups(scores, codes, count)[codes]] = 0.0
    return adv


def episode_advantages(
    episode_scores: Sequence[float],  # (N,)
    group_ids: Sequence,  # (N,)
    traj_ids: Sequence,  # (N,)
    *,
    estimator: str = "grpo",
    norm_std: bool = True,
    eps: float = 1e-6,
    over_steps: bool = False,
) -> np.ndarray:
    """Episode-level advantage of each trajectory within its group, broadcast to its records.

    Each trajectory counts once in its group's statistics (all records of one trajectory carry
    the same `episode_scores` value). With `over_steps=True` every record counts instead, so
    long trajectories weigh more: verl-agent GiGPO's `compute_mean_std_cross_steps=True`.

    Args:
        episode_scores: (N,) the record's trajectory score (same within a trajectory).
        group_ids: (N,) group of each record.
        traj_ids: (N,) trajectory of each record.
        estimator: "grpo" (`group_normalize`) or "rloo" (`rloo_advantages`).
        norm_std, eps: see `group_normalize` (ignored by "rloo").
        over_steps: compute group statistics over records instead of trajectories.

    Returns:
        (N,) float64, equal across the records of a trajectory.
    """
    scores = _as_scores(episode_scores)
    if scores.size == 0:
        return scores
    group_codes = _factorize(group_ids)
    if over_steps:
        first, inverse = np.arange(scores.size), np.arange(scores.size)
    else:
        _, first, inverse = np.unique(
            _factorize(group_codes, traj_ids), return_index=True, return_inverse=True
        )
        inverse = inverse.reshape(-1)
    if estimator == "grpo":
        per_traj = group_normalize(scores[first], group_codes[first], norm_std=norm_std, eps=eps)
    elif estimator == "rloo":
        per_traj = rloo_advantages(scores[first], group_codes[first])
    else:
        raise ValueError(f"estimator must be 'grpo' or 'rloo', got {estimator!r}")
    return per_traj[inverse]


def discounted_returns(
    rewards: Sequence[float],  # (N,)
    traj_ids: Sequence,  # (N,)
    steps: Sequence[int],  # (N,)
    *,
    gamma: float,
) -> np.ndarray:
    """Per-step discounted return G_t = r_t + gamma * G_{t+1} within each trajectory.

    Records of a trajectory are ordered by `steps` (ties keep input order); the last step of
    each trajectory bootstraps from 0. GiGPO paper Eq. 5.

    Returns:
        (N,) float64, in input order.
    """
    rewards = _as_scores(rewards)
    traj_codes = _factorize(traj_ids) if rewards.size else np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.asarray(steps), traj_codes))  # by trajectory, then step
    returns = np.zeros_like(rewards)
    running, prev_traj = 0.0, None
    for i in order[::-1]:
        if traj_codes[i] != prev_traj:
            running, prev_traj = 0.0, traj_codes[i]  # new trajectory: nothing after its end
        running = rewards[i] + gamma * running
        returns[i] = running
    return returns


def step_advantages(
    step_returns: Sequence[float],  # (N,)
    group_ids: Sequence,  # (N,)
    anchors: Sequence[str],  # (N,)
    *,
    norm_std: bool = True,
    eps: float = 1e-6,
) -> np.ndarray:
    """GiGPO step-level advantage: `group_normalize` of step returns within anchor-state groups.

    A step group holds the records of one episode group whose anchor observations are
    identical (exact string match; GiGPO paper Eq. 6-7). A state visited once gets 0.

    Returns:
        (N,) float64.
    """
    if len(step_returns) == 0:
        return np.zeros(0)
    return group_normalize(step_returns, _factorize(group_ids, anchors), norm_std=norm_std, eps=eps)


# ---------------------------------------------------------------------------------------------
# records -> advantages
# ---------------------------------------------------------------------------------------------


def _trajectory_scores(
    records: Sequence[Record], *, episode_score: str, subgoal_shaping_w: float
) -> dict[str, float]:
    """traj_id -> episode score (last record's return, or won; plus optional subgoal shaping)."""
    last: dict[str, Record] = {}
    won: dict[str, bool] = {}
    done_subgoals: dict[str, set] = {}
    max_subgoal: dict[str, int] = {}
    num_subgoals: dict[str, int] = {}
    for r in records:
        t = r.traj_id
        if t not in last or r.step >= last[t].step:
            last[t] = r
        won[t] = won.get(t, False) or r.won
        num_subgoals[t] = max(num_subgoals.get(t, 0), r.num_subgoals)
        if r.level == "act" and r.subgoal_index >= 0:
            max_subgoal[t] = max(max_subgoal.get(t, -1), r.subgoal_index)
            if r.sub_done:
                done_subgoals.setdefault(t, set()).add(r.subgoal_index)
    scores = {}
    for t, r in last.items():
        score = float(won[t]) if episode_score == "won" else float(r.episode_return)
        # K from the blueprint if known, else the number of subgoals the executor reached
        k = num_subgoals[t] or max_subgoal.get(t, -1) + 1
        if subgoal_shaping_w and k > 0:
            score += subgoal_shaping_w * len(done_subgoals.get(t, ())) / k
        scores[t] = score
    return scores


def _level_advantages(
    records: list[Record],
    traj_score: dict[str, float],
    *,
    estimator: str,
    norm_std: bool,
    eps: float,
    over_steps: bool,
    step_w: float,
    gamma: float,
) -> np.ndarray:
    """Episode advantage (+ step_w * GiGPO step advantage when step_w != 0) for one level."""
    group_ids = [r.group_id for r in records]
    traj_ids = [r.traj_id for r in records]
    scores = [traj_score[t] for t in traj_ids]
    adv = episode_advantages(
        scores, group_ids, traj_ids,
        estimator=estimator, norm_std=norm_std, eps=eps, over_steps=over_steps,
    )
    if step_w:
        returns = discounted_returns(
            [r.reward for r in records], traj_ids, [r.step for r in records], gamma=gamma
        )
        anchors = [r.anchor for r in records]
        step = step_advantages(returns, group_ids, anchors, norm_std=norm_std, eps=eps)
        adv = adv + step_w * step
    return adv


def compute_advantages(
    records: list[Record],
    *,
    algorithm: str = "himac",
    trainable: str | None = None,
    norm_std: bool = True,
    eps: float = 1e-6,
    gamma: float = 0.95,
    step_advantage_w: float = 1.0,
    episode_score: str = "return",
    subgoal_shaping_w: float = 0.0,
    micro_step_term: bool = False,
    episode_norm_over_steps: bool = False,
    step_weighting: str = "uniform",
) -> list[Record]:
    """Set `Record.advantage` on every record (in place) and return the same list.

    Per algorithm (R_tau = trajectory score, see docs/algorithm.md):
      himac: `plan` records get the macro advantage, R_tau normalized among the plan records
             of their (macro) group; `act` records get the micro advantage, R_tau normalized
             among the trajectories of their (micro) group, broadcast to every act record of
             the trajectory (+ step_advantage_w * GiGPO step term if `micro_step_term`).
      grpo:  `act` records: R_tau normalized among the trajectories of the group, broadcast.
      rloo:  `act` records: R_tau minus the mean of the group's other trajectories.
      gigpo: `act` records: grpo episode term + step_advantage_w * step term, step groups =
             identical `anchor` within the group, step returns discounted by `gamma`.
    Records of a level not trained this phase get 0: with `trainable="planner"` all `act`
    records, with "executor" all `plan` records, with None neither. Flat algorithms never train
    `plan` records.

    Args:
        records: the batch; groups must be complete (every member of each group present).
        algorithm: "himac" | "grpo" | "gigpo" | "rloo" (`algorithm.name`).
        trainable: "planner" | "executor" | None (both levels), from `coevolution.trainable_level`.
        norm_std: divide by the group std (`algorithm.norm_std`; False = verl-agent mean_norm).
        eps: std epsilon (`algorithm.eps`).
        gamma: step-return discount for GiGPO step terms (`algorithm.gamma`).
        step_advantage_w: weight w of the GiGPO step term (`algorithm.step_advantage_w`).
        episode_score: trajectory score R_tau: "return" (`episode_return` of the trajectory's
            last record) or "won" (1.0 if any record won, else 0.0) (`algorithm.episode_score`).
        subgoal_shaping_w: HiMAC only; adds w * (subgoals declared done / K) to the trajectory
            score (`algorithm.subgoal_shaping_w`).
        micro_step_term: HiMAC only; add the GiGPO step term to micro advantages
            (`algorithm.micro_step_term`).
        episode_norm_over_steps: group statistics over records instead of trajectories
            (`algorithm.episode_norm_over_steps`; True reproduces verl-agent GiGPO).
        step_weighting: "uniform" (every act record as computed) or "trajectory" (`weight_by_trajectory`)
            (`algorithm.step_weighting`).

    Returns:
        `records`, with `.advantage` set.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if trainable is not None and trainable not in ROLES:
        raise ValueError(f"trainable must be one of {ROLES} or None, got {trainable!r}")
    if algorithm != "himac" and trainable == "planner":
        raise ValueError(f"flat algorithm {algorithm!r} has no planner to train")
    if episode_score not in EPISODE_SCORES:
        raise ValueError(f"episode_score must be one of {EPISODE_SCORES}, got {episode_score!r}")
    if step_weighting not in STEP_WEIGHTINGS:
        raise ValueError(f"step_weighting must be one of {STEP_WEIGHTINGS}, got {step_weighting!r}")

    plan = [r for r in records if r.level == "plan"]
    act = [r for r in records if r.level == "act"]
    for r in records:
        r.advantage = 0.0
    common = dict(norm_std=norm_std, eps=eps, over_steps=episode_norm_over_steps, gamma=gamma)

    if algorithm == "himac":
        traj_score = _trajectory_scores(
            records, episode_score=episode_score, subgoal_shaping_w=subgoal_shaping_w
        )
        if trainable in (None, "planner") and plan:
            adv = _level_advantages(plan, traj_score, estimator="grpo", step_w=0.0, **common)
            for r, a in zip(plan, adv):
                r.advantage = float(a)
        if trainable in (None, "executor") and act:
            step_w = step_advantage_w if micro_step_term else 0.0
            adv = _level_advantages(act, traj_score, estimator="grpo", step_w=step_w, **common)
            for r, a in zip(act, adv):
                r.advantage = float(a)
    elif act:
        traj_score = _trajectory_scores(act, episode_score=episode_score, subgoal_shaping_w=0.0)
        estimator = "rloo" if algorithm == "rloo" else "grpo"
        step_w = step_advantage_w if algorithm == "gigpo" else 0.0
        adv = _level_advantages(act, traj_score, estimator=estimator, step_w=step_w, **common)
        for r, a in zip(act, adv):
            r.advantage = float(a)
    if step_weighting == "trajectory":  # act records of an untrained level are 0 and stay 0
        weight_by_trajectory(act)
    return records


def weight_by_trajectory(act: Sequence[Record]) -> None:
    """Scale each act record's advantage (in place) by m / n_tau: n_tau = act records of its trajectory,
    m = mean act records per trajectory over `act`. Every trajectory then carries the same total weight
    in the loss whatever its length (its advantage x m), so a group's positive and negative advantages
    balance even when failing members run all `max_steps` and winners stop early; the weights m / n_tau
    average 1 over the records."""
    steps: dict[str, int] = {}
    for r in act:
        steps[r.traj_id] = steps.get(r.traj_id, 0) + 1
    if not steps:
        return
    mean = len(act) / len(steps)
    for r in act:
        r.advantage *= mean / steps[r.traj_id]


def group_informative(episodes: Sequence[dict], *, episode_score: str = "return") -> dict[str, bool]:
    """group_id -> whether its members' trajectory scores differ (DAPO's dynamic-sampling test).

    A group whose members all score the same gets a zero episode-level advantage for every
    member, so it teaches nothing at that level. `episodes` are `RolloutResult.episodes`
    summaries (`group_id`, `return`, `won`); `episode_score` as in `compute_advantages`.
    """
    return {group: len(set(values)) > 1 for group, values in member_scores(episodes, episode_score=episode_score).items()}


def member_scores(episodes: Sequence[dict], *, episode_score: str = "return") -> dict[str, list[float]]:
    """group_id -> its members' trajectory scores (rounded to 1e-9), in sampling order."""
    scores: dict[str, list[float]] = {}
    for e in episodes:
        score = float(e["won"]) if episode_score == "won" else float(e["return"])
        scores.setdefault(e["group_id"], []).append(round(score, 9))
    return scores
