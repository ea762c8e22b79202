"""The SFT loss both warm-start trainers use, the text one (`sft.trainer`) and the vision one
(`sft.vision`): next-token cross-entropy on the response tokens only, with the LM head run only at
the positions that predict one (over a 49k vocabulary at every prompt position it would be a large
part of the compute and most of the memory). No Ray; torch is imported by the caller's tensors.

The trainers' held-out checks stay apart: `sft.trainer.action_accuracy` generates whole answers
and parses them (both levels, any env), `sft.vision.action_choice_accuracy` compares the logits of
the four Sokoban move words at the point the expert names its move (teacher-forced).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
"""label of a position that is not trained on (prompt and padding)"""


def response_loss_sum(hidden: torch.Tensor, labels: torch.Tensor,
                      lm_head: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the trained positions, and how many there are.

    Args:
        hidden: (B, T, H) the model's last hidden states.
        labels: (B, T) token ids, unshifted (HF convention: position t is predicted from the
            positions before it), IGNORE_INDEX where nothing is trained.
        lm_head: the output embedding, (N, H) -> (N, V).

    Returns:
        loss_sum: scalar float32 tensor, the summed cross-entropy (divide by the count for the
            token mean).
        count: the number of trained tokens N.
    """
    import torch.nn.functional as F

    # hidden at t predicts the token at t + 1: shift, then keep response positions only
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX  # (B, T - 1)
    logits = lm_head(hidden[:, :-1][keep])  # (N, V)
    return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())
