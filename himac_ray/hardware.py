"""What the machine computes natively: CPU flags and the `auto` dtype. No Ray; torch imported lazily.

`model.dtype: auto` must not pick bfloat16 on a CPU that only emulates it: on an AVX2 CPU
without AVX-512 BF16, vLLM ran SmolLM2-135M ~3.6x slower in bfloat16 than in float32.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""/proc/cpuinfo flags of CPUs with bfloat16 arithmetic (x86 AVX-512 BF16 / AMX; Arm's `bf16`)"""
DTYPES = ("float32", "bfloat16", "float16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (`flags` / `Features` of /proc/cpuinfo); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def native_bf16_cpu(flags: frozenset[str] | None = None) -> bool:
    return bool(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))


def resolve_dtype(dtype: str, *, gpu: bool | None = None, flags: frozenset[str] | None = None) -> tuple[str, str]:
    """The concrete dtype for `model.dtype` on this machine, and why.

    Args:
        dtype: auto | float32 | bfloat16 | float16.
        gpu: whether the weights live on a GPU (None: `torch.cuda.is_available()`).
        flags: CPU flags (None: this machine's).

    Returns:
        (dtype, reason), e.g. ("float32", "auto: the CPU has no native bfloat16 (no avx512_bf16 / amx_bf16)").
    """
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {DTYPES}, got {dtype!r}")
        return dtype, "configured"
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if gpu:
        return "bfloat16", "auto: GPU"
    have = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if have:
        return "bfloat16", f"auto: the CPU computes bfloat16 natively ({', '.join(have)})"
    return "float32", "auto: the CPU has no native bfloat16 (no avx512_bf16 / amx_bf16), float32 is faster"


SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "bf16")
"""the CPU flags that decide kernel speed, recorded with every timing"""


def speed_flags() -> list[str]:
    return sorted(f for f in cpu_flags() if f in SPEED_FLAGS)
