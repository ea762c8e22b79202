"""SFT warm start: fine-tune a causal LM on expert demonstrations, and measure what it learned.

Owns the supervised trainer (`train_sft`, a plain single-process PyTorch AdamW loop), the
tokenization of chat examples (`tokenize_example`), the config entry point (`sft_from_config`,
used by `himac-ray sft` and `run.sft_warmup`) and a held-out check (`action_accuracy`). The
demonstrations themselves come from `himac_ray.sft.expert`. No Ray, no DeepSpeed; torch and
transformers are imported lazily.

Prompt tokens are exactly `render_chat(tokenizer, messages[:-1])`, the ids the samplers feed
the model (chat template + assistant prefix), so the warm start is trained on the very
conditioning it is sampled under. The response is the assistant text's tokens plus EOS (the
chat template's end-of-turn token for SmolLM2 / Qwen), so a sampler stops where the expert did.

Compute (DESIGN): most of an example's tokens are prompt (Sokoban: ~570 prompt, ~57 response),
and all examples of an env share a long leading block (system message + task text, ~300
tokens for Sokoban). With `share_prefix`, a (micro-)batch runs that common prefix once and
broadcasts its KV cache to every row; gradients flow back through the broadcast, so loss and
gradients equal the unshared forward (see tests) with ~40% fewer token positions on Sokoban.
Logits are computed only at the positions that predict response tokens (`sft.loss`, shared with
the vision trainer).
`train_layers` freezes all but the top blocks, which makes backward much cheaper on CPU.
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from himac_ray import parsers, prompts
from himac_ray.engines.chat import render_chat
from himac_ray.generation import SamplingParams, text_of
from himac_ray.models import trainable_parameters
from himac_ray.models.store import check_replaceable, save_model_atomic
from himac_ray.sft.loss import IGNORE_INDEX, response_loss_sum

if TYPE_CHECKING:
    from himac_ray.config import TrainConfig
    from himac_ray.generation import Generator

METRICS_FILE = "sft_metrics.json"
"""written into the saved model folder next to the weights"""

# Metric keys (train_sft).
INITIAL_LOSS = "losses/sft_initial_loss"
FINAL_LOSS = "losses/sft_final_loss"
STEPS = "sft/steps"
EXAMPLES = "sft/examples"
TRUNCATED = "sft/truncated_examples"
TOKENS = "sft/tokens"
TARGET_TOKENS = "sft/target_tokens"
SECONDS = "perf/sft_seconds"
TOKENS_PER_S = "perf/sft_tokens_per_s"
EXAMPLES_PER_S = "perf/sft_examples_per_s"
LEVEL_EXAMPLES = "sft/examples_{level}"
"""examples per level, e.g. sft/examples_plan, sft/examples_act"""

# Metric keys (action_accuracy).
ACT_ACCURACY = "eval/act_accuracy"
ACT_VALID_RATE = "eval/act_valid_rate"
SUB_DONE_ACCURACY = "eval/sub_done_accuracy"
PLAN_VALID_RATE = "eval/plan_valid_rate"
PLAN_EXACT_MATCH = "eval/plan_exact_match"
ACT_PROMPTS = "eval/act_prompts"
PLAN_PROMPTS = "eval/plan_prompts"

# Prefixes shorter than this are not worth a separate forward pass.
MIN_SHARED_PREFIX = 16


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------
def tokenize_example(tokenizer, example: dict, *, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of one chat example (`himac_ray.sft.expert.expert_demonstrations` format).

    Args:
        tokenizer: the model's HF tokenizer (with its chat template).
        example: `{"messages": [..., {"role": "assistant", "content": target}], ...}`.
        max_len: longest sequence kept; a longer one loses the start of its prompt (the
            samplers also keep a prompt's tail). None = no limit.

    Returns:
        input_ids: prompt ids (`render_chat(tokenizer, messages[:-1])`) + response ids (the
            target's tokens + EOS), length L.
        labels: length L; IGNORE_INDEX on the prompt, the response ids elsewhere (unshifted,
            HF convention: position t is predicted from positions < t).
    """
    messages = example["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("an SFT example's last message must be the assistant's target")
    prompt_ids = render_chat(tokenizer, messages[:-1])
    target = text_of(messages[-1]["content"])
    response_ids = list(tokenizer.encode(target, add_special_tokens=False)) + [tokenizer.eos_token_id]
    if max_len is not None and len(prompt_ids) + len(response_ids) > max_len:
        # keep at least one prompt token so the first response token has a predecessor
        response_ids = response_ids[: max(max_len - 1, 1)]
        prompt_ids = prompt_ids[len(prompt_ids) - max(max_len - len(response_ids), 1) :]
    return prompt_ids + response_ids, [IGNORE_INDEX] * len(prompt_ids) + response_ids


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train_sft(
    *,
    model_path: str | Path,
    examples: Sequence[dict],
    out_dir: str | Path,
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    max_len: int = 2048,
    progress: bool = True,
    micro_batch_size: int | None = None,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
    train_layers: int | None = None,
    share_prefix: bool = True,
    device: str | None = None,
    autocast_bf16: bool = False,
) -> dict[str, float]:
    """Fine-tune `model_path` on `examples` (next-token loss on the responses) and save it.

    Each epoch visits the examples in a seeded random order, `batch_size` per AdamW step
    (the last batch of an epoch may be smaller). The loss is the mean over the batch's
    response tokens. Same arguments, device and thread count -> bit-identical weights.

    Args:
        model_path: local HF folder (see `himac_ray.models.resolve_model`).
        examples: chat examples (`himac_ray.sft.expert.expert_demonstrations`).
        out_dir: where the fine-tuned model + tokenizer go (float32 safetensors, plus
            `sft_metrics.json`). Written to a temporary sibling folder and renamed into place,
            so `out_dir` is either absent, the old folder, or complete; an existing `out_dir`
            is replaced.
        lr: AdamW learning rate (constant).
        epochs: passes over `examples`.
        batch_size: examples per optimizer step.
        seed: shuffling (and torch) seed.
        max_len: longest prompt + response in tokens; longer prompts lose their start.
        progress: show a tqdm bar with the running loss.
        micro_batch_size: examples per forward/backward pass (gradient accumulation to bound
            memory); None = batch_size.
        grad_clip: global gradient-norm clip (0 = off).
        weight_decay: AdamW weight decay.
        train_layers: train only the top N transformer blocks and the final norm (embeddings
            and lower blocks frozen, so backward stops at the first trainable block: ~3x
            cheaper per token on CPU with N = 4 of 30); None = full fine-tune.
        share_prefix: run each micro-batch's common prompt prefix once (module docstring).
        device: torch device; None = "cuda" when available, else "cpu".
        autocast_bf16: run forward and backward under bfloat16 autocast (float32 master weights
            and optimizer); for CPUs that compute bfloat16 natively, where it is ~2x faster.

    Returns:
        Metrics (module constants): losses/sft_initial_loss (first batch, before any update),
        losses/sft_final_loss (mean over the last epoch's batches), sft/steps, sft/examples,
        sft/examples_<level>, sft/truncated_examples, sft/tokens (non-pad tokens processed,
        all epochs), sft/target_tokens, perf/sft_seconds (training loop only, no load / save),
        perf/sft_tokens_per_s, perf/sft_examples_per_s.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not examples:
        raise ValueError("train_sft needs at least one example")
    if batch_size < 1 or epochs < 0:
        raise ValueError(f"batch_size must be >= 1 and epochs >= 0, got {batch_size} and {epochs}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    model.train()
    params = trainable_parameters(model, train_layers)
    rows = [tokenize_example(tokenizer, ex, max_len=max_len) for ex in examples]
    start = time.perf_counter()
    losses = _fit(
        model, rows, params, pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        lr=lr, epochs=epochs, batch_size=batch_size, micro_batch_size=micro_batch_size or batch_size, seed=seed,
        grad_clip=grad_clip, weight_decay=weight_decay, share_prefix=share_prefix, progress=progress,
        autocast=torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=autocast_bf16),
    )
    seconds = time.perf_counter() - start
    tokens = epochs * sum(len(ids) for ids, _ in rows)
    steps_per_epoch = -(-len(rows) // batch_size)
    last = losses[-steps_per_epoch:] if losses else []
    nan = float("nan")
    metrics = {
        INITIAL_LOSS: losses[0][0] / losses[0][1] if losses else nan,
        FINAL_LOSS: sum(s for s, _ in last) / max(sum(n for _, n in last), 1) if last else nan,
        STEPS: len(losses),
        EXAMPLES: len(rows),
        TRUNCATED: sum(len(tokenize_example(tokenizer, ex)[0]) > len(r[0]) for ex, r in zip(examples, rows)),
        TOKENS: tokens,
        TARGET_TOKENS: sum(n for _, n in losses),
        SECONDS: seconds,
        TOKENS_PER_S: tokens / seconds if seconds > 0 else 0.0,
        EXAMPLES_PER_S: epochs * len(rows) / seconds if seconds > 0 else 0.0,
    }
    for level, count in sorted(collections.Counter(str(ex.get("level", "act")) for ex in examples).items()):
        metrics[LEVEL_EXAMPLES.format(level=level)] = count
    _save_atomic(model.cpu(), tokenizer, Path(out_dir), metrics)
    return metrics


def _fit(
    model, rows, params, *, pad_id, lr, epochs, batch_size, micro_batch_size, seed, grad_clip, weight_decay,
    share_prefix, progress, autocast,
) -> list[tuple[float, int]]:
    """The AdamW loop; returns (summed loss, response tokens) per optimizer step."""
    import torch
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order_gen = torch.Generator().manual_seed(seed)
    micro = min(micro_batch_size, batch_size)
    losses = []
    # off a terminal (logs, CI, nohup) the bar is redrawn every 30 s instead of every step
    bar = tqdm(total=epochs * -(-len(rows) // batch_size), desc="sft", unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 30.0)
    for _epoch in range(epochs):
        order = torch.randperm(len(rows), generator=order_gen).tolist()
        for b_start in range(0, len(order), batch_size):
            b_rows = [rows[i] for i in order[b_start : b_start + batch_size]]
            b_targets = sum(sum(1 for t in labels[1:] if t != IGNORE_INDEX) for _, labels in b_rows)
            b_loss = 0.0
            for mb_start in range(0, len(b_rows), micro):
                # token-mean over the whole batch: each micro-batch's sum is divided by the batch's count
                with autocast:
                    mb_loss_sum, _ = _loss_sum(model, b_rows[mb_start : mb_start + micro], pad_id, share_prefix)
                (mb_loss_sum / b_targets).backward()
                b_loss += mb_loss_sum.item()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append((b_loss, b_targets))
            bar.update(1)
            bar.set_postfix(loss=f"{b_loss / b_targets:.4f}", refresh=False)  # redrawn at the bar's own pace
    bar.close()
    return losses


def sft_loss(*, model_path: str | Path, examples: Sequence[dict], batch_size: int = 8, max_len: int = 2048) -> float:
    """Mean next-token loss over all response tokens of `examples` under the model (no training)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [tokenize_example(tokenizer, ex, max_len=max_len) for ex in examples]
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            loss_sum, n = _loss_sum(model, rows[i : i + batch_size], pad_id, share_prefix=True)
            total, count = total + loss_sum.item(), count + n
    return total / max(count, 1)


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def _loss_sum(model, mb_rows, pad_id: int, share_prefix: bool):
    """Summed cross-entropy over the micro-batch's response tokens, and their count.

    Rows are right-padded (no row is ever fully masked, so attention stays finite). With a
    shared prefix of P tokens (P < every prompt length, so every predicting position lies in
    the suffix), the prefix runs once at batch size 1 and its KV cache is repeated per row.
    """
    import torch

    prompt_lens = [next(i for i, t in enumerate(labels) if t != IGNORE_INDEX) for _, labels in mb_rows]
    prefix = 0
    if share_prefix and len(mb_rows) > 1:
        prefix = min(_common_prefix([ids for ids, _ in mb_rows]), min(prompt_lens) - 1)
        prefix = prefix if prefix >= MIN_SHARED_PREFIX else 0
    width = max(len(ids) for ids, _ in mb_rows) - prefix
    mb_ids = torch.full((len(mb_rows), width), pad_id, dtype=torch.long)
    mb_labels = torch.full((len(mb_rows), width), IGNORE_INDEX, dtype=torch.long)
    mb_mask = torch.zeros((len(mb_rows), width), dtype=torch.long)
    for i, (ids, labels) in enumerate(mb_rows):
        n = len(ids) - prefix
        mb_ids[i, :n] = torch.tensor(ids[prefix:])
        mb_labels[i, :n] = torch.tensor(labels[prefix:])
        mb_mask[i, :n] = 1
    dev = model.device
    mb_ids, mb_labels, mb_mask = mb_ids.to(dev), mb_labels.to(dev), mb_mask.to(dev)
    decoder = model.get_decoder()
    if prefix:
        out = decoder(input_ids=torch.tensor([mb_rows[0][0][:prefix]], device=dev), use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(mb_rows))
        hidden = decoder(
            input_ids=mb_ids,
            attention_mask=torch.cat([torch.ones((len(mb_rows), prefix), dtype=torch.long, device=dev), mb_mask], dim=1),
            position_ids=torch.arange(prefix, prefix + width, device=dev)[None].expand(len(mb_rows), -1),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state  # (B, width, H)
    else:
        hidden = decoder(input_ids=mb_ids, attention_mask=mb_mask).last_hidden_state  # (B, width, H)
    return response_loss_sum(hidden, mb_labels, model.get_output_embeddings())


def _save_atomic(model, tokenizer, out_dir: Path, metrics: dict) -> Path:
    """Publish model + tokenizer + `sft_metrics.json` as the folder `out_dir` (`save_model_atomic`)."""
    files = {METRICS_FILE: json.dumps(metrics, indent=1, sort_keys=True) + "\n"}
    return save_model_atomic(model, tokenizer, out_dir, files=files)


def sft_from_config(cfg: TrainConfig, out_dir: str | Path) -> Path:
    """Warm-start `cfg.model.path` on expert demonstrations of `cfg.env.id`; returns the model folder.

    Demonstrations: seeds `range(cfg.sft.seed_start, cfg.sft.seed_start + cfg.sft.episodes)`,
    env kwargs `cfg.env.kwargs`, K / history / step budget from `cfg.rollout`; flat-agent
    prompts when `cfg.algorithm.name` is not "himac" (GRPO / GiGPO / RLOO train a flat policy).
    HiMAC adds `cfg.sft.plan_episodes` planner-only examples from the next seeds (`expert_plans`).
    Hyperparameters from `cfg.sft`; `max_len` and `grad_clip` from `cfg.learner`, seed from
    `cfg.sft.seed`. Weights and optimizer are float32 (bfloat16 autocast where `model.dtype` resolves to
    bfloat16) and the folder is saved in float32. A vision-language
    model (visual envs) trains with `himac_ray.sft.vision.train_vlm_sft` on the same demonstrations.
    """
    from himac_ray.models import is_vision_model, resolve_model
    from himac_ray.sft.expert import expert_demonstrations, expert_plans
    from himac_ray.sft.vision import train_vlm_sft

    check_replaceable(out_dir)  # before minutes of training, not after
    model_path = resolve_model(cfg.model.path)
    flat = cfg.algorithm.name != "himac"
    examples = expert_demonstrations(
        cfg.env.id,
        range(cfg.sft.seed_start, cfg.sft.seed_start + cfg.sft.episodes),
        env_kwargs=dict(cfg.env.kwargs),
        max_subgoals=cfg.rollout.max_subgoals,
        history_length=cfg.rollout.history_length,
        subgoal_step_budget=cfg.rollout.subgoal_step_budget,
        flat=flat,
        prompt_format=cfg.rollout.prompt_format,
    )
    if examples and not flat and cfg.sft.plan_episodes:
        start = cfg.sft.seed_start + cfg.sft.episodes
        examples += expert_plans(cfg.env.id, range(start, start + cfg.sft.plan_episodes), env_kwargs=dict(cfg.env.kwargs),
                                 max_subgoals=cfg.rollout.max_subgoals, prompt_format=cfg.rollout.prompt_format)
    if not examples:
        raise RuntimeError(f"the expert won none of {cfg.sft.episodes} episodes of {cfg.env.id}: no demonstrations")
    if is_vision_model(model_path):  # visual envs: the examples' user turns hold the board image
        train_vlm_sft(model_path, examples, out_path=out_dir, epochs=cfg.sft.epochs, lr=cfg.sft.lr,
                      batch_size=cfg.sft.batch_size, max_len=cfg.learner.max_len, grad_clip=cfg.learner.grad_clip,
                      seed=cfg.sft.seed)
        return Path(out_dir)
    from himac_ray.hardware import resolve_dtype

    bf16 = resolve_dtype(cfg.model.dtype)[0] == "bfloat16"
    train_sft(
        model_path=model_path,
        examples=examples,
        autocast_bf16=bf16,
        train_layers=cfg.sft.train_layers or None,
        out_dir=out_dir,
        lr=cfg.sft.lr,
        epochs=cfg.sft.epochs,
        batch_size=cfg.sft.batch_size,
        seed=cfg.sft.seed,
        max_len=cfg.learner.max_len,
        grad_clip=cfg.learner.grad_clip,
    )
    return Path(out_dir)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def action_accuracy(
    generator: Generator,
    env_id: str,
    seeds: Sequence[int],
    *,
    env_kwargs: dict | None = None,
    max_subgoals: int = 4,
    history_length: int = 2,
    subgoal_step_budget: int | None = None,
    flat: bool = False,
    plan_max_tokens: int = 160,
    action_max_tokens: int = 96,
    prompt_format: prompts.PromptFormat = prompts.VERL,
) -> dict[str, float]:
    """Greedy agreement with the expert on held-out demonstration prompts (teacher-forced states).

    Builds the expert's demonstrations for `seeds` (same arguments as
    `himac_ray.sft.expert.expert_demonstrations`) and answers every prompt greedily, one generate call
    per level. An executor answer is correct when it parses (`parsers.parse_action`, Sokoban
    direction words canonicalised) to the expert's action; `<sub_done>` is scored separately.
    Planner answers are scored for format validity and for an exact blueprint match.

    Returns:
        eval/act_accuracy (fraction of executor prompts answered with the expert's action,
        invalid answers count as wrong), eval/act_valid_rate, eval/sub_done_accuracy (the
        `<sub_done>` flag equals the expert's, over all executor prompts),
        eval/plan_valid_rate, eval/plan_exact_match, eval/act_prompts, eval/plan_prompts (rates are
        NaN for a level without prompts).
    """
    from himac_ray.sft.expert import expert_demonstrations

    examples = expert_demonstrations(
        env_id, seeds, env_kwargs=env_kwargs, max_subgoals=max_subgoals, history_length=history_length,
        subgoal_step_budget=subgoal_step_budget, flat=flat, prompt_format=prompt_format,
    )
    acts = [ex for ex in examples if ex["level"] == "act"]
    plans = [ex for ex in examples if ex["level"] == "plan"]
    nan = float("nan")
    metrics: dict[str, float] = {
        ACT_PROMPTS: len(acts), PLAN_PROMPTS: len(plans), ACT_ACCURACY: nan, ACT_VALID_RATE: nan,
        SUB_DONE_ACCURACY: nan, PLAN_VALID_RATE: nan, PLAN_EXACT_MATCH: nan,
    }
    if acts:
        params = SamplingParams(temperature=0.0, max_tokens=action_max_tokens)
        samples = generator.generate([ex["messages"][:-1] for ex in acts], params)
        correct = valid = sub_ok = 0
        for ex, (sample,) in zip(acts, samples):
            think = prompt_format.require_think
            want, _, want_done = parsers.parse_action(ex["messages"][-1]["content"], env_id=env_id, require_think=think)
            got, ok, got_done = parsers.parse_action(sample.text, env_id=env_id, require_think=think)
            valid += ok
            correct += ok and _norm(got) == _norm(want)
            sub_ok += got_done == want_done
        metrics.update({ACT_ACCURACY: correct / len(acts), ACT_VALID_RATE: valid / len(acts), SUB_DONE_ACCURACY: sub_ok / len(acts)})
    if plans:
        params = SamplingParams(temperature=0.0, max_tokens=plan_max_tokens)
        samples = generator.generate([ex["messages"][:-1] for ex in plans], params)
        valid = exact = 0
        for ex, (sample,) in zip(plans, samples):
            want, _ = parsers.parse_plan(ex["messages"][-1]["content"], max_subgoals)
            got, ok = parsers.parse_plan(sample.text, max_subgoals)
            valid += ok
            exact += ok and [_norm(s) for s in got] == [_norm(s) for s in want]
        metrics.update({PLAN_VALID_RATE: valid / len(plans), PLAN_EXACT_MATCH: exact / len(plans)})
    return metrics


def _norm(text: Any) -> str:
    return " ".join(str(text).split()).lower()
