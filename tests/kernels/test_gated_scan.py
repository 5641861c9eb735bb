"""The gated recurrence against a float64 oracle (its gate and the reference loop in float64): every implementation,
each path of the fused Triton kernels, every gradient (df, dv, d forget_bias, dh0 and through h_T), odd shapes, the
model's strided slices, and bad input."""

from __future__ import annotations

import pytest
import torch

from kernels import dispatch, gated_linear_scan
from kernels.gate import Gate, gate_pairs
from kernels.reference import linear_scan_reference

from .conftest import DEVICE
from .scan_inputs import force_path, rel_err
from .test_scan import BLOCK_T, _interpreted

IMPLS = ["associative", "sequential", "doubling", "reference"]
SHAPES = [(1, 1, 1), (2, 3, 5), (2, BLOCK_T + 1, 3), (1, 3 * BLOCK_T + 5, 9), (2, 4 * BLOCK_T, 16)]
# relative error against float64 (scale 1: the values are O(1)); bf16/fp16 inputs are rounded before the oracle sees
# them, so what remains is the float32 state's and the stored outputs' rounding
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
NAMES = ["h", "h_T", "df", "dv", "dbias", "dh0"]


def make_gated_inputs(B, T, D, dtype, gen, device, with_h0=True, with_doc=True, strided=False):
    """f ~ N(0, 4) (gates from near 0 to near 1), v ~ N(0, 1), a per-channel lower bound in [0, 0.9) with exact 0s,
    ~10% document starts (at t = 0 too). strided: f and v are slices of one (B, T, 3D) projection, as in the model."""
    proj = torch.randn(B, T, 3 * D, generator=gen)
    proj[..., D : 2 * D] *= 2
    bias = torch.randn(D, generator=gen)
    lb = 0.9 * torch.rand(D, generator=gen)
    lb[::4] = 0.0
    doc = torch.rand(B, T, generator=gen) < 0.1 if with_doc else None
    if doc is not None:
        doc[0, 0] = True
    h0 = torch.randn(B, D, generator=gen) if with_h0 else None
    dy, dh_T = torch.randn(B, T, D, generator=gen), torch.randn(B, D, generator=gen)
    to = dict(device=device, dtype=dtype)
    proj = proj.to(**to)
    v, f = proj[..., :D], proj[..., D : 2 * D]  # views of the projection, as the model reads them
    if not strided:
        v, f = v.contiguous(), f.contiguous()
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return f, v, bias.to(device), lb.to(device), move(doc), move(h0), dy.to(**to), dh_T.to(device)


def gated_outputs_and_grads(fn, f, v, bias, lb, doc, h0, dy, dh_T, output_final_state=True):
    """[h, h_T, df, dv, dbias, dh0] (None where absent), seeded by (h * dy).sum() + (h_T * dh_T).sum()."""
    leaves = [t.detach().clone().requires_grad_() if t is not None else None for t in (f, v, bias, h0)]
    grad_of = None
    if not f.is_contiguous():  # keep the model's strided views: slice a fresh projection leaf
        D = f.shape[-1]
        proj = torch.cat([v.detach(), f.detach(), v.detach()], dim=-1).requires_grad_()
        leaves[0], leaves[1] = proj[..., D : 2 * D], proj[..., :D]
        grad_of = [proj, leaves[2], leaves[3]]
    h, h_T = fn(leaves[0], leaves[1], leaves[2], lb, doc, leaves[3], output_final_state)
    loss = (h.float() * dy.float()).sum() + ((h_T * dh_T).sum() if output_final_state else 0)
    if grad_of is None:
        inputs = [t for t in leaves if t is not None]
        grads = iter(torch.autograd.grad(loss, inputs))
        df, dv, dbias = next(grads), next(grads), next(grads)
        dh0 = next(grads) if h0 is not None else None
    else:
        inputs = [t for t in grad_of if t is not None]
        grads = torch.autograd.grad(loss, inputs)
        D = f.shape[-1]
        dproj, dbias = grads[0], grads[1]
        dv, df = dproj[..., :D], dproj[..., D : 2 * D]
        dh0 = grads[2] if h0 is not None else None
    return [h, h_T if output_final_state else None, df, dv, dbias, dh0]


def oracle(f, v, bias, lb, doc, h0, dy, dh_T, output_final_state=True, scan=linear_scan_reference):
    """The gate in float64 (gate_pairs) and the reference loop (or `scan`) in float64, on the same rounded inputs."""
    def fn(f, v, bias, lb, doc, h0, fs):
        a, x = gate_pairs(f, v, Gate(bias, lb, doc))
        return scan(x, a, h0, fs)

    f64 = [t.double() if t is not None else None for t in (f, v, bias)]
    return gated_outputs_and_grads(fn, *f64, lb.double(), doc, None if h0 is None else h0.double(), dy.double(),
                                   dh_T.double(), output_final_state)


def scan_with(impl):
    def fn(f, v, bias, lb, doc, h0, fs):
        return gated_linear_scan(f, v, bias, lb, doc, h0, impl=impl, output_final_state=fs)

    return fn


def assert_close(out, ref, dtype, context):
    for name, o, r in zip(NAMES, out, ref):
        if r is None:
            assert o is None, f"{name}: expected None ({context})"
            continue
        assert o.shape == r.shape, f"{name}: {tuple(o.shape)} != {tuple(r.shape)} ({context})"
        bound = TOLERANCE[dtype] if name not in ("h_T",) else TOLERANCE[torch.float32] * 10
        if name in ("dbias", "dh0") and dtype != torch.float32:
            bound = TOLERANCE[dtype]
        err = rel_err(o, r, scale=1.0)
        assert err <= bound, f"{name} ({context}): relative error {err:.3e} > {bound:.1e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_the_float64_oracle(impl, dtype, shape, gen):
    inputs = make_gated_inputs(*shape, dtype, gen, DEVICE)
    out = gated_outputs_and_grads(scan_with(impl), *inputs)
    assert out[0].dtype == dtype and out[1].dtype == torch.float32
    assert_close(out, oracle(*inputs), dtype, f"{impl} {shape} {dtype}")


@pytest.mark.parametrize("path", ["one-chunk", "lookback", "chunked"])
@pytest.mark.parametrize("with_h0, with_doc, output_final_state", [(True, True, True), (False, False, False),
                                                                   (False, True, True)])
@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "slices"])
def test_each_path_of_the_fused_kernels(path, with_h0, with_doc, output_final_state, strided, monkeypatch, gen):
    """The one-chunk and look-back kernels compute the gate themselves; the chunked path (deterministic algorithms)
    computes it in PyTorch around the plain chunked scan. Each is forced at a small size."""
    force_path(path, monkeypatch)
    try:
        tile = dispatch.lookback_config(torch.bfloat16)
        B, T, D = 2, 3 * dispatch.lookback_rows(tile) + 5, tile["BLOCK_D"] + 3
        inputs = make_gated_inputs(B, T, D, torch.bfloat16, gen, DEVICE, with_h0, with_doc, strided)
        assert dispatch.plan_for(False, inputs[1], inputs[0], gated=True).path == path
        out = gated_outputs_and_grads(scan_with("associative"), *inputs, output_final_state=output_final_state)
    finally:
        dispatch.plan.cache_clear()
    ref = oracle(*inputs, output_final_state=output_final_state)
    assert_close(out, ref, torch.bfloat16, f"{path} h0={with_h0} doc={with_doc} strided={strided}")


@pytest.mark.parametrize("path", ["one-chunk", "lookback"])
def test_a_strided_forget_bias_and_lower_bound(path, monkeypatch, gen):
    """forget_bias and lower_bound as every other element of a longer tensor: the fused kernels read them as they
    are laid out, and d forget_bias reaches the tensor it is a view of."""
    force_path(path, monkeypatch)
    try:
        tile = dispatch.lookback_config(torch.float32)
        B, T, D = 2, 2 * dispatch.lookback_rows(tile) + 3, tile["BLOCK_D"] + 3
        f, v, bias, lb, doc, h0, dy, _ = make_gated_inputs(B, T, D, torch.float32, gen, DEVICE)
        assert dispatch.plan_for(False, v, f, gated=True).path == path
        wide = torch.stack([bias, torch.randn(D, generator=gen).to(DEVICE)], dim=1).flatten().requires_grad_()
        wide_lb = torch.stack([lb, torch.rand(D, generator=gen).to(DEVICE)], dim=1).flatten()
        assert wide[::2].stride() == (2,) and torch.equal(wide[::2], bias)
        grads = {}
        for impl in ("associative", "reference"):
            h, _ = gated_linear_scan(f, v, wide[::2], wide_lb[::2], doc, h0, impl=impl)
            grads[impl] = (h, *torch.autograd.grad((h * dy).sum(), wide))
    finally:
        dispatch.plan.cache_clear()
    for name, out, ref in zip(("h", "d forget_bias"), grads["associative"], grads["reference"]):
        assert rel_err(out, ref, scale=1.0) <= TOLERANCE[torch.float32], name
    assert not grads["associative"][1][1::2].any()  # the elements between get no gradient


def test_a_document_start_resets_the_state(gen):
    """Where a document starts, h_t = v_t whatever came before (a_t = 0, 1 - a_t = 1), in every implementation."""
    B, T, D = 1, 40, 6
    f, v, bias, lb, _, h0, _, _ = make_gated_inputs(B, T, D, torch.float32, gen, DEVICE)
    doc = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    doc[0, [0, 17]] = True
    for impl in IMPLS:
        h, _ = gated_linear_scan(f, v, bias, lb, doc, h0, impl=impl)
        torch.testing.assert_close(h[0, [0, 17]], v[0, [0, 17]], rtol=0, atol=0)


def test_no_gradient_reaches_the_lower_bound_and_a_float_is_accepted(gen):
    f, v, bias, lb, doc, h0, _, _ = make_gated_inputs(2, 9, 4, torch.float32, gen, DEVICE)
    a, _ = gated_linear_scan(f, v, bias, 0.25, doc, h0, impl="associative")
    b, _ = gated_linear_scan(f, v, bias, torch.full((4,), 0.25, device=DEVICE), doc, h0, impl="associative")
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"^lower_bound: expected a tensor that does not require grad"):
        gated_linear_scan(f, v, bias, lb.clone().requires_grad_(), doc, h0)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(v=torch.zeros(2, 9)), ValueError, r"^v: expected a 3-d tensor"),
        (dict(f=torch.zeros(2, 9, 5)), ValueError, r"^f: expected the shape of v"),
        (dict(f=torch.zeros(2, 9, 4, dtype=torch.float64)), TypeError, r"^f: expected v's dtype"),
        (dict(forget_bias=torch.zeros(5)), ValueError, r"^forget_bias: expected a floating-point \(D,\)"),
        (dict(lower_bound=1.5), ValueError, r"^lower_bound: expected a number in \[0, 1\)"),
        (dict(lower_bound=torch.zeros(3)), ValueError, r"^lower_bound: expected a \(D,\)"),
        (dict(doc_start=torch.zeros(2, 9)), TypeError, r"^doc_start: expected a torch.bool tensor"),
        (dict(doc_start=torch.zeros(2, 8, dtype=torch.bool)), ValueError, r"^doc_start: expected shape \(B, T\)"),
        (dict(h0=torch.zeros(2, 5)), ValueError, r"^h0: expected shape \(B, D\)"),
        (dict(impl="cuda"), ValueError, r"^impl: expected one of"),
    ],
)
def test_bad_input_names_the_argument(change, error, match):
    args = dict(f=torch.zeros(2, 9, 4), v=torch.zeros(2, 9, 4), forget_bias=torch.zeros(4), lower_bound=0.5,
                doc_start=None, h0=None, impl="reference")
    args = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in (args | change).items()}
    impl = args.pop("impl")
    with pytest.raises(error, match=match):
        gated_linear_scan(**args, impl=impl)


def test_interpreted_shapes_run_every_kernel_path():
    """A guard on the suite itself: the shapes above span several tiles of the interpreter's look-back tile."""
    if _interpreted("associative"):
        tile = dispatch.lookback_config(torch.bfloat16)
        assert 3 * dispatch.lookback_rows(tile) + 5 > 2 * dispatch.lookback_rows(tile)


def test_gated_scan_compiles_without_graph_break(gen):
    """The fused gated scan is a custom op: torch.compile(fullgraph=True) traces through it, grads included."""
    f, v, bias, lb, doc, h0, dy, dh_T = make_gated_inputs(2, 20, 5, torch.float32, gen, DEVICE)

    def loss(f, v, bias, h0):
        h, h_T = gated_linear_scan(f, v, bias, lb, doc, h0, impl="associative", output_final_state=True)
        return (h * dy).sum() + (h_T * dh_T).sum()

    leaves = [t.clone().requires_grad_() for t in (f, v, bias, h0)]
    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*leaves), leaves)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)
