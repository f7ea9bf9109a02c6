"""Tolerances from the arithmetic, not from one machine (issue 32, item 9): the rule in one place.

A fixed ``abs=1e-4`` on a float32 computation passes or fails with the kernels ATen and the BLAS
pick (ATEN_CPU_CAPABILITY default / avx2 / avx512; MKL's paths differ between Intel and AMD):
float32 rounds at FP32_EPS ~ 1.2e-7 of its operands, and a difference of nearly equal numbers (a
clean-minus-corrupt residual, a logit gap) multiplies that by the operands' size over the
difference's. So:

- a claim of exactness (a fast path against brute force, the library against a hand-made patch)
  runs the model in float64, where the two computations agree to ~1e-16 of their operands on any
  CPU, and compares with ``exact`` / ``assert_exact`` (1e-9 of the scale: a conditioning of ~4e6
  before float64 rounding shows, while any formula error does);
- where the library itself rounds to float32 on the way (its metrics read activations and logits
  as float32), the float64 run differs from the float64 brute force by that rounding alone:
  ``fp32_input_error`` bounds it from the quantity's own conditioning;
- a comparison that has to stay float32 (parity with transformers in float32, the dtype tests,
  float32 reductions in different orders) uses ``fp32_tol(scale, n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

FP32_EPS = torch.finfo(torch.float32).eps  # 2**-23: float32's relative spacing (rounding is half of it)
EXACT = 1e-9  # float64 exact claims, relative to the quantity's scale (float64's eps is 2.2e-16)
SAFETY = 8.0  # over the statistical size of float32 rounding: several elements, several kernels


def exact(expected: float, scale: float = 1.0):
    """pytest.approx for a float64 exact claim: within EXACT of max(|expected|, scale)."""
    return pytest.approx(expected, rel=EXACT, abs=EXACT * scale)


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, scale: float | None = None) -> None:
    """torch.testing.assert_close for float64 exact claims: within EXACT of ``scale`` (default: the
    largest |expected|, at least 1) elementwise, and EXACT relative."""
    if scale is None:
        scale = max(1.0, float(torch.as_tensor(expected).abs().max()))
    torch.testing.assert_close(actual, expected, rtol=EXACT, atol=EXACT * scale)


def fp32_tol(scale: float, n: int = 1, safety: float = SAFETY) -> float:
    """Absolute tolerance between two float32 computations of one quantity, each rounded along a
    reduction over ``n`` terms in a different order (other kernels, other BLAS paths), ``scale``
    bounding its partial sums (the sum of the terms' magnitudes; for a mean, their largest):
    safety * FP32_EPS * scale * sqrt(n): n roundings of random sign, with room (the worst-case
    bound, n * FP32_EPS * scale, assumes every rounding goes the same way)."""
    return safety * FP32_EPS * float(scale) * math.sqrt(n)


def fp32_input_error(f: Callable[..., torch.Tensor], *inputs: torch.Tensor, slack: float = 2.0) -> float:
    """First-order bound on |f(inputs rounded to float32) - f(inputs)|: FP32_EPS / 2 * sum_i |df/dx_i| |x_i|
    (f's componentwise condition number at ``inputs``, by autograd in float64), times ``slack`` for
    the float32 arithmetic after the rounding. For a library that reads float64 activations as
    float32: a difference of nearly equal activations gets a bound as large as its conditioning.
    Two float32 runs through other kernels carry several roundings per activation: slack=SAFETY."""
    with torch.inference_mode(False), torch.enable_grad():
        xs = [torch.as_tensor(x).detach().clone().double().requires_grad_() for x in inputs]
        y = f(*xs)
        grads = torch.autograd.grad(y, xs, allow_unused=True)
    total = sum(float((g.abs() * x.detach().abs()).sum()) for g, x in zip(grads, xs) if g is not None)
    return slack * FP32_EPS / 2 * total + FP32_EPS * abs(float(y))  # + the result's own float32 rounding
