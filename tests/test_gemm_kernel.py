"""The large Gram products' kernel is picked by measurement on the host, or forced."""

from __future__ import annotations

import numpy as np
import pytest

from fedgate.strategies.aggregators import linalg


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linalg, "_GEMM", {})
    monkeypatch.delenv(linalg.GEMM_ENV, raising=False)


@pytest.mark.parametrize("kernel", sorted(linalg.GEMMS))
def test_every_kernel_computes_the_same_gram(kernel: str) -> None:
    x = np.random.default_rng(1).standard_normal((6, 5000), dtype=np.float32)
    got = linalg.GEMMS[kernel](x, x)
    np.testing.assert_allclose(got, (x.astype(np.float64) @ x.T.astype(np.float64)), rtol=1e-4)


@pytest.mark.parametrize(("timings", "picked"), [
    ({"numpy": 2.0, "torch": 1.0}, "torch"),
    ({"numpy": 1.0, "torch": 2.0}, "numpy"),
])  # fmt: skip
def test_the_faster_kernel_as_measured_is_picked(monkeypatch, timings, picked) -> None:
    monkeypatch.setattr(linalg, "measure_gemm", lambda: timings)
    assert linalg.gemm_kernel() == picked
    choice = linalg.gemm_choice()
    assert choice["kernel"] == picked and float(choice[f"{picked} seconds"]) == timings[picked]


def test_a_measurement_on_this_host_times_every_kernel() -> None:
    timings = linalg.measure_gemm(n=4, d=4096, repeats=1)
    assert set(timings) == set(linalg.GEMMS) and all(t > 0 for t in timings.values())


def test_the_kernel_can_be_forced_and_a_bad_name_is_refused(monkeypatch) -> None:
    monkeypatch.setenv(linalg.GEMM_ENV, "torch")
    assert linalg.gemm_kernel() == "torch"
    monkeypatch.setattr(linalg, "_GEMM", {})
    monkeypatch.setenv(linalg.GEMM_ENV, "cuda")
    with pytest.raises(ValueError, match="FEDGATE_GEMM='cuda': choose one of numpy, torch"):
        linalg.gemm_kernel()


def test_large_inputs_use_the_picked_kernel(monkeypatch) -> None:
    calls: list[str] = []
    for name, mm in dict(linalg.GEMMS).items():
        monkeypatch.setitem(
            linalg.GEMMS, name, lambda a, b, n=name, f=mm: calls.append(n) or f(a, b)
        )
    monkeypatch.setenv(linalg.GEMM_ENV, "numpy")
    x = np.ones((4, linalg.PARALLEL_MIN // 4), np.float32)
    g, _ = linalg.gram_and_projections(x)
    assert calls == ["numpy"] and g[0, 0] == x.shape[1]
