"""Every scan implementation against the float64 reference: outputs, final state and every gradient.

On a CPU the Triton kernels run under the interpreter (tests/conftest.py); on a GPU the same tests run
on CUDA. Shapes are small and odd on purpose: T=1, T one past a tile, T a whole number of tiles, D=1, odd D, B=1.
"""

from __future__ import annotations

import functools

import pytest
import torch

from kernels import IMPL_ALIASES, linear_scan, triton_interpreter_on
from kernels import dispatch
from kernels.dispatch import chunk_len, tile_config
from kernels.autograd import apply_scan
from kernels.function import linear_scan_triton
from kernels.lookback_scan import lookback_scan_bwd, lookback_scan_fwd
from kernels.reference import linear_scan_reference

from .conftest import DEVICE
from .scan_inputs import make_inputs, oracle, outputs_and_grads, reference_in_dtype, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# fp32: relative error (‖out − ref‖ / max(‖ref‖, 1)) within `rel` of a float64 loop. The 1 (inputs are O(1))
# keeps a cancelling sum honest: at (1, 1, 1), h = a h0 + x can be 4e-4 from terms of 0.4, whose fp32 rounding
# alone is then 1e-4 relative (seen once in CI).
# bf16/fp16: within `factor` × the error of the reference loop rounded once to that dtype, plus `floor`
# = half an ulp at 1.0 (tiny shapes have few elements, so their norm-wise errors are noisy).
# Under the interpreter fp32 -> bf16 truncates (scan_inputs.py): then da = dh ⊙ h_{t-1} carries two
# truncations of the same sign (h stored, da stored), which add up instead of averaging out: factor 3.
TOLERANCE = {
    torch.float32: dict(rel=1e-5),
    torch.bfloat16: dict(factor=2.0, interpreted_factor=3.0, floor=2.0**-9),
    torch.float16: dict(factor=2.0, floor=2.0**-12),
}
NAMES = ["h", "h_T", "dx", "da", "dh0"]
BLOCK_T = tile_config(torch.bfloat16)["BLOCK_T"]
SHAPES = [  # (B, T, D)
    (1, 1, 1),
    (2, 3, 5),
    (1, 63, 8),
    (2, BLOCK_T + 1, 3),
    (1, 3 * BLOCK_T + 5, 9),
    (2, 4 * BLOCK_T, 7),  # whole tiles only: the forward's loop runs every tile (EVEN_T)
    (1, 2 * BLOCK_T, 16),  # and whole channel blocks too on a CPU (EVEN_T and EVEN_D)
]


def linear_scan_lookback(x, a, h0=None, output_final_state=False):
    """Both passes of the decoupled look-back scan (kernels/lookback_scan.py), with autograd, whatever the shape."""
    return apply_scan(x, a, h0, output_final_state, lookback_scan_fwd, lookback_scan_bwd)


def _impl(name):
    if name == "associative-chunked":  # force the T-parallel path (chunks of 16 rows) at a small size
        return lambda x, a, h0, fs: linear_scan_triton(x, a, h0, fs, chunk_t=16)
    if name == "associative-chunked-2tiles":  # chunks of two tiles: whole (pipelined) tiles inside chunks too
        return lambda x, a, h0, fs: linear_scan_triton(x, a, h0, fs, chunk_t=2 * BLOCK_T)
    if name == "lookback":  # the decoupled look-back scan, both passes (kernels/lookback_scan.py)
        return linear_scan_lookback
    return functools.partial(_public, impl=name)


def _public(x, a, h0, fs, impl):
    return linear_scan(x, a, h0, impl=impl, output_final_state=fs)


IMPLS = ["associative", "sequential", "doubling", "auto", "associative-chunked", "associative-chunked-2tiles",
         "lookback"]


def _interpreted(impl: str) -> bool:
    return DEVICE == "cpu" and impl not in ("auto", "doubling") and triton_interpreter_on()


def assert_close_to_oracle(impl_out, ref_dtype_out, ref64, dtype, context="", interpreted=False):
    tol = TOLERANCE[dtype]
    factor = tol.get("interpreted_factor", tol.get("factor")) if interpreted else tol.get("factor")
    for name, out, ref_d, truth in zip(NAMES, impl_out, ref_dtype_out, ref64):
        if truth is None:
            assert out is None, f"{name}: expected None"
            continue
        assert out.shape == truth.shape, f"{name}: shape {tuple(out.shape)} != {tuple(truth.shape)}"
        if "rel" in tol:
            err, bound = rel_err(out, truth, scale=1.0), tol["rel"]
        else:
            err, bound = rel_err(out, truth), factor * rel_err(ref_d, truth) + tol["floor"]
        assert err <= bound, f"{name} ({context}): relative error {err:.3e} > {bound:.3e}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(impl, dtype, shape, gen):
    x, a, h0, dy, dh_T = make_inputs(*shape, dtype, gen, DEVICE)
    out = outputs_and_grads(_impl(impl), x, a, h0, dy, dh_T)
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, _interpreted(impl))
    ref64 = oracle(x, a, h0, dy, dh_T)
    assert_close_to_oracle(out, ref_d, ref64, dtype, f"{impl} {shape} {dtype}", _interpreted(impl))
    assert out[0].dtype == dtype and out[1].dtype == torch.float32


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("with_h0, h0_dtype", [(False, None), (True, torch.float32), (True, torch.bfloat16)],
                         ids=["no-h0", "h0-fp32", "h0-bf16"])
@pytest.mark.parametrize("output_final_state", [False, True])
@pytest.mark.parametrize("T", [BLOCK_T + 7, 2 * BLOCK_T], ids=["ragged", "whole-tiles"])
def test_optional_state(impl, with_h0, output_final_state, h0_dtype, T, gen):
    """h0 absent or present (fp32, or x's dtype), h_T returned or not; bf16 inputs, T ragged or whole tiles (the
    kernels' EVEN_T paths, whose masks at the ends of T differ)."""
    dtype = torch.bfloat16
    x, a, h0, dy, dh_T = make_inputs(2, T, 5, dtype, gen, DEVICE, with_h0=with_h0, h0_dtype=h0_dtype)
    out = outputs_and_grads(_impl(impl), x, a, h0, dy, dh_T, output_final_state)
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, output_final_state, _interpreted(impl))
    ref64 = oracle(x, a, h0, dy, dh_T, output_final_state)
    assert_close_to_oracle(out, ref_d, ref64, dtype, impl, _interpreted(impl))
    if with_h0:
        assert out[4].dtype == h0_dtype


@pytest.mark.parametrize("impl", IMPLS)
def test_strided_views(impl, gen):
    """A D-slice of a wider tensor, a (T, B, D) tensor seen as (B, T, D), and a non-contiguous dh."""
    B, T, D = 2, 37, 5
    x_wide = torch.randn(B, T, D + 3, generator=gen).to(DEVICE)
    x = x_wide[:, :, 1 : 1 + D]
    a = torch.rand(T, B, D, generator=gen).to(DEVICE).transpose(0, 1)
    h0 = torch.randn(D, B, generator=gen).to(DEVICE).t()
    dy = torch.randn(T, B, D, generator=gen).to(DEVICE).transpose(0, 1)
    dh_T = torch.randn(D, B, generator=gen).to(DEVICE).t()
    leaves = [t.detach().requires_grad_() for t in (x, a, h0)]  # views: the strides stay
    assert not any(t.is_contiguous() for t in (*leaves, dy))
    h, h_T = _impl(impl)(*leaves, True)
    grads = torch.autograd.grad((h, h_T), leaves, grad_outputs=(dy, dh_T))
    ref64 = oracle(x, a, h0, dy, dh_T)
    for name, out, truth in zip(NAMES, [h, h_T, *grads], ref64):
        assert rel_err(out, truth, scale=1.0) <= 1e-5, name


def test_the_harness_passes_views_as_they_are(gen):
    """outputs_and_grads gives the scan the caller's layouts: the strided cases (here and at GPU sizes) test the
    kernels' strided reads only if the leaves keep them."""
    x, a, h0, dy, dh_T = make_inputs(4, 5, 9, torch.float32, gen, DEVICE)
    views = (x[::2, :, ::3], a[1::2, :, 1::3], h0[::2, ::3])  # batch-strided D-slices: (2, 5, 3), (2, 3)
    seen = []

    def scan(x, a, h0, fs):
        seen.extend(t.stride() for t in (x, a, h0))
        return linear_scan_reference(x, a, h0, fs)

    outputs_and_grads(scan, *views, dy[::2, :, ::3], dh_T[::2, ::3])
    assert seen == [t.stride() for t in views]


@pytest.mark.parametrize("impl", ["associative", "sequential"])
@pytest.mark.parametrize("with_h0, output_final_state", [(True, True), (False, False)])
def test_batches_above_the_grid_limit_run_in_slices(impl, with_h0, output_final_state, monkeypatch, gen):
    """CUDA grids hold at most 65535 programs along y and z, where the kernels put B: a larger batch runs in
    slices. The limit is lowered to 2 here so that B = 5 takes three slices (the last one ragged)."""
    import kernels

    monkeypatch.setattr(kernels, "MAX_BATCH_PER_LAUNCH", 2)
    x, a, h0, dy, dh_T = make_inputs(5, BLOCK_T + 3, 7, torch.float32, gen, DEVICE, with_h0=with_h0)
    out = outputs_and_grads(_impl(impl), x, a, h0, dy, dh_T, output_final_state)
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, output_final_state, _interpreted(impl))
    ref64 = oracle(x, a, h0, dy, dh_T, output_final_state)
    assert_close_to_oracle(out, ref_d, ref64, torch.float32, f"{impl} in slices", _interpreted(impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_inputs_propagate_like_the_reference(impl, gen):
    B, T, D = 1, 40, 4
    x, a, h0, _, _ = make_inputs(B, T, D, torch.float32, gen, DEVICE)
    x[0, 5, 1] = float("nan")
    x[0, 9, 2] = float("inf")
    h, h_T = _impl(impl)(x, a, h0, True)
    h_ref, h_T_ref = linear_scan_reference(x, a, h0, True)
    assert torch.equal(torch.isfinite(h), torch.isfinite(h_ref))
    assert torch.equal(torch.isnan(h), torch.isnan(h_ref))
    assert torch.equal(torch.isfinite(h_T), torch.isfinite(h_T_ref))
    finite = torch.isfinite(h_ref)
    torch.testing.assert_close(h[finite], h_ref[finite], rtol=1e-5, atol=1e-5)


def test_t_parallel_path_is_chosen_by_shape():
    sms, block_d = 132, 64
    assert chunk_len(1, 131072, 512, block_d, sms) < 131072  # 8 channel tiles cannot fill 132 SMs
    assert chunk_len(8, 2048, 2048, block_d, sms) == 2048  # 256 programs: one chunk each
    assert chunk_len(1, 300, 512, block_d, sms) == 300  # too short to split


def test_one_chunk_fill_counts_the_busiest_sm():
    """The look-back replaces one chunk per program where those programs fill the SMs unevenly."""
    assert dispatch.one_chunk_fill(4, 5120, 64, 132) == pytest.approx(320 / 396)  # 56 SMs with 3 programs, 76 with 2
    assert dispatch.one_chunk_fill(8, 2048, 64, 132) == pytest.approx(256 / 264)
    assert dispatch.one_chunk_fill(1, 8192, 64, 128) == 1.0


@pytest.mark.parametrize("regime", ["chunked", "uneven"])
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_look_back_passes_where_faster_unless_deterministic(regime, deterministic, monkeypatch, gen):
    """Where T would be cut into chunks, or one chunk per program would fill the SMs unevenly, the forward and
    the backward are each lookback_scan's single pass, or under torch's deterministic algorithms the chunked
    path. Both match the oracle, on D-slices (strided reads) spanning several look-back tiles and channel
    blocks, each with a partial last."""
    import kernels.function as function

    if regime == "chunked":  # small B · D
        monkeypatch.setattr(dispatch, "chunk_len", lambda B, T, D, block_d, sms: 16)
    else:  # 4 one-chunk programs (2 batch rows × 2 channel blocks) on 3 SMs: fill 4 / 6
        monkeypatch.setattr(dispatch, "num_sms", lambda device: 3)
        monkeypatch.setattr(dispatch, "LOOKBACK_MIN_T", 16)
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: deterministic)
    dispatch.plan.cache_clear()
    calls = []

    def counted(launcher):
        def launch(first, *args, **kwargs):
            calls.append((launcher.__name__, first.stride()))
            return launcher(first, *args, **kwargs)

        return launch

    for name in ("lookback_scan_fwd", "lookback_scan_bwd"):
        monkeypatch.setattr(function, name, counted(getattr(function, name)))
    tile = dispatch.lookback_config(torch.float32)
    B, T, D = 2, 3 * dispatch.lookback_rows(tile) + 5, tile["BLOCK_D"] + 3
    x, a, h0, dy, dh_T = make_inputs(B, T, D + 2, torch.float32, gen, DEVICE)
    x, a, h0, dy, dh_T = (t[..., 1 : 1 + D] for t in (x, a, h0, dy, dh_T))
    leaves = [t.detach().requires_grad_() for t in (x, a, h0)]  # views: the strides stay
    h, h_T = linear_scan(*leaves, impl="associative", output_final_state=True)
    grads = torch.autograd.grad((h, h_T), leaves, grad_outputs=(dy, dh_T))
    dispatch.plan.cache_clear()  # the monkeypatched rules' plans must not outlive this test
    for name, out, truth in zip(NAMES, [h, h_T, *grads], oracle(x, a, h0, dy, dh_T)):
        assert rel_err(out, truth, scale=1.0) <= 1e-5, name
    expected = [("lookback_scan_fwd", x.stride()), ("lookback_scan_bwd", a.stride())]  # the saved a: a view
    assert calls == ([] if deterministic else expected)


def test_reference_gradcheck():
    """The oracle's autograd through the fp32-accumulating loop is exact in float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, a, h0):
        h, h_T = linear_scan_reference(x, a, h0, output_final_state=True)
        return h, h_T

    assert torch.autograd.gradcheck(f, (x, a, h0))


def test_nan_poisoning_is_active():
    """The autouse fixture must make fresh buffers NaN, or the tests above could pass on stale memory."""
    assert torch.isnan(torch.empty(4)).all()


def test_triton_scan_compiles_without_graph_break(gen):
    """The Triton scan is a custom op: torch.compile(fullgraph=True) traces through it, grads included."""
    x, a, h0, dy, dh_T = make_inputs(2, 20, 5, torch.float32, gen, DEVICE)

    def loss(x, a, h0):
        h, h_T = linear_scan(x, a, h0, impl="associative", output_final_state=True)
        return (h * dy).sum() + (h_T * dh_T).sum()

    leaves = [t.clone().requires_grad_() for t in (x, a, h0)]
    eager = torch.autograd.grad(loss(*leaves), leaves)
    compiled = torch.autograd.grad(torch.compile(loss, backend="aot_eager", fullgraph=True)(*leaves), leaves)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e)


@pytest.mark.parametrize("deterministic", [False, True], ids=["planned", "deterministic"])
def test_the_custom_ops_fake_outputs_are_laid_out_as_the_real_ones(deterministic, gen):
    """torch.compile plans memory from the ops' fake implementations: with a transposed gate, f and h0 (views the
    scans accept), a fake's strides must still be the real outputs' (contiguous), or Inductor reads them wrongly.
    Deterministic algorithms take the gated chunked path, whose gradients PyTorch computes."""
    import kernels.function  # noqa: F401  registers torch.ops.lrnn

    B, T, D = 2, 20, 24
    x, a, dh = torch.randn(B, T, D, generator=gen), torch.rand(B, D, T, generator=gen).transpose(1, 2), None
    h0 = torch.randn(D, B, generator=gen).t()
    f, v, bias, lb = torch.randn(B, D, T, generator=gen).transpose(1, 2), torch.randn(B, T, D, generator=gen), \
        torch.randn(D, generator=gen), torch.full((1,), 0.1)
    x, a, h0, f, v, bias, lb = (t.to(DEVICE) for t in (x, a, h0, f, v, bias, lb))
    dh = torch.randn(B, T, D, generator=gen).to(DEVICE)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        h, _ = torch.ops.lrnn.triton_scan_fwd(x, a, h0, 0)
        hg, _ = torch.ops.lrnn.gated_scan_fwd(f, v, h0, bias, lb, None)
        for op, args in [(torch.ops.lrnn.triton_scan_fwd.default, (x, a, h0, 0)),
                         (torch.ops.lrnn.triton_scan_bwd.default, (a, h, h0, dh, None, 0)),
                         (torch.ops.lrnn.gated_scan_fwd.default, (f, v, h0, bias, lb, None)),
                         (torch.ops.lrnn.gated_scan_bwd.default, (f, v, hg, h0, dh, None, bias, lb, None))]:
            torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))
    finally:
        torch.use_deterministic_algorithms(previous)


def test_a_state_whose_channels_span_2_to_the_31_elements_is_copied_before_launch():
    """The kernels address a (B, D) h0 or dh_T's channels in 32 bits: a column of a (B, D, T) tensor with
    D · T >= 2**31 (here on the meta device: no memory) is made contiguous, a transposed or sliced one is not."""
    from kernels.associative_scan import fit_state

    column = torch.empty(2, 3, 2**30, device="meta")[:, :, 5]  # stride_d 2**30: channel 2 is 2**31 elements in
    assert column.stride() == (3 * 2**30, 2**30) and fit_state(column).stride() == (3, 1)
    transposed = torch.empty(3, 2, device="meta").t()
    assert fit_state(transposed) is transposed and fit_state(None) is None


def _good(B=2, T=5, D=3, dtype=torch.float32):
    return torch.randn(B, T, D, dtype=dtype), torch.rand(B, T, D, dtype=dtype)


@pytest.mark.parametrize(
    "make_args, error, match",
    [
        (lambda: (torch.randn(2, 5), torch.rand(2, 5)), ValueError, r"^x: expected a 3-d tensor"),
        (lambda: (torch.randn(2, 5, 3), torch.rand(2, 5, 4)), ValueError, r"^a: expected the shape of x"),
        (lambda: (torch.randn(2, 0, 3), torch.rand(2, 0, 3)), ValueError, r"^x: expected B, T, D >= 1"),
        (lambda: (torch.ones(2, 5, 3, dtype=torch.int64),) * 2, TypeError, r"^x: expected dtype in"),
        (lambda: (_good()[0], _good()[1].double()), TypeError, r"^a: expected x's dtype"),
        (lambda: (_good()[0].tolist(), _good()[1]), TypeError, r"^x: expected a torch.Tensor"),
        (lambda: (*_good(), torch.zeros(2, 4)), ValueError, r"^h0: expected shape \(B, D\) = \(2, 3\)"),
        (lambda: (*_good(), torch.zeros(2, 3, dtype=torch.float16)), TypeError, r"^h0: expected torch.float32"),
        (lambda: (_good()[0], _good()[1].to("meta")), ValueError, r"^a: expected x's device"),
        (lambda: (*_good(), torch.zeros(2, 3, device="meta")), ValueError, r"^h0: expected x's device"),
    ],
)
@pytest.mark.parametrize("impl", ["associative", "sequential", "reference", "auto"])
def test_bad_input_names_the_argument(make_args, error, match, impl):
    with pytest.raises(error, match=match):
        linear_scan(*make_args(), impl=impl)


def test_bad_options_name_the_argument():
    x, a = _good()
    with pytest.raises(ValueError, match=r"^impl: expected one of"):
        linear_scan(x, a, impl="cuda")
    with pytest.raises(TypeError, match=r"^output_final_state: expected bool"):
        linear_scan(x, a, output_final_state=1)


@pytest.mark.parametrize("chunk_t", [0, -5, 2.0, True])
def test_bad_chunk_t_names_the_argument(chunk_t):
    x, a = (t.to(DEVICE) for t in _good())
    with pytest.raises(ValueError, match=r"^chunk_t: expected None or an int >= 1"):
        linear_scan_triton(x, a, chunk_t=chunk_t)


@pytest.mark.parametrize("alias", sorted(IMPL_ALIASES))
def test_old_impl_names_still_work(alias, gen):
    x, a, h0, _, _ = make_inputs(2, 9, 3, torch.float32, gen, DEVICE)
    old = linear_scan(x, a, h0, impl=alias, output_final_state=True)
    new = linear_scan(x, a, h0, impl=IMPL_ALIASES[alias], output_final_state=True)
    assert all(torch.equal(o, n) for o, n in zip(old, new))


def test_tile_config_rejects_other_dtypes():
    with pytest.raises(TypeError, match=r"^dtype: expected torch.float32"):
        tile_config(torch.float64)


@pytest.mark.parametrize("spelling", ["1", "TRUE", "on", "Yes", "y", "0", "false", "off", "", " 1", "2", "no"])
def test_interpreter_setting_is_read_as_triton_reads_it(spelling, monkeypatch):
    getenv_bool = pytest.importorskip("triton._C.libtriton").getenv_bool  # Triton's own reader (C++)
    monkeypatch.setenv("TRITON_INTERPRET", spelling)
    assert triton_interpreter_on() == getenv_bool("TRITON_INTERPRET", False)


@pytest.mark.parametrize("off", ["0", "false", "off"])  # spelled as Triton reads them: all mean "compile"
@pytest.mark.parametrize("impl", ["associative", "sequential"])
def test_triton_on_cpu_without_the_interpreter_says_how_to_fix_it(impl, off, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", off)
    with pytest.raises(ValueError, match=r"impl='auto' or\s+impl='reference'.*TRITON_INTERPRET=1"):
        linear_scan(*_good(), impl=impl)


def test_return_is_always_a_pair():
    x, a = _good()
    for impl in IMPLS[:3]:
        out = linear_scan(x.to(DEVICE), a.to(DEVICE), impl=impl)
        assert isinstance(out, tuple) and len(out) == 2 and out[1] is None


@pytest.mark.parametrize("impl", ["associative", "sequential", "auto"])
def test_autograd_records_the_scan_only_where_a_gradient_can_flow(impl, gen):
    """Without inputs that require grad, or under no_grad, the forward runs without autograd.Function (its host
    time exceeds the kernels' at small shapes): same outputs, no graph. With them, the graph is there."""
    x, a, h0, _, _ = make_inputs(2, 5, 3, torch.float32, gen, DEVICE)
    plain = linear_scan(x, a, h0, impl=impl, output_final_state=True)
    assert all(t.grad_fn is None for t in plain)
    leaves = [t.detach().requires_grad_() for t in (x, a, h0)]
    recorded = linear_scan(*leaves, impl=impl, output_final_state=True)
    assert all(t.grad_fn is not None for t in recorded)
    with torch.no_grad():
        unrecorded = linear_scan(*leaves, impl=impl, output_final_state=True)
    assert all(t.grad_fn is None for t in unrecorded)
    for p, r, u in zip(plain, recorded, unrecorded):
        assert torch.equal(p, r) and torch.equal(p, u)


def _is_valid_tile(t: dict) -> bool:
    """Powers of two (tl.arange), and BLOCK_D = 32 lanes · VEC · num_warps (whole columns per thread) or half
    that (rows over two lanes), as the kernels' layout is built for (associative_scan._thread_columns)."""
    powers_of_two = all(v >= 1 and v & (v - 1) == 0 for v in (t["BLOCK_T"], t["BLOCK_D"], t["VEC"], t["num_warps"]))
    lanes_wide = 32 * t["VEC"] * t["num_warps"]
    return powers_of_two and t["BLOCK_D"] in (lanes_wide, lanes_wide // 2) and t["STAGES"] >= 1


def test_tile_table_and_tuning_candidates_are_valid_tiles():
    """Every GPU's entry in the committed tile table (written by kernels/benchmarks/tune.py) covers every dtype's
    element size with a valid tile, and so does every tile tune.py may write there; the fallback is an entry."""
    from kernels.benchmarks.tune import CANDIDATES, tile

    table = dispatch.tile_table()
    assert table["fallback"] in table["gpus"]
    for name, entry in table["gpus"].items():
        assert len(entry["capability"]) == 2 and entry["sms"] >= 1 and entry["measured"], name
        for dtype in DTYPES:
            for direction in ("forward", "backward"):
                assert _is_valid_tile(entry[str(dtype.itemsize)][direction]), (name, dtype, direction)
    for size, candidates in CANDIDATES.items():
        invalid = [c for c in candidates if not _is_valid_tile(tile(*c))]
        assert not invalid, f"element size {size}: {invalid}"
    assert not _is_valid_tile(tile(64, 16, 2, 3, 1))  # rows over four lanes: not a layout the kernels are built for


def test_each_gpu_takes_its_own_tiles_then_one_of_its_kind_then_the_fallback(monkeypatch):
    """A GPU named in tiles.json takes its entry; another with the same compute capability and SM count takes that
    one's; any other takes the fallback."""
    from types import SimpleNamespace

    table = {"gpus": {"A": {"capability": [9, 0], "sms": 132, "tag": "a"}, "B": {"capability": [8, 0], "sms": 108,
                                                                                   "tag": "b"}}, "fallback": "B"}
    monkeypatch.setattr(dispatch, "tile_table", lambda: table)
    dispatch.gpu_tiles.cache_clear()
    try:
        for name, major, sms, expected in (("A", 9, 132, "a"), ("A2", 9, 132, "a"), ("C", 7, 80, "b")):
            props = SimpleNamespace(name=name, major=major, minor=0, multi_processor_count=sms)
            monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device, props=props: props)
            dispatch.gpu_tiles.cache_clear()
            assert dispatch.gpu_tiles(torch.device("cuda", 0))["tag"] == expected, name
    finally:
        dispatch.gpu_tiles.cache_clear()


def test_plans_are_cached_per_shape_class():
    """The rules run once per (shape, dtype, device, strides, deterministic): an eager call then costs a lookup."""
    x = torch.zeros(2, 300, 64)
    first = dispatch.plan_for(False, x, x)
    hits = dispatch.plan.cache_info().hits
    assert dispatch.plan_for(False, x.clone(), x.clone()) == first
    assert dispatch.plan.cache_info().hits == hits + 1
