"""Cases drawn at random, fresh each run (the seed is in the report): the path, dtype, shape, the layout of every
input, the optional states, the gate's parameters. The fixed cases elsewhere vary one property at a time; a user's
call mixes them, and a mix is where a strided forget bias on the fused path went wrong once, unseen by them."""

from __future__ import annotations

import random

import pytest
import torch

from kernels import dispatch, gated_linear_scan, linear_scan
from kernels.reference import linear_scan_reference

from .conftest import DEVICE
from .scan_inputs import force_path, make_inputs, reference_in_dtype
from .test_gated_scan import assert_close as assert_gated_close
from .test_gated_scan import oracle as gated_oracle
from .test_scan import _interpreted, assert_close_to_oracle

LAYOUTS = ["contiguous", "d-slice", "transposed", "batch-strided"]
PATHS = ["one-chunk", "lookback", "chunked", "sequential"]
CASES = 8


def laid_out(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of t (B, T, D), or (B, D) for the first two layouts, as a view of that layout: a D-slice of a wider
    tensor, a (B, D, T) tensor seen as (B, T, D), every other row of a batch twice as large."""
    if layout == "d-slice":
        wide = torch.zeros(*t.shape[:-1], 3 * t.shape[-1], dtype=t.dtype, device=t.device)
        wide[..., 1::3] = t
        return wide[..., 1::3]
    if layout == "transposed" and t.dim() == 3:
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if layout == "batch-strided":
        wide = torch.zeros(2 * t.shape[0], *t.shape[1:], dtype=t.dtype, device=t.device)
        wide[::2] = t
        return wide[::2]
    return t


def grads(scan, inputs: dict, dy, dh_T, output_final_state):
    """[h, h_T, and the gradient of each input that is a float tensor] for inputs passed as laid out."""
    leaves = {k: t.detach().requires_grad_() if isinstance(t, torch.Tensor) and t.is_floating_point() and
              k != "lower_bound" else t for k, t in inputs.items()}
    h, h_T = scan(**leaves, output_final_state=output_final_state)
    loss = (h.float() * dy.float()).sum() + ((h_T * dh_T).sum() if output_final_state else 0)
    wrt = [t for t in leaves.values() if isinstance(t, torch.Tensor) and t.requires_grad]
    return [h, h_T if output_final_state else None, *torch.autograd.grad(loss, wrt)]


@pytest.mark.parametrize("case", range(CASES))
def test_a_random_case_matches_the_reference(case, gen, monkeypatch):
    rng = random.Random(gen.initial_seed() * CASES + case)
    gated, path = rng.random() < 0.5, rng.choice(PATHS)
    if path != "sequential":
        force_path(path, monkeypatch)
    impl = "sequential" if path == "sequential" else "associative"
    dtype = rng.choice([torch.float32, torch.bfloat16, torch.float16])
    B, T, D = rng.randint(1, 3), rng.choice([rng.randint(1, 12), rng.randint(13, 70)]), rng.randint(1, 40)
    with_h0, output_final_state = rng.random() < 0.6, rng.random() < 0.6
    x, a, h0, dy, dh_T = make_inputs(B, T, D, dtype, gen, DEVICE, with_h0=with_h0,
                                     h0_dtype=rng.choice([torch.float32, dtype]))
    layout = {name: rng.choice(LAYOUTS) for name in ("x", "a", "h0", "dy", "bias", "lower_bound")}
    context = f"gated={gated} {path} {dtype} {(B, T, D)} h0={with_h0} h_T={output_final_state} {layout}"
    dy = laid_out(dy, layout["dy"])
    h0 = laid_out(h0, layout["h0"]) if h0 is not None else None
    try:
        if not gated:
            inputs = dict(x=laid_out(x, layout["x"]), a=laid_out(a, layout["a"]), h0=h0)
            out = grads(lambda **kw: linear_scan(**kw, impl=impl), inputs, dy, dh_T, output_final_state)
            out += [None] * (5 - len(out))  # no dh0 without h0
            ref64 = grads(linear_scan_reference, {k: t.double() if t is not None else None for k, t in inputs.items()},
                          dy.double(), dh_T.double(), output_final_state)
            ref64 += [None] * (5 - len(ref64))
            ref_d = reference_in_dtype(*inputs.values(), dy, dh_T, output_final_state, _interpreted(impl))
            assert_close_to_oracle(out, ref_d, ref64, dtype, context, _interpreted(impl))
        else:
            f = 2 * x  # pre-activations from near 0 to near 1 gates
            bias = torch.randn(D, generator=gen).to(DEVICE)
            lb = (0.9 * torch.rand(D, generator=gen)).to(DEVICE) if rng.random() < 0.7 else rng.random() * 0.9
            doc = (torch.rand(B, T, generator=gen) < 0.1).to(DEVICE) if rng.random() < 0.7 else None
            inputs = dict(f=laid_out(f, layout["a"]), v=laid_out(a - 0.5, layout["x"]),
                          forget_bias=bias,
                          lower_bound=lb, doc_start=doc, h0=h0)
            if layout["bias"] in ("d-slice", "batch-strided"):  # every other element of a longer tensor
                inputs["forget_bias"] = torch.stack([bias, torch.zeros_like(bias)], dim=1).flatten()[::2]
            out = grads(lambda **kw: gated_linear_scan(**kw, impl=impl), inputs, dy, dh_T, output_final_state)
            out += [None] * (6 - len(out))
            lb_t = lb if isinstance(lb, torch.Tensor) else torch.full((D,), lb, device=DEVICE)
            ref = gated_oracle(inputs["f"], inputs["v"], inputs["forget_bias"], lb_t, doc, h0, dy, dh_T,
                               output_final_state)
            assert_gated_close([out[0], out[1], out[2], out[3], out[4], out[5]], ref, dtype, context)
    finally:
        dispatch.plan.cache_clear()
