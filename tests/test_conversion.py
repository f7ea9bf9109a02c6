"""Checkpoint conversion and loading: both HF key layouts, with and without the vivit. prefix, all
three file formats, backbones, round trips, and clear errors for broken checkpoints."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file
from transformers import VivitForVideoClassification

from hooked_vivit import HookedViViT, HookedViViTConfig
from tests.conftest import SMALL_CONFIGS, make_hf, max_rel, pixels
from weights_conversion import CheckpointError, convert_vivit_weights, hooked_to_hf_weights

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]


def _write_dir(path, config: dict, state_dict: dict, fmt: str):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    if fmt == "safetensors":
        save_file(state_dict, path / "model.safetensors")
    elif fmt == "bin":
        torch.save(state_dict, path / "pytorch_model.bin")
    elif fmt == "sharded":
        keys = sorted(state_dict)
        halves = {
            "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
            "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
        }
        weight_map = {}
        for shard, ks in halves.items():
            save_file({k: state_dict[k] for k in ks}, path / shard)
            weight_map.update({k: shard for k in ks})
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
@pytest.mark.parametrize("layout", ["transformers", "hub"])
@pytest.mark.parametrize("prefix", [True, False])
def test_load_every_layout_and_format(tmp_path, fmt, layout, prefix):
    hf = make_hf(KW)
    reference = HookedViViT.from_hf_model(hf)
    sd = hooked_to_hf_weights(reference.state_dict(), reference.cfg, layout=layout, prefix=prefix)
    if layout == "hub":
        assert (
            "vivit.encoder.layer.0.attention.attention.query.weight" in sd
            or "encoder.layer.0.attention.attention.query.weight" in sd
        )
    else:
        assert any(k.endswith("layers.0.attention.q_proj.weight") for k in sd)
    path = _write_dir(tmp_path / "ckpt", hf.config.to_dict(), sd, fmt)
    model = HookedViViT.from_pretrained(path)
    x = pixels(KW)
    with torch.no_grad():
        assert max_rel(model(x), hf(x).logits) <= 1e-5


def test_hub_layout_is_what_transformers_reads(tmp_path):
    """Ground truth for the hub layout: transformers itself loads our hub-layout file into the
    same weights (through its own checkpoint conversion), for every parameter."""
    hf = make_hf(KW)
    hooked = HookedViViT.from_hf_model(hf)
    sd = hooked_to_hf_weights(hooked.state_dict(), hooked.cfg, layout="hub")
    assert "vivit.encoder.layer.1.output.dense.weight" in sd
    path = _write_dir(tmp_path / "hub", hf.config.to_dict(), sd, "safetensors")
    reloaded = VivitForVideoClassification.from_pretrained(path)
    for key, value in hf.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def test_transformers_save_pretrained_directory_loads(tmp_path):
    hf = make_hf(KW)
    hf.save_pretrained(tmp_path / "hf")
    model = HookedViViT.from_pretrained(tmp_path / "hf")
    x = pixels(KW)
    with torch.no_grad():
        assert max_rel(model(x), hf(x).logits) <= 1e-5


@pytest.mark.parametrize("layout", ["transformers", "hub"])
def test_round_trip_is_exact(layout):
    hf = make_hf(SMALL_CONFIGS["nobias_1layer_5heads"])
    cfg = HookedViViTConfig.from_hf_config(hf.config)
    original = {k: v.clone() for k, v in hf.state_dict().items()}
    hooked = convert_vivit_weights(original, cfg)
    back = hooked_to_hf_weights(hooked, cfg, layout=layout)
    again = convert_vivit_weights(back, cfg)
    assert hooked.keys() == again.keys()
    for k in hooked:
        assert torch.equal(hooked[k], again[k]), k
    if layout == "transformers":
        assert back.keys() == original.keys()
        for k in original:
            assert torch.equal(back[k], original[k]), k


def test_backbone_without_classifier(tmp_path):
    hf = make_hf(KW, backbone=True)
    assert not any(k.startswith("classifier") for k in hf.state_dict())
    hf.save_pretrained(tmp_path / "backbone")
    model = HookedViViT.from_pretrained(tmp_path / "backbone")
    assert model.cfg.n_classes == 0 and model.unembed is None
    x = pixels(KW)
    with torch.no_grad():
        ref = hf(x).last_hidden_state[:, 0]  # the pooler (dense + tanh) is dropped
        assert max_rel(model(x), ref) <= 1e-5
    with pytest.raises(ValueError, match="no classifier head"):
        model.tokens_to_residual_directions(0)


@pytest.mark.parametrize("layout", ["transformers", "hub"])
@pytest.mark.parametrize("prefix", [True, False])
def test_shapes_and_keys_errors_name_each_key_as_the_checkpoint_spells_it(layout, prefix):
    hf = make_hf(KW)
    reference = HookedViViT.from_hf_model(hf)
    cfg = reference.cfg
    sd = hooked_to_hf_weights(reference.state_dict(), cfg, layout=layout, prefix=prefix)
    pre = "vivit." if prefix else ""
    fc1, q = (
        ("encoder.layer.1.intermediate.dense.weight", "encoder.layer.0.attention.attention.query.weight")
        if layout == "hub"
        else ("layers.1.mlp.fc1.weight", "layers.0.attention.q_proj.weight")
    )
    del sd[pre + fc1], sd["classifier.bias"]
    sd[pre + "encoder.layer.0.extra.weight" if layout == "hub" else pre + "layers.0.extra.weight"] = torch.zeros(3)
    sd[pre + q] = torch.zeros(5, 24)
    with pytest.raises(CheckpointError) as err:
        convert_vivit_weights(sd, cfg)
    msg = str(err.value)
    # The user's own spelling (layout and prefix; the classifier is never prefixed), not the internal one.
    assert f"missing keys (2):\n  {pre}{fc1}\n  classifier.bias" in msg
    assert f"unexpected keys (1):\n  {pre}{'encoder.layer' if layout == 'hub' else 'layers'}.0.extra.weight" in msg
    assert f"{pre}{q}: checkpoint (5, 24) vs expected (24, 24)" in msg


def test_one_key_table_serves_both_directions():
    from weights_conversion import vivit

    hub = hooked_to_hf_weights(
        HookedViViT.from_hf_model(make_hf(KW)).state_dict(),
        HookedViViTConfig.from_hf_config(make_hf(KW).config),
        layout="hub",
        prefix=False,
    )
    new = vivit.normalize_hf_keys(hub)
    assert sorted(new) == sorted(vivit.expected_hf_shapes(HookedViViTConfig.from_hf_config(make_hf(KW).config)))
    from weights_conversion.common import rename_key

    assert {rename_key(k, vivit._NEW_TO_HUB) for k in new} == set(hub)
    assert (
        rename_key("encoder.layer.1.attention.output.dense.weight", vivit._HUB_TO_NEW)
        == "layers.1.attention.o_proj.weight"
    )
    assert rename_key("encoder.layer.1.output.dense.weight", vivit._HUB_TO_NEW) == "layers.1.mlp.fc2.weight"


def test_config_mismatch_is_reported_per_key():
    hf = make_hf(KW)
    cfg = HookedViViTConfig.from_hf_config({**hf.config.to_dict(), "num_frames": 8})
    with pytest.raises(
        CheckpointError,
        match=r"vivit.embeddings.position_embeddings: checkpoint \(1, 49, 24\) vs expected \(1, 97, 24\)",
    ):
        convert_vivit_weights(hf.state_dict(), cfg)


def test_kinetics_names_replace_placeholder_labels():
    cfg = HookedViViTConfig.from_hf_config(
        {"model_type": "vivit", "id2label": {str(i): f"LABEL_{i}" for i in range(400)}}
    )
    assert cfg.n_classes == 400 and cfg.id2label[31] == "bowling"
    assert cfg.label2id["bowling"] == 31
    small = HookedViViTConfig.from_hf_config(make_hf(KW).config)
    assert small.id2label[3] == "LABEL_3"


def test_bin_is_read_with_weights_only(tmp_path):
    hf = make_hf(KW)
    path = _write_dir(tmp_path / "evil", hf.config.to_dict(), {}, "safetensors")
    (path / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return (print, ("arbitrary code ran",))

    with open(path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": Payload()}, f)
    with pytest.raises(ValueError, match="weights_only=True"):
        HookedViViT.from_pretrained(path)


def test_missing_files_and_hub_offline_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text('{"model_type": "vivit"}')
    with pytest.raises(FileNotFoundError, match="no weights in .*expected one of"):
        HookedViViT.from_pretrained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        HookedViViT.from_pretrained(tmp_path / "nowhere" / "deeper" / "still")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(OSError, match=r"huggingface-cli download google/vivit-b-16x2-kinetics400"):
        HookedViViT.from_pretrained("google/vivit-b-16x2-kinetics400")


def test_save_pretrained_refuses_to_clobber_and_is_whole(tmp_path):
    model = HookedViViT.from_hf_model(make_hf(KW))
    out = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == [".hooked-vivit-manifest.json", "config.json", "model.safetensors"]
    with pytest.raises(FileExistsError):
        model.save_pretrained(tmp_path / "saved")
    model.save_pretrained(tmp_path / "saved", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temporary left behind
    hf = VivitForVideoClassification.from_pretrained(out)  # transformers reads what we write
    x = pixels(KW)
    with torch.no_grad():
        assert max_rel(model(x), hf(x).logits) <= 1e-5
