# ruff: noqa: E402  (imports follow the sys.path insert of the repo root)
"""Diagnostic (session 7): the warm start's executor on the expert's own states (held-out rooms 0-63, one act
example per expert step): does its most probable action match the expert's (by step), and does its probability
of `<sub_done>` after the expert's action separate the steps that complete a subgoal from those that do not?
(`</action>` and `</action><sub_done>` share the tokens up to `</action`; the next token decides: `>` or `><`.)
Usage: .venv/bin/python benchmarks/results/executor_calibration.py [WARM_START_DIR]."""
import sys

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import torch

torch.set_num_threads(1)

from diag_common import diag_model_and_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from himac_ray.evaluate import eval_seeds
from himac_ray.sft.expert import expert_demonstrations
from himac_ray.sft.trainer import tokenize_example

model_dir, cfg = diag_model_and_config("executor-calibration")
r = cfg.rollout
ex = [e for e in expert_demonstrations(cfg.env.id, eval_seeds(cfg, 64), env_kwargs=cfg.env.kwargs, max_subgoals=r.max_subgoals,
      history_length=r.history_length, subgoal_step_budget=r.subgoal_step_budget, prompt_format=r.prompt_format) if e["level"] == "act"]
tok = AutoTokenizer.from_pretrained(model_dir)
m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
sd_first = tok.encode("</action><sub_done>", add_special_tokens=False)
end_first = tok.encode("</action>", add_special_tokens=False)
print("tokens", sd_first, end_first, tok.eos_token_id)
acts = ["up", "down", "left", "right"]
rows = []
pre = tok.encode("<action>", add_special_tokens=False)
first = {a: tok.encode(f"<action>{a}</action>", add_special_tokens=False)[len(pre)] for a in acts}
assert len(set(first.values())) == 4, first
with torch.no_grad():
    for e in ex:
        target = e["messages"][-1]["content"]
        has_sd = "<sub_done>" in target
        exp_a = next(a for a in acts if f"<action>{a}</action>" in target)
        ids, labels = tokenize_example(tok, e)
        n_prompt = sum(1 for label in labels if label == -100)
        cont = tok.encode(f"<action>{exp_a}</action>", add_special_tokens=False)[:-1]  # up to "</action" (">" may merge with "<sub_done>")
        x = torch.tensor([ids[:n_prompt] + cont])
        logits = m(x).logits[0].float()
        pa = torch.softmax(logits[n_prompt + len(pre) - 1], -1)
        probs = {a: pa[first[a]].item() for a in acts}
        p = torch.softmax(logits[-1], -1)
        rows.append(dict(seed=e["seed"], step=e["step"], sg=e["subgoal_index"], has_sd=has_sd, expert=exp_a,
                         greedy=max(probs, key=probs.get), p_sd=p[sd_first[len(end_first) - 1]].item(), p_eos=p[end_first[-1]].item(),
                         p_expert=probs[exp_a]))
import statistics as st

acc = sum(r["greedy"] == r["expert"] for r in rows) / len(rows)
print("act examples", len(rows), "greedy action == expert", round(acc, 3))
for flag in (True, False):
    sub = [r for r in rows if r["has_sd"] == flag]
    print("expert sub_done", flag, "n", len(sub), "P(sd) mean", round(st.mean(r["p_sd"] for r in sub), 3),
          "frac where <sub_done> beats the end", round(sum(r["p_sd"] > r["p_eos"] for r in sub) / len(sub), 3),
          "quantiles", [round(q, 3) for q in st.quantiles([r["p_sd"] for r in sub], n=4)])
by_step = {}
for r in rows:
    by_step.setdefault(r["step"], []).append(r["greedy"] == r["expert"])
print("accuracy by step", {k: (round(sum(v)/len(v), 2), len(v)) for k, v in sorted(by_step.items())})
