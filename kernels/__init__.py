"""Linear recurrence scans, h_t = a_t ⊙ h_{t-1} + x_t, with fused backward passes.

`linear_scan` is the one public entry; it validates its inputs and dispatches on `impl=`.
"""

from __future__ import annotations

import torch

from ._env import triton_interpreter_on
from .reference import linear_scan_reference
from .torch_scan import linear_scan_torch

__all__ = ["linear_scan", "IMPLS"]

IMPLS = ("auto", "triton", "sequential", "reference")
# CUDA caps a launch grid's y and z axes at 65535 programs, and the Triton kernels index the batch there: a larger
# batch is scanned in slices of at most this many sequences.
MAX_BATCH_PER_LAUNCH = 65535
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def linear_scan(
    x: torch.Tensor,
    a: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All states of the diagonal linear recurrence

        h_t = a_t ⊙ h_{t-1} + x_t,    t = 1..T,    h_0 = h0 (zeros if None),

    computed as a parallel (associative) scan over the pairs (a_t, x_t) with the combine
    (a_l, h_l) ∘ (a_r, h_r) = (a_l a_r, a_r h_l + h_r) (Blelloch 1990). The backward is the same scan run
    in reverse, dh_t = dh_t^out + a_{t+1} dh_{t+1}, with dx_t = dh_t, da_t = dh_t h_{t-1} and
    dh0 = a_1 dh_1 (Martin & Cundy 2018, "Parallelizing Linear Recurrent Neural Nets Over Sequence Length").

    Args:
        x: (B, T, D) inputs. float32, bfloat16 or float16 (float64 for impl="reference"/CPU "auto").
        a: (B, T, D) gates, same dtype and device as x. Usually in [0, 1]; any values are computed faithfully.
        h0: (B, D) initial state, or None for zeros. x's dtype or float32.
        impl: "triton"     chunked associative scan in Triton (the default on CUDA; when B·D is too small
                           to fill the GPU, or fills its SMs unevenly at long T, each pass is one pass
                           over tall tiles chained by a decoupled look-back);
              "sequential" Triton loop over t, one program per channel tile (the seed's algorithm);
              "reference"  plain PyTorch loop, the oracle, for debugging;
              "auto"       "triton" on CUDA, a pure-PyTorch doubling scan on CPU.
        output_final_state: also return h_T.

    Returns:
        (h, h_T): h is (B, T, D) in x's dtype; h_T is (B, D) float32 (float64 for float64 inputs) when
        output_final_state, else None.
        Gradients flow to x, a, h0 and through h_T.

    Every implementation accumulates in float32. Every one is bitwise reproducible from run to run except
    the look-back passes of impl="triton" (long T, small or uneven B·D), whose order of combination depends on
    timing; with torch.use_deterministic_algorithms(True) they give way to the chunked passes. Strided
    inputs (a D-slice, a transposed view) are read through their strides by the Triton kernels without a
    copy; outputs are contiguous. The Triton impls run on CPU tensors only under the Triton interpreter
    (TRITON_INTERPRET=1 before importing triton).
    """
    _check_inputs(x, a, h0, impl, output_final_state)
    if impl == "auto":
        impl = "triton" if x.is_cuda else "torch"
    if impl == "reference":
        return linear_scan_reference(x, a, h0, output_final_state)
    if impl == "torch":
        return linear_scan_torch(x, a, h0, output_final_state)
    if x.shape[0] > MAX_BATCH_PER_LAUNCH:
        return _in_batch_slices(x, a, h0, impl, output_final_state)
    if impl == "triton":
        from .associative_scan import linear_scan_associative

        return linear_scan_associative(x, a, h0, output_final_state)
    from .sequential_scan import linear_scan_sequential

    return linear_scan_sequential(x, a, h0, output_final_state)


def _in_batch_slices(x, a, h0, impl, output_final_state):
    """`linear_scan` over slices of at most MAX_BATCH_PER_LAUNCH sequences, outputs concatenated along B."""
    parts = [
        linear_scan(x[i : i + MAX_BATCH_PER_LAUNCH], a[i : i + MAX_BATCH_PER_LAUNCH],
                    None if h0 is None else h0[i : i + MAX_BATCH_PER_LAUNCH], impl=impl,
                    output_final_state=output_final_state)
        for i in range(0, x.shape[0], MAX_BATCH_PER_LAUNCH)
    ]
    h = torch.cat([h for h, _ in parts])
    return h, torch.cat([h_T for _, h_T in parts]) if output_final_state else None


def _check_inputs(x, a, h0, impl, output_final_state) -> None:
    if impl not in IMPLS:
        raise ValueError(f"impl: expected one of {IMPLS}, got {impl!r}")
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state: expected bool, got {type(output_final_state).__name__}")
    for name, t in (("x", x), ("a", a)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"x: expected a 3-d tensor (B, T, D), got shape {tuple(x.shape)}")
    if a.shape != x.shape:
        raise ValueError(f"a: expected the shape of x {tuple(x.shape)}, got {tuple(a.shape)}")
    if min(x.shape) < 1:
        raise ValueError(f"x: expected B, T, D >= 1, got shape {tuple(x.shape)}")
    allowed = _FLOAT_DTYPES
    if impl == "reference" or (impl == "auto" and not x.is_cuda):
        allowed = allowed + (torch.float64,)
    if x.dtype not in allowed:
        raise TypeError(f"x: expected dtype in {[str(d) for d in allowed]} for impl={impl!r}, got {x.dtype}")
    if a.dtype != x.dtype:
        raise TypeError(f"a: expected x's dtype {x.dtype}, got {a.dtype}")
    if a.device != x.device:
        raise ValueError(f"a: expected x's device {x.device}, got {a.device}")
    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"h0: expected a torch.Tensor or None, got {type(h0).__name__}")
        B, _, D = x.shape
        if tuple(h0.shape) != (B, D):
            raise ValueError(f"h0: expected shape (B, D) = {(B, D)}, got {tuple(h0.shape)}")
        if h0.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"h0: expected {x.dtype} (x's dtype) or torch.float32, got {h0.dtype}")
        if h0.device != x.device:
            raise ValueError(f"h0: expected x's device {x.device}, got {h0.device}")
    if impl in ("triton", "sequential") and not x.is_cuda and not triton_interpreter_on():
        raise ValueError(
            f"impl={impl!r}: expected CUDA tensors, got x on {x.device}. On the CPU use impl='auto' or "
            "impl='reference', or set TRITON_INTERPRET=1 before importing triton to run the kernels interpreted."
        )
