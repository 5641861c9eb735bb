"""The efficiency and precision benchmarks run end to end (`--smoke`: tiny shapes, the interpreter on a CPU) and
write what the README's tables come from: a CSV with every series and column, the run's metadata and a plot."""

import csv
import json
import math
import sys

import pytest

from kernels.benchmarks import efficiency, precision


def run_main(module, monkeypatch, out) -> None:
    monkeypatch.setattr(sys, "argv", [module.__name__, "--smoke", "--out", str(out)])
    module.main()


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_run_files(out, stem: str) -> None:
    info = json.loads((out / f"{stem}_run.json").read_text())
    assert {"gpu", "date", "torch", "triton"} <= set(info)
    png = (out / f"{stem}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_efficiency_smoke_writes_every_series(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    run_main(efficiency, monkeypatch, tmp_path)
    assert_run_files(tmp_path, "efficiency")

    shapes = read_csv(tmp_path / "efficiency_shapes.csv")
    keys = {(r["B"], r["T"], r["D"], r["dtype"]) for r in shapes}
    assert keys == {(str(B), str(T), str(D), str(dt).split(".")[-1]) for B, T, D, dt in efficiency.SMOKE_SHAPES}
    for key in keys:
        series = {(r["impl"], r["pass_"]) for r in shapes if (r["B"], r["T"], r["D"], r["dtype"]) == key}
        peers = set(efficiency.peer_scans())  # installed and on a GPU
        assert series == {(impl, p) for impl in (*efficiency.IMPLS, *peers) for p in efficiency.PASSES}
    for r in shapes:
        assert float(r["ms"]) > 0 and float(r["copy_ms"]) > 0
        assert math.isclose(float(r["frac_of_same_copy"]), float(r["copy_ms"]) / float(r["ms"]), rel_tol=1e-6)
        if r["pass_"].startswith("fwd+bwd"):  # x + a has the forward's traffic only
            assert math.isnan(float(r["add_ms"])) and math.isnan(float(r["frac_of_same_add"]))
        else:
            assert math.isclose(float(r["frac_of_same_add"]), float(r["add_ms"]) / float(r["ms"]), rel_tol=1e-6)

    sweep = read_csv(tmp_path / "efficiency_sweep.csv")
    for T in efficiency.SMOKE_SWEEP["lengths"]:
        series = {(r["impl"], r["pass_"]) for r in sweep if int(r["T"]) == T}
        expected = {s for s in efficiency.SWEEP_SERIES
                    if s[0] != "reference" or T <= efficiency.SMOKE_SWEEP["reference_max_T"]}
        assert series == expected


def test_precision_smoke_errors_are_those_of_each_dtype(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    run_main(precision, monkeypatch, tmp_path)
    assert_run_files(tmp_path, "precision")

    rows = read_csv(tmp_path / "precision.csv")
    assert len(rows) == 3 * 3 * 2  # T = 32, 64, 128; three dtypes; associative and sequential
    # relative error against float64: the rounding of the stored output, and no more
    bound = {"float32": 1e-6, "bfloat16": 1e-2, "float16": 2e-3}
    for r in rows:
        assert 0 <= float(r["rel_err"]) < bound[r["dtype"]], r
        assert float(r["max_abs_err"]) >= 0
    # the input rounding is shared, so both kernels land at the same error in the 2-byte dtypes
    for dtype in ("bfloat16", "float16"):
        for T in ("32", "64", "128"):
            triton_err, seq_err = (float(next(r["rel_err"] for r in rows if (r["impl"], r["dtype"], r["T"]) ==
                                              (impl, dtype, T))) for impl in ("associative", "sequential"))
            assert math.isclose(triton_err, seq_err, rel_tol=0.2), (dtype, T, triton_err, seq_err)
