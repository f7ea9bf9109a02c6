"""splice refuses an SAE recorded for another hook, another width or other model weights (SAELens:
these tests run in the [sae] environment and skip elsewhere)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("sae_lens")

from hooked_vivit.loading import weights_fingerprint  # noqa: E402
from hooked_vivit.sae.splice import splice  # noqa: E402
from hooked_vivit.sae.train import _to_inference, load_sae, save_sae, training_sae  # noqa: E402

HOOK = "blocks.0.hook_resid_post"


def make_sae(d_in: int, **metadata):
    return _to_inference(training_sae("topk", d_in, 16, k=4, seed=0, metadata=metadata))


def test_an_sae_recorded_for_another_hook_is_refused(tiny):
    model, x, _ = tiny
    sae = make_sae(model.cfg.d_model, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError) as e, splice(model, sae, HOOK):
        pass
    assert str(e.value) == (
        "this SAE was trained on 'blocks.1.hook_resid_post' (sae.cfg.metadata.hook_name), not "
        "'blocks.0.hook_resid_post': splice it at 'blocks.1.hook_resid_post', or pass strict=False to splice it "
        "elsewhere on purpose"
    )
    assert not any(".hook_sae_" in n for n in model.hook_dict)  # nothing was spliced
    with torch.inference_mode():
        plain = model(x)
        with splice(model, sae, HOOK, use_error_term=True, strict=False):
            assert torch.equal(model(x), plain)
        with splice(model, sae, "blocks.1.hook_resid_post", use_error_term=True):
            assert torch.equal(model(x), plain)


def test_an_sae_of_another_width_is_refused_even_when_not_strict(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match=r"the SAE reads 10-wide activations, blocks.0.hook_resid_post gives 24"):
        with splice(model, make_sae(10), HOOK, strict=False):
            pass


def test_the_fingerprint_load_sae_reads_from_provenance_must_match_the_model(tiny, tmp_path):
    model, x, _ = tiny
    fp = weights_fingerprint(model)
    save_sae(make_sae(model.cfg.d_model), tmp_path, {"hook": HOOK, "model": {"weights_fingerprint": fp}})
    sae, _ = load_sae(tmp_path)
    assert sae.cfg.metadata["hook_name"] == HOOK and sae.cfg.metadata["weights_fingerprint"] == fp
    with torch.inference_mode():
        plain = model(x)
        with splice(model, sae, HOOK, use_error_term=True):
            assert torch.equal(model(x), plain)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.blocks[1].mlp.b_out[0] += 1e-3  # one value, after the hooked layer
    with pytest.raises(ValueError) as e, splice(other, sae, HOOK):
        pass
    msg = str(e.value)
    assert f"whose weights have the fingerprint {fp[:16]}..." in msg
    assert f"this HookedViViT's is {weights_fingerprint(other)[:16]}..." in msg and "strict=False" in msg
    with splice(other, sae, HOOK, strict=False):
        pass
    # An edit in place after a splice that checked (and memoised) the fingerprint is still seen.
    with splice(model, sae, HOOK):
        pass
    try:
        with torch.no_grad():
            model.blocks[0].attn.b_O[0] += 1e-3
        with pytest.raises(ValueError, match="whose weights have the fingerprint"), splice(model, sae, HOOK):
            pass
    finally:
        with torch.no_grad():
            model.blocks[0].attn.b_O[0] -= 1e-3


def test_an_older_float_fingerprint_is_not_compared(tiny, tmp_path):
    model, _, _ = tiny
    save_sae(make_sae(model.cfg.d_model), tmp_path, {"hook": HOOK, "model": {"weights_fingerprint": 25865.03}})
    sae, _ = load_sae(tmp_path)
    with splice(model, sae, HOOK):
        pass
