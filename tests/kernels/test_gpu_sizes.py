"""The scans at the sizes a GPU runs them, on every path the dispatcher chooses there: what the interpreter cannot
show (cross-program races, layouts that depend on strides, the grid's limits) shows here. Runs whenever CUDA is
present; skipped on a CPU.

Each case checks h, h_T and every gradient (dx, da, dh0, through h_T; gated: df, dv, d forget_bias) against a float64
oracle on the GPU, with inputs as a user passes them: D-slices (stride_d = 3), transposed views (stride_t = 1),
batch-strided views, a transposed h0 and a non-contiguous dh. The oracle is the doubling scan in float64 (an
algorithm of its own, tested against the reference loop on the CPU): the loop's T steps of autograd would take
minutes at these T.
"""

from __future__ import annotations

import pytest
import torch

from kernels import MAX_BATCH_PER_LAUNCH, dispatch, gated_linear_scan, linear_scan
from kernels.doubling_scan import linear_scan_doubling

from .scan_inputs import oracle, outputs_and_grads, reference_in_dtype, rel_err
from .test_gated_scan import assert_close as assert_gated_close
from .test_gated_scan import gated_outputs_and_grads, make_gated_inputs
from .test_gated_scan import oracle as gated_oracle
from .test_scan import _interpreted, assert_close_to_oracle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="the sizes a GPU runs: needs CUDA")
DEVICE = "cuda"


def view_inputs(B, T, D, dtype, layout, gen):
    """x, a (gates in [0, 1) with exact 0s and 1s), h0, dy, dh_T on CUDA, x, a and dy laid out as `layout` says."""
    def make(*shape, gate=False):
        t = torch.rand(*shape, generator=gen) if gate else torch.randn(*shape, generator=gen)
        if gate:
            u = torch.rand(*shape, generator=gen)
            t = torch.where(u < 0.02, 0.0, torch.where(u > 0.98, 1.0, t))
            t[..., ::3] = 1 - 1e-3 * t[..., ::3]  # long memory in every third channel
        return t.to(DEVICE, dtype)

    def laid_out(gate=False):
        if layout == "contiguous":
            return make(B, T, D, gate=gate)
        if layout == "d-slice":  # every third channel of a wider tensor
            return make(B, T, 3 * D, gate=gate)[..., 1::3]
        if layout == "transposed":  # a (B, D, T) tensor seen as (B, T, D): stride_t = 1
            return make(B, D, T, gate=gate).transpose(1, 2)
        if layout == "batch-strided":  # every other sequence of a batch twice as large
            return make(2 * B, T, D, gate=gate)[::2]
        raise ValueError(layout)

    x, a, dy = laid_out(), laid_out(gate=True), laid_out()
    h0 = torch.randn(D, B, generator=gen).to(DEVICE).t()  # transposed
    dh_T = torch.randn(B, D, generator=gen).to(DEVICE)
    return x, a, h0, dy, dh_T


PATH_SHAPES = {  # the path dispatch.py chooses on a GPU of 132 SMs (an H100 or H200), and a shape that takes it
    "one-chunk": (8, 2048, 2048),
    "lookback-small-BD": (1, 16384, 512),
    "lookback-uneven-fill": (4, 4096, 5120),  # 320 programs on 132 SMs
    "lookback-ragged": (2, 5000, 200),  # T and D not whole tiles
}


@pytest.mark.parametrize("layout", ["contiguous", "d-slice", "transposed", "batch-strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("path", PATH_SHAPES)
def test_every_path_and_view_at_real_sizes(path, dtype, layout, gen):
    B, T, D = PATH_SHAPES[path]
    if layout != "contiguous" and path == "lookback-uneven-fill":
        B, T, D = 4, 2048, 5120  # the oracle's float64 copies of three views stay within a few GB
    x, a, h0, dy, dh_T = view_inputs(B, T, D, dtype, layout, gen)
    expected = "one-chunk" if path == "one-chunk" else "lookback"
    if torch.cuda.get_device_properties(0).multi_processor_count == 132:
        assert dispatch.plan_for(False, x, a).path == expected
    out = outputs_and_grads(lambda *args: linear_scan(*args[:3], impl="associative", output_final_state=args[3]),
                            x, a, h0, dy, dh_T)
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, _interpreted("associative"), scan=linear_scan_doubling)
    ref64 = oracle(x, a, h0, dy, dh_T, scan=linear_scan_doubling)
    assert_close_to_oracle(out, ref_d, ref64, dtype, f"{path} {layout} {dtype}", _interpreted("associative"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_the_chunked_path_under_deterministic_algorithms(dtype, gen):
    """At (1, 16384, 512) the look-back would run; deterministic algorithms take the chunked passes, bit-stable."""
    x, a, h0, dy, dh_T = view_inputs(1, 16384, 512, dtype, "d-slice", gen)
    torch.use_deterministic_algorithms(True)
    try:
        assert dispatch.plan_for(False, x, a).path == "chunked"
        out = outputs_and_grads(lambda *args: linear_scan(*args[:3], impl="associative", output_final_state=args[3]),
                                x, a, h0, dy, dh_T)
        again = outputs_and_grads(lambda *args: linear_scan(*args[:3], impl="associative",
                                                            output_final_state=args[3]), x, a, h0, dy, dh_T)
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(o, p) for o, p in zip(out, again))
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, _interpreted("associative"), scan=linear_scan_doubling)
    ref64 = oracle(x, a, h0, dy, dh_T, scan=linear_scan_doubling)
    assert_close_to_oracle(out, ref_d, ref64, dtype, f"chunked {dtype}")



@pytest.mark.parametrize("shape, dtype", [((1, 131072, 512), torch.bfloat16), ((2, 5000, 200), torch.float32)],
                         ids=["long-T-bf16", "ragged-fp32"])
def test_the_look_back_agrees_with_the_chunked_passes_call_after_call(shape, dtype, gen):
    """A race between programs shows only at times: 200 look-back forwards and backwards, each against the chunked
    passes' result (deterministic algorithms), while a matmul on another stream competes for the SMs. The two
    paths combine in different orders, so they agree to rounding, and a wrong carry would be far off."""
    x, a, h0, dy, dh_T = view_inputs(*shape, dtype, "contiguous", gen)
    assert dispatch.plan_for(False, x, a).path == "lookback" and dispatch.plan_for(True, a, dy).path == "lookback"

    def run():
        return outputs_and_grads(lambda *args: linear_scan(*args[:3], impl="associative", output_final_state=args[3]),
                                 x, a, h0, dy, dh_T)

    torch.use_deterministic_algorithms(True)
    try:
        expected = run()
    finally:
        torch.use_deterministic_algorithms(False)
    side, busy = torch.cuda.Stream(), torch.randn(4096, 4096, device=DEVICE)
    tolerance = 1e-2 if dtype == torch.bfloat16 else 1e-4
    for i in range(200):
        with torch.cuda.stream(side):
            busy @ busy
        for name, out, ref in zip(("h", "h_T", "dx", "da", "dh0"), run(), expected):
            err = rel_err(out, ref)
            assert err < tolerance, f"call {i}: {name} is {err:.2e} from the chunked passes' (relative)"
    torch.cuda.synchronize()

@pytest.mark.parametrize("impl", ["associative", "sequential"])
def test_a_batch_past_the_grid_limit(impl, gen):
    """CUDA caps grid axes y and z at 65535: a larger batch runs in slices, every row right."""
    B, T, D = MAX_BATCH_PER_LAUNCH + 7, 3, 5
    x, a, h0, dy, dh_T = view_inputs(B, T, D, torch.float32, "contiguous", gen)
    out = outputs_and_grads(lambda *args: linear_scan(*args[:3], impl=impl, output_final_state=args[3]),
                            x, a, h0, dy, dh_T)
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, _interpreted("associative"), scan=linear_scan_doubling)
    ref64 = oracle(x, a, h0, dy, dh_T, scan=linear_scan_doubling)
    assert_close_to_oracle(out, ref_d, ref64, torch.float32, f"B={B} {impl}")


GATED_SHAPES = {  # the model's shapes: small.yaml's (8 × 2048, R = 368) and the 110M preset's
    "small": (8, 2048, 368),
    "medium-2048": (16, 2048, 768),
    "medium-8192": (4, 8192, 768),
    "one-chunk": (32, 2048, 768),  # 384 programs on 132 SMs: an even fill
}


@pytest.mark.parametrize("strided", [True, False], ids=["slices", "contiguous"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", GATED_SHAPES)
def test_gated_scan_at_the_models_sizes(shape, dtype, strided, gen):
    inputs = make_gated_inputs(*GATED_SHAPES[shape], dtype, gen, DEVICE, strided=strided)

    def fused(f, v, bias, lb, doc, h0, fs):
        return gated_linear_scan(f, v, bias, lb, doc, h0, impl="associative", output_final_state=fs)

    out = gated_outputs_and_grads(fused, *inputs)
    assert_gated_close(out, gated_oracle(*inputs, scan=linear_scan_doubling), dtype,
                       f"{shape} {dtype} strided={strided}")


def test_gated_scan_batch_past_the_grid_limit(gen):
    inputs = make_gated_inputs(MAX_BATCH_PER_LAUNCH + 3, 4, 6, torch.float32, gen, DEVICE)

    def fused(f, v, bias, lb, doc, h0, fs):
        return gated_linear_scan(f, v, bias, lb, doc, h0, impl="associative", output_final_state=fs)

    assert_gated_close(gated_outputs_and_grads(fused, *inputs), gated_oracle(*inputs, scan=linear_scan_doubling),
                       torch.float32, "big batch")


def test_dh0_of_a_transposed_gate_past_two_to_the_31_elements(gen, most_of_the_gpu):
    """A (B, D, T) gate tensor seen as (B, T, D) with D · T >= 2**31: channel d's first gate lies d · T elements in,
    past 32-bit offsets. dh0 = a_1 ⊙ dh_1 must read it there (dh_1 is dx's first row). About 30 GB."""
    B, T, D = 1, 2**21, 1024
    if torch.cuda.get_device_properties(0).total_memory < 48 * 2**30:
        pytest.skip("needs a GPU of 48 GB or more")
    x = torch.randn(B, T, D, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    a = torch.rand(B, D, T, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    h0 = torch.randn(B, D, device=DEVICE, requires_grad=True)
    assert dispatch.plan_for(True, a, x).path == "lookback"
    h, _ = linear_scan(x, a, h0, impl="associative")
    dx, dh0 = torch.autograd.grad(h, (x, h0), torch.randn_like(h))
    del h
    expected = a[:, 0].float() * dx[:, 0].float()
    assert torch.allclose(dh0, expected, rtol=1e-2, atol=1e-2), (dh0 - expected).abs().max().item()


@pytest.mark.parametrize("impl", ["associative", "sequential"])
def test_h0_whose_channels_span_two_to_the_31_elements(impl, gen, most_of_the_gpu):
    """h0 a column of a (B, D, T) tensor with D · T >= 2**31 (12 GB, uninitialised but for the column): its last
    channel lies 2**31 elements in, past a 32-bit offset. h, h_T, dx and da (which reads h0) as with a contiguous
    copy of h0."""
    x, a = (torch.rand(1, 16, 3, generator=gen).to(DEVICE).requires_grad_() for _ in range(2))
    h0 = torch.empty(1, 3, 2**30, device=DEVICE)[:, :, 0]
    h0.copy_(torch.randn(1, 3, generator=gen))
    assert h0.stride() == (3 * 2**30, 2**30)

    def run(h0):
        h, h_T = linear_scan(x, a, h0, impl=impl, output_final_state=True)
        return (h, h_T, *torch.autograd.grad(h.sum() + h_T.sum(), (x, a)))

    for name, out, ref in zip(("h", "h_T", "dx", "da"), run(h0), run(h0.contiguous())):
        torch.testing.assert_close(out, ref, msg=name)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("impl", ["associative", "sequential"])
def test_tensors_on_another_gpu_than_the_current_one(impl, gen):
    """Triton launches on the current device: tensors on cuda:1 while cuda:0 is current (a model moved there
    without set_device) must still be scanned where they are, forward and backward, plain and gated."""
    assert torch.cuda.current_device() == 0
    x, a, h0, dy, dh_T = (t.to("cuda:1") for t in view_inputs(2, 3000, 96, torch.float32, "contiguous", gen))
    out = outputs_and_grads(lambda *args: linear_scan(*args[:3], impl=impl, output_final_state=args[3]),
                            x, a, h0, dy, dh_T)
    ref64 = oracle(x, a, h0, dy, dh_T, scan=linear_scan_doubling)
    ref_d = reference_in_dtype(x, a, h0, dy, dh_T, True, False, scan=linear_scan_doubling)
    assert_close_to_oracle(out, ref_d, ref64, torch.float32, f"cuda:1 {impl}")
    inputs = [t.to("cuda:1") if t is not None else None
              for t in make_gated_inputs(2, 3000, 96, torch.float32, gen, "cpu")]

    def fused(f, v, bias, lb, doc, h0, fs):
        return gated_linear_scan(f, v, bias, lb, doc, h0, impl=impl, output_final_state=fs)

    assert_gated_close(gated_outputs_and_grads(fused, *inputs), gated_oracle(*inputs, scan=linear_scan_doubling),
                       torch.float32, f"cuda:1 gated {impl}")
