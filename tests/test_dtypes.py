"""fp32 / bf16 / fp16 on CPU (and CUDA when present): loading, casting, cfg kept in step."""

from __future__ import annotations

import pytest
import torch

from hooked_vivit import HookedViViT
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["3layers_4x4x4"]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# Low-precision tolerance against the fp32 model, relative to the largest logit (documented in the
# README): bf16 keeps 8 mantissa bits, fp16 11.
LOW_PRECISION_TOL = {torch.bfloat16: 5e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_matches_fp32(tmp_path, device, dtype):
    hf = make_hf(KW)
    hf.save_pretrained(tmp_path / "ckpt")
    ref = HookedViViT.from_pretrained(tmp_path / "ckpt", device=device)
    low = HookedViViT.from_pretrained(tmp_path / "ckpt", device=device, dtype=dtype)
    assert low.cfg.dtype == dtype and all(p.dtype == dtype for p in low.parameters())
    x = pixels(KW).to(device)
    with torch.no_grad():
        out_ref, out_low = ref(x), low(x)
        _, cache = low.run_with_cache(x)  # the explicit attention path in low precision too
    assert out_low.dtype == dtype and cache["pattern", 0].dtype == dtype
    err = (out_low.float() - out_ref).abs().max() / out_ref.abs().max().clamp(min=1)
    assert err < LOW_PRECISION_TOL[dtype], float(err)


def test_to_keeps_cfg_in_step():
    model = HookedViViT.from_hf_model(make_hf(KW))
    model.to(torch.bfloat16)
    assert model.cfg.dtype == torch.bfloat16
    model.float()
    assert model.cfg.dtype == torch.float32
    assert str(model.cfg.device) == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_parity_against_hf_on_gpu():
    hf = make_hf(KW).to("cuda", torch.bfloat16)
    model = HookedViViT.from_hf_model(hf).to("cuda")
    x = pixels(KW).to("cuda", torch.bfloat16)
    with torch.no_grad():
        ref, out = hf(x).logits.float(), model(x).float()
    assert ((out - ref).abs().max() / ref.abs().max().clamp(min=1)) < LOW_PRECISION_TOL[torch.bfloat16]
