"""Bad input to forward -> ValueError/TypeError saying what was expected and what came."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def test_wrong_inputs_are_explained(tiny):
    model, x, _ = tiny
    cases = [
        (
            x[0],
            r"must have 5 dims \[batch, 4, 3, 32, 48\], got shape \(4, 3, 32, 48\) \(a single clip\? add the batch dim",
        ),
        (x[:, :, :2], r"expected 3 channels at dim 2"),
        (x.permute(0, 1, 3, 4, 2)[..., :32, :], r"channels-last\?"),
        (torch.cat([x, x], dim=1), r"expected 4 frames at dim 1 .* got 8"),
        (x[..., :32], r"expected frames of 32x48 pixels .* got 32x32"),
        (x.to(torch.uint8), r"normalised floats, got dtype torch.uint8"),
    ]
    for bad, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            model(bad)
    nan = x.clone()
    nan[0, 0, 0, 0, :3] = float("nan")
    nan[1, 1, 1, 1, 1] = float("inf")
    with pytest.raises(ValueError, match="4 NaN/Inf"):
        model(nan)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        model(np.zeros((1, 4, 3, 32, 48), dtype=np.float32))


def test_float64_input_is_cast_to_model_dtype(tiny):
    model, x, _ = tiny
    torch.testing.assert_close(model(x.double()), model(x))
