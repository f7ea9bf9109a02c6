"""HookedVideoMAE against transformers.VideoMAEForVideoClassification / VideoMAEModel: parity (eager
and sdpa, logits, every hidden state, every attention pattern) with every parameter perturbed, both
checkpoint key layouts, the sinusoidal table, exact DLA through mean pooling, loading by model_type."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import VideoMAEConfig, VideoMAEForVideoClassification, VideoMAEModel

from hooked_vivit import HookedVideoMAE, HookedVideoTransformer, HookedViViT, TokenGrid, video
from hooked_vivit.parity import compare
from hooked_vivit.testing import make_hf_model, random_pixels
from tests.conftest import max_rel
from tests.test_analysis import projection
from tests.tolerances import SAFETY, fp32_input_error
from weights_conversion import CheckpointError, converter

TOL = 1e-5

# Odd shapes: non-square frames and patches, a frame the tubelet leaves over, no q/v bias, first-token
# pooling (use_mean_pooling=False), 1 and 3 layers, a head count that is not a power of two.
CONFIGS = {
    "mean_nonsquare_5frames": dict(
        image_size=[36, 28],
        patch_size=[12, 7],
        num_frames=5,
        tubelet_size=2,
        hidden_size=24,
        num_attention_heads=3,
        num_hidden_layers=2,
        intermediate_size=37,
        num_labels=5,
    ),
    "first_token_noqvbias": dict(
        image_size=32,
        patch_size=8,
        num_frames=3,
        tubelet_size=3,
        hidden_size=40,
        num_attention_heads=5,
        num_hidden_layers=1,
        intermediate_size=64,
        num_labels=4,
        qv_bias=False,
        use_mean_pooling=False,
        hidden_act="gelu_new",
        layer_norm_eps=1e-6,
    ),
    "3layers_tubelet1": dict(
        image_size=16,
        patch_size=4,
        num_frames=2,
        tubelet_size=1,
        hidden_size=32,
        num_attention_heads=2,
        num_hidden_layers=3,
        intermediate_size=96,
        num_labels=3,
    ),
}


def make_hf(kw: dict, attn: str = "eager", seed: int = 0, cls=VideoMAEForVideoClassification):
    return make_hf_model(cls, VideoMAEConfig(**kw), attn, seed)


def pixels(kw: dict, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return random_pixels(kw["num_frames"], kw["image_size"], batch, seed)


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request):
    kw = CONFIGS[request.param]
    hf = make_hf(kw)
    return request.param, kw, hf, HookedVideoMAE.from_hf_model(hf)


def test_every_hf_parameter_is_perturbed(pair):
    _, _, hf, _ = pair
    fresh = VideoMAEForVideoClassification(hf.config)
    for name, p in hf.named_parameters():
        assert not torch.equal(p, dict(fresh.named_parameters())[name]), name


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_parity(pair, attn):
    name, kw, hf, model = pair
    report = compare(model, hf, pixels(kw), attn=attn)
    n = kw["num_hidden_layers"]
    assert len(report.rows) == 1 + n * (2 if attn == "eager" else 1) + 1
    assert report.ok(TOL), (name, attn, report.to_markdown(TOL))


def test_fast_path_equals_explicit_path(pair):
    _, kw, _, model = pair
    x = pixels(kw)
    with torch.no_grad():
        fast = model(x)
        slow, _ = model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_pattern", "hook_scale")))
    assert max_rel(fast, slow) <= TOL


def test_backbone_with_first_token_pooling():
    kw = dict(CONFIGS["first_token_noqvbias"], num_labels=2)
    hf = make_hf(kw, cls=VideoMAEModel)
    model = HookedVideoTransformer.from_hf_model(hf)
    assert isinstance(model, HookedVideoMAE) and model.unembed is None
    report = compare(model, hf, pixels(kw), attn="eager")
    assert report.ok(TOL), report.to_markdown(TOL)


def test_sinusoidal_table_is_transformers_and_not_a_parameter(pair):
    _, kw, hf, model = pair
    ref = hf.videomae.embeddings.position_embeddings[0]
    assert torch.equal(model.W_pos, ref)
    assert "pos_embed.W_pos" not in model.state_dict() and "embed.cls_token" not in model.state_dict()
    assert torch.equal(copy.deepcopy(model).half().W_pos, ref.half())  # cast with the model


def _hub_layout(sd: dict) -> dict:
    return {
        k.replace("attention.attention.query.bias", "attention.attention.q_bias").replace(
            "attention.attention.value.bias", "attention.attention.v_bias"
        ): v
        for k, v in sd.items()
    }


@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_checkpoint_layouts_round_trip_and_load_in_transformers(pair, layout, tmp_path):
    name, kw, hf, model = pair
    sd = {k: v.detach() for k, v in hf.state_dict().items()}
    file_sd = _hub_layout(sd) if layout == "hub" else sd
    if kw.get("qv_bias", True):
        assert (file_sd != sd) == (layout == "hub")
    # Our reverse conversion writes exactly that layout.
    written = converter("videomae").to_hf(model.state_dict(), model.cfg, layout=layout)
    assert written.keys() == file_sd.keys()
    assert all(torch.equal(written[k], file_sd[k]) for k in file_sd)
    # A checkpoint directory in that layout: transformers and we load it to the same numbers.
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    save_file({k: v.contiguous() for k, v in file_sd.items()}, tmp_path / "model.safetensors")
    ours = HookedVideoTransformer.from_pretrained(tmp_path)
    theirs = VideoMAEForVideoClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    x = pixels(kw)
    with torch.no_grad():
        assert max_rel(ours(x), theirs(x).logits) <= TOL
        assert max_rel(ours(x), hf(x).logits) <= TOL


def test_without_prefix_and_with_both_bias_spellings(pair):
    name, kw, hf, model = pair
    sd = {k.removeprefix("videomae."): v for k, v in hf.state_dict().items()}
    assert torch.equal(HookedVideoMAE.from_state_dict(sd, hf.config.to_dict())(pixels(kw)), model(pixels(kw)))
    if kw.get("qv_bias", True):
        both = {**hf.state_dict(), **_hub_layout(hf.state_dict())}
        with pytest.raises(CheckpointError, match="twice"):
            HookedVideoMAE.from_state_dict(both, hf.config.to_dict())


def test_learned_key_bias_of_older_transformers_is_read_into_b_K(pair):
    """transformers 5.17 gave VideoMAE's key projection a learned bias (current releases have none): it
    loads into b_K exactly and, since it shifts a query's scores by one constant, changes no output."""
    name, kw, hf, model = pair
    if not kw.get("qv_bias", True):
        pytest.skip("no q/v bias in this config, so no key bias either")
    gen = torch.Generator().manual_seed(5)
    sd = dict(hf.state_dict())
    n, width = kw["num_hidden_layers"], kw["hidden_size"]
    key_bias = {
        f"videomae.encoder.layer.{i}.attention.attention.key.bias": torch.randn(width, generator=gen) for i in range(n)
    }
    loaded = HookedVideoMAE.from_state_dict({**sd, **key_bias}, hf.config.to_dict())
    for i in range(n):
        assert torch.equal(
            loaded.blocks[i].attn.b_K.flatten(), key_bias[f"videomae.encoder.layer.{i}.attention.attention.key.bias"]
        )
    x = pixels(kw)
    assert max_rel(loaded(x), hf(x).logits) <= TOL
    wrong = {"videomae.encoder.layer.0.attention.attention.key.bias": torch.zeros(width + 1)}
    with pytest.raises(CheckpointError, match="mis-shaped"):
        HookedVideoMAE.from_state_dict({**sd, **wrong}, hf.config.to_dict())


@pytest.mark.parametrize("layout", ["transformers", "hub"])
@pytest.mark.parametrize("prefix", [True, False])
def test_key_errors_name_keys_as_the_checkpoint_spells_them(layout, prefix):
    kw = CONFIGS["mean_nonsquare_5frames"]
    model = HookedVideoMAE.from_hf_model(make_hf(kw))
    sd = converter("videomae").to_hf(model.state_dict(), model.cfg, layout=layout, prefix=prefix)
    pre = "videomae." if prefix else ""
    bias = "attention.attention.v_bias" if layout == "hub" else "attention.attention.value.bias"
    del sd[pre + "encoder.layer.1.intermediate.dense.weight"], sd["fc_norm.bias"], sd[f"{pre}encoder.layer.0.{bias}"]
    sd[pre + "encoder.layer.0.extra.weight"] = torch.zeros(3)
    sd[pre + "encoder.layer.1.output.dense.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as err:
        HookedVideoMAE.from_state_dict(sd, model.cfg.to_hf_config_dict())
    msg = str(err.value)
    # fc_norm and classifier sit outside videomae. in VideoMAEForVideoClassification: never prefixed.
    assert (
        f"missing keys (3):\n  fc_norm.bias\n  {pre}encoder.layer.0.{bias}\n  {pre}encoder.layer.1.intermediate.dense.weight\n"
        in msg
    ), msg
    assert f"unexpected keys (1):\n  {pre}encoder.layer.0.extra.weight" in msg
    assert f"{pre}encoder.layer.1.output.dense.bias: checkpoint (5,) vs expected (24,)" in msg


def test_fold_ln_leaves_the_logits_unchanged(pair):
    """process_weights_ (fold_ln, and centring where the position table allows) on VideoMAE: the
    folded model's logits equal the unfolded one's; fc_norm folds into the classifier."""
    name, kw, _, model = pair
    x = pixels(kw)
    folded = copy.deepcopy(model).process_weights_(fold_ln=True, center_writing_weights=False, fold_value_biases=True)
    assert folded.cfg.normalization_type == "LNPre" and folded.ln_final.w is None and folded.blocks[0].ln1.w is None
    with torch.no_grad():
        ref, got = model(x), folded(x)
    diff = float((got - ref).abs().max())
    print(f"fold_ln parity {name}: max |diff| {diff:.2e}")
    assert diff <= TOL * max(1.0, float(ref.abs().max())) and not torch.equal(folded.W_Q, model.W_Q)
    with pytest.raises(ValueError, match="fixed sinusoidal table"):
        copy.deepcopy(model).process_weights_(fold_ln=False, center_writing_weights=True)


def test_folded_model_round_trips_in_the_hooked_layout(tmp_path):
    kw = CONFIGS["mean_nonsquare_5frames"]
    model = HookedVideoMAE.from_hf_model(make_hf(kw)).process_weights_(center_writing_weights=False)
    model.save_pretrained(tmp_path / "m", layout="hooked")
    again = HookedVideoTransformer.from_pretrained(tmp_path / "m")
    assert again.cfg.folded_ln and again.cfg.final_norm
    x = pixels(kw)
    assert torch.equal(again(x), model(x))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_mean_pooling_backbone_is_videomae_model(attn, tmp_path):
    """transformers' VideoMAEModel with use_mean_pooling: no classifier and no final norm (fc_norm is
    in the head). Its checkpoint loads with final_norm=False; every hidden state and attention
    pattern match, and the output is the token mean of last_hidden_state."""
    kw = dict(CONFIGS["mean_nonsquare_5frames"])
    hf = make_hf(kw, attn=attn, cls=VideoMAEModel)
    assert hf.layernorm is None and not any(k.startswith(("fc_norm", "layernorm")) for k in hf.state_dict())
    hf.save_pretrained(tmp_path / "hf")
    model = HookedVideoTransformer.from_pretrained(tmp_path / "hf")
    assert (
        isinstance(model, HookedVideoMAE)
        and model.unembed is None
        and model.ln_final is None
        and not model.cfg.final_norm
    )
    x = pixels(kw)
    report = compare(model, hf, x, attn=attn)
    assert report.rows[-1].name == "pooled embedding (last_hidden_state.mean(1))"
    print(
        f"VideoMAEModel backbone parity ({attn}): worst {report.worst().name} max |diff| {max(r.max_abs for r in report.rows):.2e}"
    )
    assert report.ok(TOL), report.to_markdown(TOL)
    with torch.no_grad():
        assert max_rel(model(x), hf(x).last_hidden_state.mean(1)) <= TOL
    # Saved back, transformers reads it as the same VideoMAEModel.
    model.save_pretrained(tmp_path / "ours")
    theirs = VideoMAEModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert max_rel(theirs(x).last_hidden_state, hf(x).last_hidden_state) <= TOL


@pytest.mark.parametrize("layout", ["transformers", "hub", "hooked"])
def test_save_pretrained_round_trip(pair, layout, tmp_path):
    _, kw, hf, model = pair
    model.save_pretrained(tmp_path / "m", layout=layout)
    again = HookedVideoTransformer.from_pretrained(tmp_path / "m")
    assert type(again) is HookedVideoMAE and again.cfg.pooling == model.cfg.pooling
    x = pixels(kw)
    assert torch.equal(again(x), model(x))
    if layout != "hooked":
        theirs = VideoMAEForVideoClassification.from_pretrained(tmp_path / "m").eval()
        with torch.no_grad():
            assert max_rel(theirs(x).logits, model(x)) <= TOL


def test_from_pretrained_refuses_the_other_architecture(tmp_path):
    model = HookedVideoMAE.from_hf_model(make_hf(CONFIGS["3layers_tubelet1"]))
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="is a HookedVideoMAE, not a HookedViViT"):
        HookedViViT.from_pretrained(tmp_path / "m")


def test_residual_decomposition_is_complete_and_dla_through_mean_pooling_is_exact():
    kw = CONFIGS["mean_nonsquare_5frames"]
    model = HookedVideoMAE.from_hf_model(make_hf(kw))
    x = pixels(kw)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
    stack = cache.decompose_resid(layer=None, mode="full", apply_ln=False)
    assert torch.allclose(stack.sum(0), cache["resid_post", kw["num_hidden_layers"] - 1], atol=1e-5)
    for classes in (3, [1, 4]):
        terms, labels, constant = model.pooled_logit_terms(cache, classes)
        assert terms.shape == (2 + 2 * kw["num_hidden_layers"], 2, model.cfg.n_ctx) and labels[:2] == [
            "embed",
            "pos_embed",
        ]
        target = logits[torch.arange(2), torch.as_tensor(classes)]
        assert max_rel(terms.sum((0, 2)) + constant, target) <= TOL


def test_token_grid_without_prefix():
    grid = TokenGrid(3, 4, 5, n_prefix=0)
    assert grid.n_ctx == 60 and grid.index(0, 0, 0) == 0 and grid.coords(59) == (2, 3, 4)
    assert all(grid.index(*grid.coords(i)) == i for i in range(grid.n_ctx))
    x = torch.randn(2, 60)
    prefix, g = grid.unflatten(x)
    assert prefix.shape == (2, 0) and g.shape == (2, 3, 4, 5)
    assert torch.equal(grid.flatten(prefix, g), x)
    cfg = HookedVideoMAE.config_class(
        num_frames=4, image_size=32, tubelet_size=(2, 16, 16), d_model=8, d_head=4, n_heads=2, n_layers=1, d_mlp=8
    )
    assert cfg.grid.n_prefix == 0 and cfg.n_ctx == 8 and cfg.grid.label(0) == "t0 r0 c0"


def test_preprocess_uses_the_models_constants():
    """video.preprocess(config=model.cfg) equals transformers' VideoMAE processor with the hub
    checkpoint's preprocessor_config (ImageNet mean/std, rescale 1/255)."""
    from transformers import VideoMAEImageProcessor

    from hooked_vivit.videomae import IMAGENET_MEAN, IMAGENET_STD

    cfg = HookedVideoMAE.config_class(
        num_frames=3, image_size=32, tubelet_size=(1, 16, 16), d_model=8, d_head=4, n_heads=2, n_layers=1, d_mlp=8
    )
    frames = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    proc = VideoMAEImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )
    ref = proc(list(frames), return_tensors="pt").pixel_values
    ours = video.preprocess(frames, config=cfg)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() <= 1e-5
    assert np.array_equal(video.unnormalize(video.normalize(torch.from_numpy(frames), config=cfg), config=cfg), frames)


def test_preprocessor_config_is_read(tmp_path):
    model = HookedVideoMAE.from_hf_model(make_hf(CONFIGS["3layers_tubelet1"]))
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2], "rescale_factor": 0.00392156862745098})
    )
    cfg = HookedVideoTransformer.from_pretrained(tmp_path / "m").cfg
    assert cfg.image_mean == (0.5, 0.4, 0.3) and cfg.image_std == (0.2, 0.2, 0.2) and cfg.rescale_factor == 1 / 255


def test_cli_parity_on_a_videomae_checkpoint(tmp_path, capsys):
    from hooked_vivit import cli

    model = HookedVideoMAE.from_hf_model(make_hf(CONFIGS["mean_nonsquare_5frames"]))
    model.save_pretrained(tmp_path / "m")
    assert cli.main(["parity", "--model", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "pattern 1" in out and "logits" in out


@pytest.mark.slow
def test_videomae_b_kinetics400_shape_random_weights():
    """The real config: 16 frames, 224 px, 1568 tokens, ~86M parameters (random, perturbed weights)."""
    kw = dict(num_labels=400)
    hf = make_hf(kw | dict(image_size=224, num_frames=16), attn="eager")
    model = HookedVideoMAE.from_hf_model(hf)
    assert model.cfg.n_ctx == 1568
    # Ours holds b_K (zero: VideoMAE's key has no bias) as a parameter, 12 x 768 more numbers.
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in hf.parameters()) + 12 * 768
    assert all(torch.equal(b.attn.b_K, torch.zeros_like(b.attn.b_K)) for b in model.blocks)
    x = pixels(dict(image_size=224, num_frames=16), batch=1)
    # One forward each side: every hidden state and the first and last layers' patterns.
    names = [f"blocks.{l}.hook_resid_pre" for l in range(12)] + [
        "blocks.11.hook_resid_post",
        "blocks.0.attn.hook_pattern",
        "blocks.11.attn.hook_pattern",
    ]
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(x, names_filter=names)
    worst = {"logits": max_rel(logits, ref.logits)}
    for l in range(12):
        worst[f"resid_pre{l}"] = max_rel(cache["resid_pre", l], ref.hidden_states[l])
    worst["resid_post11"] = max_rel(cache["resid_post", 11], ref.hidden_states[12])
    worst["pattern0"] = max_rel(cache["pattern", 0], ref.attentions[0])
    worst["pattern11"] = max_rel(cache["pattern", 11], ref.attentions[11])
    assert max(worst.values()) <= TOL, worst


# ------------------------------------------------------------------ analysis on a tiny VideoMAE
@pytest.fixture(scope="module")
def tiny():
    kw = CONFIGS["mean_nonsquare_5frames"]
    model = HookedVideoMAE.from_hf_model(make_hf(kw))
    clean = pixels(kw, batch=1, seed=1)
    corrupted = clean + 0.3 * pixels(kw, batch=1, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, clean_cache


def test_position_groups_without_cls(tiny):
    from hooked_vivit.causal.patching import FrameSlot, Region, resolve_positions

    model = tiny[0]
    grid = model.cfg.grid
    with pytest.raises(ValueError, match="no CLS token"):
        resolve_positions(model, "cls")
    with pytest.raises(ValueError, match="no CLS token"):
        resolve_positions(model, Region(frame_slots=0, include_cls=True))
    assert resolve_positions(model, "all") is None
    assert resolve_positions(model, "patches") == tuple(range(model.cfg.n_ctx))
    assert resolve_positions(model, FrameSlot(1)) == tuple(grid.positions(frame_slots=1)) == tuple(range(12, 24))
    mask = torch.zeros(grid.shape, dtype=torch.bool)
    mask[1, 2, 3] = True
    assert resolve_positions(model, mask) == (grid.index(1, 2, 3),) == (23,)


def test_ablation_equals_a_hand_written_hook(tiny):
    from hooked_vivit.causal.ablation import PixelBox, ablate, ablate_pixels

    model, clean, *_ = tiny
    pos = list(range(12, 24))

    def zero(act, hook):
        act[:, pos] = 0
        return act

    with torch.no_grad():
        expected = model.run_with_hooks(clean, fwd_hooks=[("hook_embed", zero)])
    assert torch.equal(ablate(model, clean, "hook_embed", pos), expected)
    assert not torch.allclose(expected, model(clean))
    # "black" is the model's own black pixel: preprocessing an all-black frame gives it.
    black = ablate_pixels(clean, PixelBox(0, 5, 0, 36, 0, 28), mode="black", config=model)
    frames = np.zeros((5, 36, 28, 3), dtype=np.uint8)
    assert torch.equal(black, video.preprocess(frames, config=model.cfg))


def test_batched_patching_engine_equals_transformer_lens_path(tiny):
    from hooked_vivit.causal import patching
    from hooked_vivit.causal.metrics import LogitDiff

    model, _, corrupted, clean_cache = tiny
    m = LogitDiff(2, 4)
    twin = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, m)
    sweep = patching.run_patches(
        model,
        patching.token_patches(model, "resid_pre"),
        source_cache=clean_cache,
        target=corrupted,
        metric=m,
        chunk_size=7,
    )
    torch.testing.assert_close(sweep.values, twin.flatten(), atol=1e-5, rtol=1e-5)
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, m)
    sweep = patching.run_patches(
        model, patching.head_patches(model, "z"), source_cache=clean_cache, target=corrupted, metric=m
    )
    torch.testing.assert_close(sweep.values, heads.flatten(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ analyze / study on a tiny VideoMAE
SQUARE_MAE = dict(
    image_size=32,
    patch_size=8,
    num_frames=8,
    tubelet_size=2,
    hidden_size=32,
    num_attention_heads=2,
    num_hidden_layers=2,
    intermediate_size=64,
    num_labels=6,
)


def test_analyze_on_a_videomae_checkpoint(tmp_path):
    """`hooked-vivit analyze --model DIR` on a random VideoMAE (no CLS, mean pooling): results.json
    holds the recovery read at the pooled representation, equal to a hand-written patch, and the
    token DLA through mean pooling, equal to the exact pooled decomposition."""
    from hooked_vivit.analysis import pipeline
    from hooked_vivit.cli import main

    hf = make_hf(SQUARE_MAE, seed=3)
    hf.save_pretrained(tmp_path / "mae")
    model = HookedVideoTransformer.from_pretrained(tmp_path / "mae")
    assert isinstance(model, HookedVideoMAE)
    out = tmp_path / "report"
    seed = 4_000_000
    assert (
        main(
            [
                "analyze",
                "--model",
                str(tmp_path / "mae"),
                "--domain",
                "bowling",
                "--seed",
                str(seed),
                "--probe-pairs",
                "6",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    assert (
        data["recovery"]["readout"] == data["deltas"]["readout"] == "token mean" and data["dla"]["cls_source"] is None
    )
    assert (
        data["cls_attention"]["attention_to_cls"] is None
        and "cls" not in data["probes"]
        and len(data["probes"]["mean"]) == 3
    )
    # Every number in a caption is the value it cites, and no caption speaks of a CLS token this model lacks.
    from tests.test_analysis import check_captions

    check_captions(data, (data["model"], *data["pair"]["names"], data["dla"]["class_name"]))
    texts = " ".join(c["text"] for c in data["captions"])
    assert "CLS" not in texts and "token mean attention" in texts

    pair = pipeline.rendered_pair(model, "bowling", seed)
    pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)
    last = "blocks.1.hook_resid_post"
    with torch.no_grad():
        _, clean = model.run_with_cache(pos)
        _, corrupt = model.run_with_cache(neg)
    for comp in ("attn", "mlp"):
        for l in range(2):
            name = f"blocks.{l}.hook_{comp}_out"
            grabbed = {}

            def patch(act, hook, name=name):
                act[:] = clean[name]
                return act

            def grab(act, hook):
                grabbed["r"] = act.mean(1)

            with torch.no_grad():
                model.run_with_hooks(neg, fwd_hooks=[(name, patch), (last, grab)])
            # float32 (analyze ran on the float32 checkpoint): both sides carry several float32 roundings
            # of the pooled vectors, times the projection's conditioning (tests/tolerances.py)
            a, c, k = grabbed["r"][0], clean[last].mean(1)[0], corrupt[last].mean(1)[0]
            brute = pytest.approx(float(projection(a, c, k)), abs=fp32_input_error(projection, a, c, k, slack=SAFETY))
            assert data["recovery"]["variants"]["cls_projection"][comp][l] == brute
            assert data["recovery"]["projection"][comp][l] == brute

    # Token DLA per head through mean pooling: each layer's heads plus its centred b_O give the
    # layer's attn_out term of the exact pooled decomposition.
    c = data["dla"]["class"]
    terms, labels, _ = model.pooled_logit_terms(clean, c)
    scale = clean["ln_final.hook_scale"][0, 0]
    direction = model.ln_final.w * model.W_U[:, c]
    for l in range(2):
        b_O = model.blocks[l].attn.b_O
        bias_term = float((b_O - b_O.mean()).detach() @ direction.detach() / scale)
        attn_term = float(terms[labels.index(f"{l}_attn_out"), 0].sum())
        assert sum(data["dla"]["per_head"][l]) + bias_term == pytest.approx(attn_term, abs=1e-5)
    assert data["dla"]["logit"] == pytest.approx(float(model(pos)[0, c]), abs=1e-5)
    # The readout attention is the mean query row of the pattern: a probability over the sources.
    grid = np.array(data["cls_attention"]["grid"])  # [layers, heads, slots, rows, cols]
    assert grid.shape == (2, 2, 4, 4, 4) and np.allclose(grid.sum((2, 3, 4)), 1, atol=1e-5)
    assert np.allclose(grid[1, 0].flatten(), clean["pattern", 1][0, 0].mean(0).numpy(), atol=1e-6)


def test_viewer_attribution_and_probes_on_videomae(tiny):
    """The viewer's attention map is the readout's (the mean query row: no CLS); attribution
    patching's per-(position, head) scores equal a hand-written gradient product; probe features
    have no "cls" kind and their "mean" is the token mean."""
    from hooked_vivit import viewer
    from hooked_vivit.analysis import experiments as ex
    from hooked_vivit.causal.attribution import attribution_patch
    from hooked_vivit.causal.metrics import LogitDiff

    model, clean, corrupted, clean_cache = tiny
    maps = viewer.token_maps(model, clean, "cls_attention")
    grid = model.cfg.grid
    assert maps.shape == (2, 3, *grid.shape)
    expected = torch.stack([clean_cache["pattern", l][0].mean(1) for l in range(2)])  # [L, H, P]
    np.testing.assert_allclose(maps, grid.unflatten(expected)[1].numpy(), atol=1e-6)

    metric = LogitDiff(2, 4)
    result = attribution_patch(
        model, clean, corrupted, metric, acts=("resid_pre", "z", "pattern"), clean_cache=clean_cache
    )
    assert result.scores["z"].shape == (2, model.cfg.n_ctx, 3) and result.scores["pattern"].shape == (
        2,
        model.cfg.n_ctx,
        3,
    )
    _, corrupt_cache = model.run_with_cache(corrupted)
    for act in ("z", "pattern"):
        name = f"blocks.1.attn.hook_{act}"
        leaf = corrupt_cache[name].clone().requires_grad_(True)

        def swap(a, hook, leaf=leaf):
            return leaf

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, swap)])
        (grad,) = torch.autograd.grad(metric(logits).sum(), leaf)
        prod = ((clean_cache[name] - corrupt_cache[name]) * grad)[0]
        manual = prod.sum(-1) if act == "z" else prod.sum(-1).transpose(0, 1)  # [P, H]
        torch.testing.assert_close(result.scores[act][1], manual.detach(), atol=1e-6, rtol=1e-5)

    feats = ex.probe_features(model, [(clean, corrupted)])
    assert feats.cls is None
    torch.testing.assert_close(feats.mean[0, 0], clean_cache["resid_pre", 0][0].mean(0))


def test_token_zero_is_a_patch_with_pixels(tiny):
    """Without CLS, token 0 sees pixels: the pixel box and mask of token 0 are its tubelet, and
    black fills with the model's own black pixel."""
    from hooked_vivit.causal.ablation import PixelBox, ablate_pixel_mask, token_pixel_mask

    model, clean, *_ = tiny
    grid = model.cfg.grid
    assert PixelBox.from_tokens(grid, [0]) == PixelBox(0, 2, 0, 12, 0, 7)
    mask = token_pixel_mask(grid, [0], 5, 36, 28)
    assert mask.sum() == 2 * 12 * 7 and mask[:2, :12, :7].all()
    black = ablate_pixel_mask(clean, mask, mode="black", config=model)
    frames = np.zeros((5, 36, 28, 3), dtype=np.uint8)
    torch.testing.assert_close(black[0, :2, :, :12, :7], video.preprocess(frames, config=model.cfg)[0, :2, :, :12, :7])
    assert torch.equal(black[0, 2:], clean[0, 2:])
