"""hooked_vivit.sae through SAELens: splicing, training (planted feature), disk format, the report command.

SAELens 6 needs TransformerLens 3.x: these tests run in the [sae] environment and skip elsewhere."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch.utils.data import Dataset

sae_lens = pytest.importorskip("sae_lens")

from hooked_vivit.sae.activations import ActivationSource  # noqa: E402
from hooked_vivit.sae.splice import splice  # noqa: E402
from hooked_vivit.sae.train import ARCHITECTURES, _to_inference, load_sae, save_sae, train_sae, training_sae  # noqa: E402

HOOK = "blocks.0.hook_resid_post"


class RandomClips(Dataset):
    def __init__(self, cfg, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, cfg.num_frames, 3, *cfg.image_size, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i


def random_sae(d_in: int, d_sae: int = 16, k: int = 4, seed: int = 0):
    sae = training_sae("topk", d_in, d_sae, k=k, seed=seed)
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(seed))  # non-zero everywhere
    return _to_inference(sae)


def test_splice_with_error_term_is_exact_and_exposes_feature_hooks(tiny):
    model, x, _ = tiny
    sae = random_sae(model.cfg.d_model)
    plain = model(x)
    with torch.inference_mode():
        _, ref = model.run_with_cache(x, names_filter=[HOOK])
    names = [f"{HOOK}.hook_sae_acts_post", f"{HOOK}.hook_sae_error", f"{HOOK}.hook_sae_recons"]
    with splice(model, sae, HOOK, use_error_term=True):
        logits, cache = model.run_with_cache(x, names_filter=names + [HOOK])
    assert torch.equal(logits, plain)
    assert torch.equal(cache[HOOK], ref[HOOK])
    acts = ref[HOOK]
    with torch.no_grad():
        feats = sae.encode(acts)
        recon = sae.decode(feats)
    torch.testing.assert_close(cache[names[0]], feats)
    torch.testing.assert_close(cache[names[2]], recon)
    torch.testing.assert_close(cache[names[1]], acts - recon)
    assert feats.shape == (*acts.shape[:2], 16) and int((feats > 0).sum(-1).max()) <= 4
    # Leaving the block restores the model.
    assert not any(".hook_sae_" in n for n in model.hook_dict)
    assert torch.equal(model(x), plain)


def test_splice_without_error_term_runs_on_the_reconstruction(tiny):
    model, x, _ = tiny
    sae = random_sae(model.cfg.d_model)
    with torch.inference_mode():
        resid = model(x, stop_at_layer=1)  # = blocks.0.hook_resid_post
        expected = model(sae.decode(sae.encode(resid)), start_at_layer=1)
        with splice(model, sae, HOOK, use_error_term=False):
            spliced = model(x)
    torch.testing.assert_close(spliced, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(spliced, model(x))


def test_feature_edit_with_error_term_moves_the_activation_by_its_decoder_row(tiny):
    """Zeroing feature f at one token with the error term on changes the hook's output there by
    exactly -a_f * W_dec[f] (the error term absorbs the rest), and nowhere else."""
    model, x, _ = tiny
    sae = random_sae(model.cfg.d_model)
    with torch.inference_mode():
        _, ref = model.run_with_cache(x, names_filter=[HOOK])
        feats = sae.encode(ref[HOOK])
    b, t = 1, 5
    f = int(feats[b, t].argmax())

    def zero(act, hook):
        act[b, t, f] = 0
        return act

    with splice(model, sae, HOOK, use_error_term=True):
        with model.hooks(fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", zero)]):
            _, cache = model.run_with_cache(x, names_filter=[HOOK])
    delta = cache[HOOK] - ref[HOOK]
    expected = torch.zeros_like(delta)
    expected[b, t] = -feats[b, t, f] * sae.W_dec[f]
    torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-5)


def test_planted_feature_is_recovered(tiny):
    """A known direction added (magnitude 4x the typical token norm) on a known region (row 0,
    columns 0-1, every frame slot) of blocks.0.hook_resid_post: a TopK SAE trained through
    SAETrainer has a feature whose decoder points along it and which fires on that region only."""
    model, _, _ = tiny
    grid = model.cfg.grid
    gen = torch.Generator().manual_seed(5)
    direction = torch.randn(model.cfg.d_model, generator=gen)
    direction /= direction.norm()
    region = torch.zeros(grid.n_ctx, dtype=torch.bool)
    for s in range(grid.n_frame_slots):
        for c in (0, 1):
            region[grid.index(s, 0, c)] = True
    clips = RandomClips(model.cfg, 160, seed=1)
    with torch.inference_mode():
        scale = model(clips.x[:8], stop_at_layer=1).norm(dim=-1).mean()

    def plant(act, hook):
        return act + region[None, :, None].to(act.dtype) * 4 * scale * direction

    model.add_hook(HOOK, plant, is_permanent=True)
    try:
        src = ActivationSource(model, HOOK, clips, batch_size=256, buffer_tokens=4096, seed=0)
        sae, run = train_sae(src, architecture="topk", d_sae=32, k=4, lr=3e-3, epochs=8, seed=0)
        acts, prov = ActivationSource(model, HOOK, RandomClips(model.cfg, 20, seed=2), shuffle=False).collect()
    finally:
        model.reset_hooks(including_permanent=True)
    assert run["steps"] == 8 * (src.n_tokens // 256)
    w = sae.W_dec.detach() / sae.W_dec.detach().norm(dim=-1, keepdim=True)
    cos = w @ direction
    f = int(cos.argmax())
    assert cos[f] > 0.9
    with torch.no_grad():
        fires = sae.encode(acts)[:, f] > 0
    planted = region[prov[:, 1]]
    assert fires[planted].float().mean() > 0.95
    assert fires[~planted].float().mean() < 0.05


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_trains_and_round_trips_through_saelens_disk_format(tiny, tmp_path, architecture):
    model, _, _ = tiny
    src = ActivationSource(model, HOOK, RandomClips(model.cfg, 12), batch_size=128, buffer_tokens=512)
    sae, run = train_sae(src, architecture=architecture, d_sae=16, k=4, epochs=1, metadata={"hook_name": HOOK})
    assert run["steps"] == src.n_tokens // 128
    save_sae(sae, tmp_path / "sae", {"hook": HOOK, "note": "test"})
    loaded = sae_lens.SAE.load_from_disk(tmp_path / "sae")
    again, prov = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and prov == {"hook": HOOK, "note": "test"}
    assert loaded.cfg.metadata.hook_name == HOOK
    for name, p in sae.state_dict().items():
        assert torch.equal(p, loaded.state_dict()[name]) and torch.equal(p, again.state_dict()[name])
    expected = {
        "standard": "StandardSAE",
        "topk": "TopKSAE",
        "batchtopk": "JumpReLUSAE",
        "jumprelu": "JumpReLUSAE",
        "matryoshka": "JumpReLUSAE",
    }
    assert type(loaded).__name__ == expected[architecture]


def test_report_command_writes_html_offline(tmp_path):
    """The shipped SAE's report: one self-contained HTML (images inline, no URL fetched), and the
    top minimal-pair feature's difference in results.json equals a brute-force recomputation."""
    from hooked_vivit import organism, synthetic
    from hooked_vivit.analysis.pipeline import model_pixels
    from hooked_vivit.cli import main

    out = tmp_path / "report"
    assert main(["sae", "report", "--out", str(out), "--clips", "3", "--features", "2"]) == 0
    page = (out / "report.html").read_text()
    assert "Feature " in page and '<img src="data:image/png;base64,' in page
    assert not re.search(r"(src|href)=[\"'](https?:)?//", page)
    res = json.loads((out / "results.json").read_text())
    sae, prov = load_sae(res["sae"])
    model = organism.load()
    pos, neg, meta = synthetic.render_pair(
        "bowling", 4_000_000, num_frames=model.cfg.num_frames, size=model.cfg.image_size[0]
    )
    hook = prov["hook"]
    with torch.inference_mode():
        _, cp = model.run_with_cache(model_pixels(model, pos), names_filter=[hook])
        _, cn = model.run_with_cache(model_pixels(model, neg), names_filter=[hook])
        fp, fn = sae.encode(cp[hook][0]), sae.encode(cn[hook][0])
    slot0 = meta["divergence_frame"] // model.cfg.tubelet_size[0]
    first = 1 + slot0 * model.cfg.grid.n_rows * model.cfg.grid.n_cols  # after CLS, from the divergence slot on
    diff = (fp[first:] - fn[first:]).sum(0)
    top = res["pair_features"][0]
    assert top["feature"] == int(diff.abs().argmax())
    assert top["difference"] == pytest.approx(float(diff[top["feature"]]), rel=1e-4, abs=1e-5)
