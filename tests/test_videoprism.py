"""HookedVideoPrism against transformers' VideoPrismForVideoClassification, VideoPrismVisionModel,
VideoPrismVideoModel and VideoPrismClipModel (its video tower) with every parameter perturbed: parity
(logits / video embedding, every spatial, temporal and auxiliary layer's output, every attention
pattern) under both attention implementations transformers offers for VideoPrism ("eager" and
"flex_attention": it refuses "sdpa", which cannot soft-cap), the hooked model's fused and explicit
paths, soft-capping, hook shapes, loading transformers-saved checkpoints and saving for transformers,
and clear errors."""

from __future__ import annotations

import os
import time

import pytest
import torch
from transformers import (
    VideoPrismClipModel,
    VideoPrismConfig,
    VideoPrismForVideoClassification,
    VideoPrismVideoModel,
    VideoPrismVisionConfig,
    VideoPrismVisionModel,
)

from hooked_vivit import HookedVideoPrism, HookedVideoTransformer
from hooked_vivit.cache_memory import hook_shape
from hooked_vivit.testing import make_hf_model, random_pixels
from tests.conftest import max_rel
from weights_conversion import CheckpointError

TOL = 1e-5

# Odd shapes: non-square frames (2 x 3 patches), a soft-cap small enough to bite (0.5), no qkv bias,
# a tanh gelu, d_head 4 beside a pooling-head width of 9 (intermediate 27 / 3 heads), one temporal layer.
CONFIGS = {
    "nonsquare_cap05": dict(
        image_size=[16, 24],
        num_frames=3,
        tubelet_size=[1, 8, 8],
        hidden_size=12,
        num_attention_heads=3,
        intermediate_size=27,
        num_spatial_layers=2,
        num_temporal_layers=2,
        num_auxiliary_layers=2,
        attn_logit_softcapping=0.5,
        num_labels=5,
    ),
    "nobias_tanh_1temporal": dict(
        image_size=12,
        num_frames=4,
        tubelet_size=[1, 6, 6],
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=24,
        num_spatial_layers=1,
        num_temporal_layers=1,
        num_auxiliary_layers=1,
        qkv_bias=False,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-5,
        num_labels=3,
    ),
}
TEXT = dict(vocab_size=40, hidden_size=12, intermediate_size=20, num_hidden_layers=1, num_attention_heads=2)
ATTNS = ["eager", "flex_attention"]


def make_hf(kw: dict, attn: str = "eager", cls=VideoPrismForVideoClassification):
    if cls is VideoPrismClipModel:
        return make_hf_model(cls, VideoPrismConfig(vision_config=kw, text_config=TEXT), attn)
    return make_hf_model(cls, VideoPrismVisionConfig(**kw), attn)


def pixels(kw: dict, batch: int = 2) -> torch.Tensor:
    size = kw["image_size"]
    return random_pixels(kw["num_frames"], size if isinstance(size, int) else tuple(size), batch)


@pytest.fixture(autouse=True)
def static_flex_compiles():
    """transformers compiles flex_attention; on CPU, torch's inductor fails on the dynamic-shape
    recompile that the many attention shapes here (frames, patches, the head's one query) trigger
    (LoweringException: unbacked_bindings). Each test compiles afresh, with static shapes."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(automatic_dynamic_shapes=False):
        yield


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    kw = CONFIGS[request.param]
    hf = make_hf(kw)
    return request.param, kw, hf, HookedVideoPrism.from_hf_model(hf)


def test_every_hf_parameter_is_perturbed(pair):
    _, _, hf, _ = pair
    fresh = dict(VideoPrismForVideoClassification._from_config(hf.config).named_parameters())
    for name, p in hf.named_parameters():
        assert not torch.equal(p, fresh[name]), name


def test_transformers_offers_no_sdpa_for_videoprism():
    """Why "flex_attention" stands in for "sdpa": transformers refuses sdpa (it cannot soft-cap)."""
    with pytest.raises(ValueError, match="scaled_dot_product_attention"):
        make_hf(CONFIGS["nonsquare_cap05"], "sdpa")


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("attn", ATTNS)
def test_parity_classifier(pair, attn, use_sdpa):
    name, kw, hf, model = pair
    hf.set_attn_implementation(attn)
    model.cfg.use_sdpa = use_sdpa
    try:
        report = model.parity_report(hf, pixels(kw))
    finally:
        hf.set_attn_implementation("eager")
        model.cfg.use_sdpa = True
    S, T = kw["num_spatial_layers"], kw["num_temporal_layers"]
    per_layer = 2 if attn == "eager" else 1  # eager also returns every attention map
    assert len(report.rows) == 1 + (S + T) * per_layer + 1 + (attn == "eager") + 1
    assert report.rows[-1].name == "logits"
    assert report.ok(TOL), (name, attn, report.to_markdown(TOL))


def test_hidden_states_and_logits_directly(pair):
    """The same checks without the report: transformers' own hidden_states (embeddings, each layer but
    the last, then last_hidden_state) against the hooks, its [batch, 1, classes] logits against ours."""
    _, kw, hf, model = pair
    x = pixels(kw)
    with torch.inference_mode():
        ref = hf(x, output_hidden_states=True)
        logits, cache = model.run_with_cache(x)
    S, T = kw["num_spatial_layers"], kw["num_temporal_layers"]
    ours = [cache["spatial_blocks.0.hook_resid_pre"]]
    ours += [cache[f"spatial_blocks.{l}.hook_resid_post"] for l in range(S)]
    ours += [cache[f"temporal_blocks.{l}.hook_resid_post"] for l in range(T - 1)] + [cache["hook_tokens"]]
    assert len(ref.hidden_states) == len(ours)
    for i, (a, b) in enumerate(zip(ours, ref.hidden_states, strict=True)):
        assert a.shape == b.shape and max_rel(a, b) <= TOL, i
    assert ref.logits.shape == (2, 1, kw["num_labels"]) and max_rel(logits, ref.logits[:, 0]) <= TOL


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("cls", [VideoPrismVisionModel, VideoPrismVideoModel, VideoPrismClipModel])
def test_parity_vision_model_video_model_and_clip_video_tower(cls, attn):
    kw = CONFIGS["nonsquare_cap05"]
    hf = make_hf(kw, attn, cls)
    model = HookedVideoPrism.from_hf_model(hf)
    readout = "none" if cls is VideoPrismVisionModel else "video_embedding"
    assert model.cfg.readout == readout and model.cfg.n_classes == 0
    assert model.cfg.n_aux_layers == (0 if readout == "none" else kw["num_auxiliary_layers"])
    report = model.parity_report(hf, pixels(kw))
    assert report.ok(TOL), report.to_markdown(TOL)
    x = pixels(kw)
    with torch.inference_mode():
        out = model(x)
        if cls is VideoPrismClipModel:
            ref = hf.get_video_features(x).pooler_output[:, 0]
            assert torch.allclose(ref.norm(dim=-1), torch.ones(2), atol=1e-4)  # l2-normalised
        elif cls is VideoPrismVideoModel:
            ref = hf(x).pooler_output[:, 0]
        else:
            ref = hf(x).last_hidden_state
    assert out.shape == ref.shape and max_rel(out, ref) <= TOL


def test_soft_cap_bounds_the_scores_and_matters(pair):
    name, kw, hf, model = pair
    cap = kw.get("attn_logit_softcapping", 50.0)
    x = pixels(kw)
    _, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_attn_scores"))
    for n, scores in cache.items():
        if not n.startswith("head."):
            assert scores.abs().max() <= cap, n
    if cap < 1:  # without the cap the model computes something else
        with torch.inference_mode():
            capped = model(x)
            for block in model.blocks:
                block.attn.softcap = None
            try:
                uncapped = model(x)
            finally:
                for block in model.blocks:
                    block.attn.softcap = cap
        assert max_rel(capped, uncapped) > 1e-3


def test_every_hook_fires_with_the_documented_shape(pair):
    _, kw, _, model = pair
    x = pixels(kw, batch=2)
    _, cache = model.run_with_cache(x)
    for name in model.hook_dict:
        expected = hook_shape(model.cfg, name, 2)
        if expected is None:
            assert name not in cache, name
        else:
            assert name in cache, name
            assert tuple(cache[name].shape) == expected, (name, tuple(cache[name].shape), expected)
    T, P, d = kw["num_frames"], model.cfg.n_patches, kw["hidden_size"]
    assert cache["spatial_blocks.0.attn.hook_pattern"].shape == (2 * T, kw["num_attention_heads"], P, P)
    assert cache["temporal_blocks.0.attn.hook_pattern"].shape == (2 * P, kw["num_attention_heads"], T, T)
    assert cache["hook_tokens"].shape == (2, T * P, d) and model.cfg.n_ctx == T * P
    # The two factorised layouts land on the token grid: ln_final's output is last_hidden_state.
    assert torch.equal(model.temporal_to_grid(cache["ln_final.hook_normalized"]), cache["hook_tokens"])
    frames = model.spatial_to_grid(cache["hook_embed"])
    assert frames.shape == (2, T * P, d)


def test_use_attn_result_and_split_inputs_reach_every_attention(pair):
    _, kw, _, model = pair
    x = pixels(kw)
    with torch.inference_mode():
        ref = model(x)
    model.set_use_attn_result(True)
    try:
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_result"))
        assert "head.attn.hook_result" in cache and "spatial_blocks.0.attn.hook_result" in cache
        assert max_rel(logits, ref) <= TOL
    finally:
        model.set_use_attn_result(False)


def test_from_pretrained_on_transformers_saved_checkpoints(tmp_path):
    kw = CONFIGS["nonsquare_cap05"]
    x = pixels(kw)
    for cls in (VideoPrismForVideoClassification, VideoPrismVisionModel, VideoPrismVideoModel, VideoPrismClipModel):
        hf = make_hf(kw, "eager", cls)
        path = tmp_path / cls.__name__
        hf.save_pretrained(path)
        model = HookedVideoTransformer.from_pretrained(path)
        assert type(model) is HookedVideoPrism
        assert model.parity_report(hf, x).ok(TOL), cls.__name__
        assert HookedVideoPrism.from_pretrained(path).cfg.readout == model.cfg.readout


def test_bin_checkpoint_loads_with_weights_only(tmp_path):
    kw = CONFIGS["nobias_tanh_1temporal"]
    hf = make_hf(kw)
    hf.save_pretrained(tmp_path)  # config.json; then the weights as a .bin in place of the safetensors
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    model = HookedVideoTransformer.from_pretrained(tmp_path)
    with torch.inference_mode():
        assert max_rel(model(pixels(kw)), hf(pixels(kw)).logits[:, 0]) <= TOL


@pytest.mark.parametrize("cls", [VideoPrismForVideoClassification, VideoPrismVideoModel, VideoPrismVisionModel])
def test_save_pretrained_round_trip_and_transformers_reads_it(cls, tmp_path):
    kw = CONFIGS["nonsquare_cap05"]
    hf = make_hf(kw, "eager", cls)
    model = HookedVideoPrism.from_hf_model(hf)
    model.save_pretrained(tmp_path / "m")
    back = cls.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    for (name, a), (_, b) in zip(sorted(hf.state_dict().items()), sorted(back.state_dict().items()), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    again = HookedVideoTransformer.from_pretrained(tmp_path / "m")
    x = pixels(kw)
    with torch.inference_mode():
        assert torch.equal(again(x), model(x))
    model.save_pretrained(tmp_path / "h", layout="hooked")
    assert torch.equal(HookedVideoTransformer.from_pretrained(tmp_path / "h")(x), model(x))


def test_wrong_inputs_get_clear_errors(pair):
    _, kw, _, model = pair
    x = pixels(kw)
    with pytest.raises(ValueError, match=f"expected {kw['num_frames']} frames"):
        model(x[:, :-1])
    with pytest.raises(ValueError, match="pixels"):
        model(x[..., :-2])
    with pytest.raises(ValueError, match="5 dims"):
        model(x[0])
    with pytest.raises(ValueError, match="channels"):
        model(x[:, :, :2])
    with pytest.raises(ValueError, match="start_at_layer"):
        model(x, start_at_layer=1)
    with pytest.raises(NotImplementedError, match="fold_ln"):
        model.process_weights_(fold_ln=True)


def test_a_mismatched_checkpoint_names_the_keys():
    kw = CONFIGS["nobias_tanh_1temporal"]
    hf = make_hf(kw)
    sd = dict(hf.state_dict())
    del sd["vision_model.temporal_layers.0.mlp.fc1.bias"]
    sd["head.per_dim_scale"] = sd["head.per_dim_scale"][:-1]
    with pytest.raises(CheckpointError) as err:
        HookedVideoPrism.from_state_dict(sd, hf.config.to_dict())
    assert "vision_model.temporal_layers.0.mlp.fc1.bias" in str(err.value)
    assert "head.per_dim_scale" in str(err.value)


def test_config_round_trip():
    kw = CONFIGS["nonsquare_cap05"]
    model = HookedVideoPrism.from_hf_model(make_hf(kw))
    d = model.cfg.to_hf_config_dict()
    hf_cfg = VideoPrismVisionConfig(**{k: v for k, v in d.items() if k not in ("architectures", "_name_or_path")})
    assert hf_cfg.num_spatial_layers == 2 and hf_cfg.attn_logit_softcapping == 0.5
    assert list(hf_cfg.image_size) == [16, 24] and hf_cfg.intermediate_size == 27


@pytest.mark.parametrize("cls", [VideoPrismVisionModel, VideoPrismClipModel])
def test_hook_shapes_of_the_backbone_and_the_clip_video_tower(cls):
    kw = CONFIGS["nonsquare_cap05"]
    model = HookedVideoPrism.from_hf_model(make_hf(kw, "eager", cls))
    _, cache = model.run_with_cache(pixels(kw))
    fired = 0
    for name in model.hook_dict:
        expected = hook_shape(model.cfg, name, 2)
        assert (name in cache) == (expected is not None), name
        if expected is not None:
            fired += 1
            assert tuple(cache[name].shape) == expected, (name, tuple(cache[name].shape), expected)
    tower = cls is VideoPrismClipModel
    assert ("hook_video_embedding" in cache) == tower and ("aux_blocks.0.hook_resid_post" in cache) == tower
    assert ("head.attn.hook_pattern" in cache) == tower and fired > 50


def test_defaults_are_transformers_defaults():
    """HookedVideoPrismConfig() is VideoPrism-B as transformers' VideoPrismVisionConfig() describes it."""
    ours = HookedVideoPrism.config_class()
    theirs = HookedVideoPrism.config_class.from_hf_config(VideoPrismVisionConfig(num_labels=400))
    for field in (
        "d_model",
        "d_head",
        "n_heads",
        "d_mlp",
        "eps",
        "act_fn",
        "num_frames",
        "image_size",
        "tubelet_size",
        "n_spatial_layers",
        "n_temporal_layers",
        "attn_scores_soft_cap",
        "n_ctx",
    ):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.n_ctx == 16 * 16 * 16 and ours.d_head_pool == 3072 // 12


@pytest.mark.parametrize(
    "hook, hf_module",
    [
        ("spatial_blocks.1.hook_attn_out", lambda hf: hf.vision_model.spatial_layers[1].attention.o_proj),
        ("temporal_blocks.0.hook_mlp_out", lambda hf: hf.vision_model.temporal_layers[0].mlp.fc2),
        ("temporal_blocks.1.hook_attn_out", lambda hf: hf.vision_model.temporal_layers[1].attention.o_proj),
        ("head.hook_attn_out", lambda hf: hf.head.o_proj),
    ],
)
def test_zero_ablating_an_output_hook_equals_zeroing_that_layer_in_transformers(hook, hf_module):
    """The hooks sit on the live path: zeroing a block's attention or MLP output at its hook is
    transformers with that output projection zeroed."""
    kw = CONFIGS["nonsquare_cap05"]
    hf = make_hf(kw)
    model = HookedVideoPrism.from_hf_model(hf)
    x = pixels(kw)
    with torch.inference_mode():
        clean = model(x)
        ablated = model.run_with_hooks(x, fwd_hooks=[(hook, lambda act, hook: torch.zeros_like(act))])
        module = hf_module(hf)
        module.weight.zero_()
        module.bias.zero_()
        ref = hf(x).logits[:, 0]
    assert max_rel(ablated, ref) <= TOL and max_rel(clean, ref) > 1e-3


# ------------------------------------------------------------------ the real size
FULL_VIDEOPRISM = os.environ.get("HOOKED_VIVIT_FULL_VIDEOPRISM", "")


@pytest.mark.slow
@pytest.mark.skipif(
    not FULL_VIDEOPRISM,
    reason="VideoPrism-B at 16 frames x 288 px takes minutes on 2 CPU cores; HOOKED_VIVIT_FULL_VIDEOPRISM=1 "
    "runs it (=N: N spatial and min(N, 4) temporal layers)",
)
def test_videoprism_b_16_frames_288px_random_weights():
    """VideoPrism-B geometry (d_model 768, 12 heads, 4096 tokens: 16 frames x 16 x 16 patches of 18 px,
    soft-cap 50, the attention-pooling head, 400 classes), random perturbed weights, eager and
    flex_attention: every layer, the patterns and the logits within 1e-5."""
    n = 12 if FULL_VIDEOPRISM == "1" else int(FULL_VIDEOPRISM)
    kw = dict(num_spatial_layers=n, num_temporal_layers=min(n, 4), num_labels=400)
    hf = make_hf(kw)
    model = HookedVideoPrism.from_hf_model(hf)
    assert model.cfg.n_ctx == 4096 and model.cfg.d_model == 768 and model.cfg.d_head_pool == 256
    x = torch.randn(1, 16, 3, 288, 288, generator=torch.Generator().manual_seed(0))
    timings, outputs = {}, {}
    for attn in ATTNS:
        hf.set_attn_implementation(attn)
        t0 = time.perf_counter()
        report = model.parity_report(hf, x)
        timings[attn] = time.perf_counter() - t0
        with torch.inference_mode():
            outputs[attn] = hf(x, output_hidden_states=True)
        if attn == "eager":
            assert report.ok(TOL), report.to_markdown(TOL)
            continue
        # transformers' flex_attention itself departs from its eager path by more than 1e-5 at this
        # size (its CPU kernel sums in another order): each row within twice that, the logits within 1e-5.
        own = max_rel(outputs["flex_attention"].hidden_states[-1], outputs["eager"].hidden_states[-1])
        rows = {r.name: r.max_rel for r in report.rows}
        assert rows["logits"] <= TOL, report.to_markdown(TOL)
        assert max(rows.values()) <= max(TOL, 2 * own), (own, report.to_markdown(TOL))
    print(f"VideoPrism-B ({n} spatial layers) parity seconds: {timings}; hf flex vs eager {own:.2e}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parity(dtype):
    """transformers' LayerNorm adds 1 to its weight in the model's dtype; the converter adds it in the
    checkpoint's, so the rounding is the same: within parity.TOLERANCE (fp16 1e-2, bf16 5e-2)."""
    kw = CONFIGS["nonsquare_cap05"]
    hf = make_hf(kw).to(dtype)
    model = HookedVideoPrism.from_hf_model(hf)
    assert model.cfg.dtype == dtype
    report = model.parity_report(hf, pixels(kw))
    assert report.dtype == dtype and report.ok(), report.to_markdown()


def test_a_shared_analysis_hook_name_points_to_the_factorised_names(pair):
    _, kw, _, model = pair
    with pytest.raises(KeyError, match="spatial_blocks.0.hook_resid_post"):
        model.run_with_hooks(pixels(kw), fwd_hooks=[("blocks.0.hook_resid_post", lambda act, hook: act)])
