"""Linear recurrence scans, h_t = a_t ⊙ h_{t-1} + x_t, with fused backward passes.

Two public entries, each validating its inputs and dispatching on `impl=`: `linear_scan`, the plain recurrence, and
`gated_linear_scan`, the gated recurrence of HGRN-style models with its gate computed inside the scan.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ._env import triton_interpreter_on
from .doubling_scan import linear_scan_doubling
from .gate import Gate, gate_pairs
from .reference import linear_scan_reference

__all__ = ["linear_scan", "gated_linear_scan", "IMPLS", "IMPL_ALIASES", "SCAN_IMPLS"]

IMPLS = {
    "auto": "'associative' on CUDA, 'doubling' elsewhere",
    "associative": "Triton chunked associative scan, with single-pass look-back passes where B·D is small or fills "
                   "the GPU unevenly (CUDA, or the CPU under TRITON_INTERPRET=1)",
    "sequential": "Triton loop over t, one program per channel block (CUDA, or TRITON_INTERPRET=1)",
    "doubling": "PyTorch Hillis-Steele doubling scan: log2(T) vectorised steps (any device; the CPU's default)",
    "reference": "PyTorch loop over t in float32, the oracle every test compares against (any device)",
}
"""Every implementation `linear_scan(impl=...)` runs, with what it is."""
IMPL_ALIASES = {"triton": "associative", "torch": "doubling"}
"""Earlier names, still accepted."""
SCAN_IMPLS = (*IMPLS, *IMPL_ALIASES)
"""Every accepted value of `impl`: model.scan's choices."""
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
        x: (B, T, D) inputs. float32, bfloat16 or float16 (also float64 for "doubling" and "reference").
        a: (B, T, D) gates, same dtype and device as x. Usually in [0, 1]; any values are computed faithfully.
        h0: (B, D) initial state, or None for zeros. x's dtype or float32.
        impl: one of IMPLS (or an alias in IMPL_ALIASES):
              "associative" Triton chunked associative scan, the default on CUDA. Where B·D is too small to fill
                            the GPU, or fills its SMs unevenly at long T, each pass is instead one pass over tall
                            tiles chained by a decoupled look-back (Merrill & Garland 2016);
              "sequential"  Triton loop over t, one program per channel block;
              "doubling"    pure-PyTorch Hillis-Steele doubling scan, the default on the CPU;
              "reference"   plain PyTorch loop, the oracle, for debugging;
              "auto"        "associative" on CUDA, "doubling" elsewhere.
        output_final_state: also return h_T.

    Returns:
        (h, h_T): h is (B, T, D) in x's dtype; h_T is (B, D) float32 (float64 for float64 inputs) when
        output_final_state, else None.
        Gradients flow to x, a, h0 and through h_T.

    Every implementation accumulates in float32. Every one is bitwise reproducible from run to run except
    the look-back passes of "associative" (long T, small or uneven B·D), whose order of combination depends on
    timing; with torch.use_deterministic_algorithms(True) they give way to the chunked passes. Strided
    inputs (a D-slice, a transposed view) are read through their strides by the Triton kernels without a
    copy; outputs are contiguous. The Triton impls run on CPU tensors only under the Triton interpreter
    (TRITON_INTERPRET=1 before importing triton).
    """
    impl = resolve_impl(impl, getattr(x, "device", None))
    _check_inputs(x, a, h0, impl, output_final_state)
    if impl == "reference":
        return linear_scan_reference(x, a, h0, output_final_state)
    if impl == "doubling":
        return linear_scan_doubling(x, a, h0, output_final_state)
    if x.shape[0] > MAX_BATCH_PER_LAUNCH:
        return _in_batch_slices(functools.partial(linear_scan, impl=impl, output_final_state=output_final_state),
                                x, a, h0, output_final_state=output_final_state)
    if impl == "associative":
        from .function import linear_scan_triton as scan
    else:
        from .sequential_scan import linear_scan_sequential as scan
    with _on_device_of(x):
        return scan(x, a, h0, output_final_state)


def _on_device_of(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Triton launches on the current CUDA device: make it t's for the forward (autograd runs a backward on its
    tensors' device itself, and compiled code guards its device). Nothing where it already is, or on the CPU."""
    if not t.is_cuda or torch.compiler.is_compiling() or t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def _in_batch_slices(scan, *batched: torch.Tensor | None, output_final_state: bool):
    """scan(*slices) over slices of at most MAX_BATCH_PER_LAUNCH sequences of each batched tensor (None stays None),
    each returning (h, h_T | None) -> (h, h_T | None) concatenated along B."""
    n = MAX_BATCH_PER_LAUNCH
    parts = [scan(*(None if t is None else t[i : i + n] for t in batched)) for i in range(0, batched[0].shape[0], n)]
    h = torch.cat([h for h, _ in parts])
    return h, torch.cat([h_T for _, h_T in parts]) if output_final_state else None


def resolve_impl(impl: str, device: torch.device) -> str:
    """An accepted `impl` (see SCAN_IMPLS) -> the implementation that runs on `device`, one of IMPLS minus "auto"."""
    if impl not in SCAN_IMPLS:
        raise ValueError(f"impl: expected one of {list(SCAN_IMPLS)}, got {impl!r}")
    impl = IMPL_ALIASES.get(impl, impl)
    if impl == "auto":
        return "associative" if getattr(device, "type", None) == "cuda" else "doubling"
    return impl


def _check_inputs(x, a, h0, impl, output_final_state, names=("x", "a")) -> None:
    """The checks of linear_scan's arguments (of gated_linear_scan's v and f: `names`)."""
    xn, an = names
    if not isinstance(output_final_state, bool):
        raise TypeError(f"output_final_state: expected bool, got {type(output_final_state).__name__}")
    for name, t in ((xn, x), (an, a)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{xn}: expected a 3-d tensor (B, T, D), got shape {tuple(x.shape)}")
    if a.shape != x.shape:
        raise ValueError(f"{an}: expected the shape of {xn} {tuple(x.shape)}, got {tuple(a.shape)}")
    if min(x.shape) < 1:
        raise ValueError(f"{xn}: expected B, T, D >= 1, got shape {tuple(x.shape)}")
    allowed = _FLOAT_DTYPES
    if impl in ("reference", "doubling"):
        allowed = allowed + (torch.float64,)
    if x.dtype not in allowed:
        raise TypeError(f"{xn}: expected dtype in {[str(d) for d in allowed]} for impl={impl!r}, got {x.dtype}")
    if a.dtype != x.dtype:
        raise TypeError(f"{an}: expected {xn}'s dtype {x.dtype}, got {a.dtype}")
    if a.device != x.device:
        raise ValueError(f"{an}: expected {xn}'s device {x.device}, got {a.device}")
    if h0 is not None:
        if not isinstance(h0, torch.Tensor):
            raise TypeError(f"h0: expected a torch.Tensor or None, got {type(h0).__name__}")
        B, _, D = x.shape
        if tuple(h0.shape) != (B, D):
            raise ValueError(f"h0: expected shape (B, D) = {(B, D)}, got {tuple(h0.shape)}")
        if h0.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"h0: expected {x.dtype} ({xn}'s dtype) or torch.float32, got {h0.dtype}")
        if h0.device != x.device:
            raise ValueError(f"h0: expected {xn}'s device {x.device}, got {h0.device}")
    if impl in ("associative", "sequential") and not x.is_cuda and not triton_interpreter_on():
        raise ValueError(
            f"impl={impl!r}: expected CUDA tensors, got {xn} on {x.device}. On the CPU use impl='auto' or "
            "impl='reference', or set TRITON_INTERPRET=1 before importing triton to run the kernels interpreted."
        )


def gated_linear_scan(
    f: torch.Tensor,
    v: torch.Tensor,
    forget_bias: torch.Tensor,
    lower_bound: torch.Tensor | float,
    doc_start: torch.Tensor | None = None,
    h0: torch.Tensor | None = None,
    *,
    impl: str = "auto",
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All states of the gated linear recurrence (HGRN, Qin et al. 2023)

        a_t = lb + (1 - lb) σ(f_t + b),    h_t = a_t ⊙ h_{t-1} + (1 - a_t) ⊙ v_t,    h_0 = h0 (zeros if None),

    with a_t = 0 (and 1 - a_t = 1) where a document starts, and 1 - a_t computed as (1 - lb) σ(-(f_t + b)).

    Args:
        f: (B, T, D) the forget gate's pre-activation. float32, bfloat16 or float16 (also float64 for "doubling"
           and "reference"); any strides (a slice of a projection's output is read in place).
        v: (B, T, D) the input, f's dtype and device; any strides.
        forget_bias: (D,) b, any float dtype; its gradient is the sum of df over B and T.
        lower_bound: lb, a float or a (D,) or single-element tensor in [0, 1); no gradient flows to it.
        doc_start: (B, T) bool, True where a document starts, or None.
        h0: (B, D) initial state, or None for zeros. v's dtype or float32.
        impl: as in `linear_scan`. "associative" runs the fused Triton kernels: the gate is computed in registers
              from f as it is loaded, the state is float32, and the backward recomputes the gate instead of saving
              it (kernels/gated_scan.py). The other implementations compute the gate in PyTorch (float32) and run
              `linear_scan` with that impl.
        output_final_state: also return h_T.

    Returns:
        (h, h_T): h is (B, T, D) in v's dtype; h_T is (B, D) float32 (float64 for float64 inputs) or None.
        Gradients flow to f, v, forget_bias, h0 and through h_T.
    """
    impl = resolve_impl(impl, getattr(v, "device", None))
    _check_inputs(v, f, h0, impl, output_final_state, names=("v", "f"))
    B, T, D = v.shape
    if not isinstance(forget_bias, torch.Tensor):
        raise TypeError(f"forget_bias: expected a torch.Tensor, got {type(forget_bias).__name__}")
    if tuple(forget_bias.shape) != (D,) or not forget_bias.is_floating_point() or forget_bias.device != v.device:
        raise ValueError(f"forget_bias: expected a floating-point (D,) = ({D},) tensor on {v.device}, got "
                         f"{forget_bias.dtype} {tuple(forget_bias.shape)} on {forget_bias.device}")
    if not isinstance(lower_bound, torch.Tensor):
        if not isinstance(lower_bound, (int, float)) or isinstance(lower_bound, bool) or not 0 <= lower_bound < 1:
            raise ValueError(f"lower_bound: expected a number in [0, 1) or a tensor, got {lower_bound!r}")
        lower_bound = torch.full((1,), float(lower_bound), device=v.device)
    if lower_bound.numel() not in (1, D) or lower_bound.dim() > 1 or lower_bound.device != v.device:
        raise ValueError(f"lower_bound: expected a (D,) = ({D},) or single-element tensor on {v.device}, got shape "
                         f"{tuple(lower_bound.shape)} on {lower_bound.device}")
    if lower_bound.requires_grad:
        raise ValueError("lower_bound: expected a tensor that does not require grad (no gradient flows to it); "
                         "pass lower_bound.detach()")
    lower_bound = lower_bound.reshape(-1)
    if doc_start is not None:
        if not isinstance(doc_start, torch.Tensor) or doc_start.dtype != torch.bool:
            got = doc_start.dtype if isinstance(doc_start, torch.Tensor) else type(doc_start).__name__
            raise TypeError(f"doc_start: expected a torch.bool tensor or None, got {got}")
        if tuple(doc_start.shape) != (B, T) or doc_start.device != v.device:
            raise ValueError(f"doc_start: expected shape (B, T) = {(B, T)} on {v.device}, got "
                             f"{tuple(doc_start.shape)} on {doc_start.device}")
    if impl == "associative":
        if B > MAX_BATCH_PER_LAUNCH:
            def scan(f, v, doc_start, h0):
                return gated_linear_scan(f, v, forget_bias, lower_bound, doc_start, h0, impl=impl,
                                         output_final_state=output_final_state)

            return _in_batch_slices(scan, f, v, doc_start, h0, output_final_state=output_final_state)
        from .function import gated_scan_triton

        with _on_device_of(v):
            return gated_scan_triton(f, v, forget_bias, lower_bound, doc_start, h0, output_final_state)
    a, x = gate_pairs(f, v, Gate(forget_bias, lower_bound, doc_start))
    h, h_T = linear_scan(x, a, None if h0 is None else h0.to(x.dtype), impl=impl,
                         output_final_state=output_final_state)
    return h.to(v.dtype), h_T
