"""The SAE activation source (no SAELens needed): every token once, each mapped to its own pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from hooked_vivit.sae.activations import PROVENANCE_COLUMNS, ActivationSource, SyntheticClips, token_provenance
from tests.tolerances import fp32_tol


class RandomClips(Dataset):
    def __init__(self, cfg, n: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, cfg.num_frames, 3, *cfg.image_size, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i


def test_provenance_maps_every_token_to_its_pixels(tiny):
    """hook_embed of a patch token is the Conv3d of exactly the pixels its provenance names
    (TokenGrid.pixel_box), recomputed by hand for every token after shuffling; CLS is the CLS
    parameter; every (clip, token) comes out exactly once."""
    model, _, _ = tiny
    clips = RandomClips(model.cfg, 5)
    src = ActivationSource(model, "hook_embed", clips, batch_size=64, clip_batch=2, buffer_tokens=150, seed=3)
    grid = model.cfg.grid
    W, b = model.embed.W_E.detach(), model.embed.b_E.detach()
    seen = []
    for acts, prov in src:
        assert prov.shape[1] == len(PROVENANCE_COLUMNS)
        for a, (clip, token, slot, row, col, is_prefix) in zip(acts, prov.tolist()):
            seen.append((clip, token))
            if is_prefix:
                assert (slot, row, col) == (-1, -1, -1)
                torch.testing.assert_close(a, model.embed.cls_token.detach(), rtol=0, atol=0)
                continue
            assert grid.index(slot, row, col) == token
            frames, rows, cols = grid.pixel_box(token)
            box = clips.x[clip][list(frames), :, rows, cols]  # [t, c, h, w]
            terms = W.double() * box.double().transpose(0, 1)  # [d, c, t, h, w]
            expected = terms.flatten(1).sum(1) + b.double()
            # float32 Conv3d: a sum of c t h w terms and the bias in its own order (tests/tolerances.py)
            tol = fp32_tol((terms.abs().flatten(1).sum(1) + b.double().abs()).max(), terms[0].numel() + 1)
            torch.testing.assert_close(a.double(), expected, rtol=0, atol=tol)
    assert len(seen) == len(set(seen)) == src.n_tokens == 5 * grid.n_ctx
    first = [c for c, _ in seen[: grid.n_ctx]]
    assert len(set(first)) > 1  # shuffled across clips, not handed out clip by clip


def test_hook_z_is_flattened_and_prefix_can_be_dropped(tiny):
    model, x, _ = tiny
    clips = RandomClips(model.cfg, 2)
    src = ActivationSource(model, "blocks.1.attn.hook_z", clips, batch_size=32, shuffle=False, include_prefix=False)
    assert src.d_in == model.cfg.n_heads * model.cfg.d_head
    acts, prov = src.collect()
    _, cache = model.run_with_cache(clips.x, names_filter=["blocks.1.attn.hook_z"])
    z = cache["blocks.1.attn.hook_z"][:, 1:].flatten(2).reshape(-1, src.d_in)
    torch.testing.assert_close(acts, z)
    assert not prov[:, 5].any() and (prov[:, 1] >= 1).all()


def test_token_provenance_layout(tiny):
    model, _, _ = tiny
    grid = model.cfg.grid
    prov = token_provenance(grid, torch.tensor([7, 9]))
    assert prov.shape == (2 * grid.n_ctx, 6)
    assert prov[0].tolist() == [7, 0, -1, -1, -1, 1]
    last = prov[grid.n_ctx - 1].tolist()
    assert last == [7, grid.n_ctx - 1, grid.n_frame_slots - 1, grid.n_rows - 1, grid.n_cols - 1, 0]
    assert prov[grid.n_ctx, 0] == 9


def test_synthetic_clip_tokens_see_the_rendered_object():
    """On a rendered clip, the token provenance names for the ball's pixels (synthetic masks) is the
    token whose pixel box holds them: the grid and the render agree on rows and columns."""
    from hooked_vivit import organism, synthetic

    model = organism.load()
    clips = SyntheticClips(model.cfg, 1, actions=["bowling"])
    spec = clips.specs[0]
    clip = synthetic.render_clip(
        spec["action"],
        spec["seed"],
        outcome=spec["outcome"],
        num_frames=model.cfg.num_frames,
        size=model.cfg.image_size[0],
    )
    np.testing.assert_array_equal(clips.frames(0), clip.frames)
    grid = model.cfg.grid
    mask = clip.masks["ball"]
    frame = int(np.argmax(mask.reshape(len(mask), -1).sum(1)))
    ys, xs = np.nonzero(mask[frame])
    token = grid.token_at(frame, int(ys[0]), int(xs[0]))
    prov = token_provenance(grid, torch.tensor([0]))[token].tolist()
    frames, rows, cols = grid.pixel_box(token)
    assert frame in frames and rows.start <= ys[0] < rows.stop and cols.start <= xs[0] < cols.stop
    assert prov[2:5] == [
        frame // model.cfg.tubelet_size[0],
        int(ys[0]) // model.cfg.tubelet_size[1],
        int(xs[0]) // model.cfg.tubelet_size[2],
    ]


def test_bad_hooks_are_refused(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="attention map"):
        ActivationSource(model, "blocks.0.attn.hook_pattern", RandomClips(model.cfg, 1))
    with pytest.raises(KeyError, match="unknown hook"):
        ActivationSource(model, "blocks.9.hook_resid_post", RandomClips(model.cfg, 1))


def test_shard_source_reads_extract_shards(tiny, tmp_path):
    """Shards in hooked-vivit extract's format (index.json + safetensors with <hook>, row.clip,
    row.token; written here by hand) come out as the same rows, with the same provenance, as
    the activation source computing them."""
    import json

    from safetensors.torch import save_file

    from hooked_vivit.sae.activations import ShardSource

    model, _, _ = tiny
    grid = model.cfg.grid
    hook = "blocks.1.hook_mlp_out"
    clips = RandomClips(model.cfg, 3)
    acts, prov = ActivationSource(model, hook, clips, shuffle=False).collect()
    per = grid.n_ctx
    shards = []
    for k, (first, stop) in enumerate([(0, 2), (2, 3)]):
        rows = slice(first * per, stop * per)
        save_file(
            {
                hook: acts[rows].contiguous(),
                "row.clip": prov[rows, 0].contiguous(),
                "row.token": prov[rows, 1].contiguous(),
            },
            str(tmp_path / f"shard-{k:05d}.safetensors"),
        )
        shards.append({"file": f"shard-{k:05d}.safetensors", "clips": [first, stop], "rows": (stop - first) * per})
    tokens = [
        {"token": t, "frame_slot": None, "row": None, "col": None}
        if grid.coords(t) is None
        else {"token": t, "frame_slot": grid.coords(t)[0], "row": grid.coords(t)[1], "col": grid.coords(t)[2]}
        for t in range(per)
    ]
    (tmp_path / "index.json").write_text(
        json.dumps(
            {
                "format": "hooked-vivit-activations",
                "hooks": {hook: {"shape": [model.cfg.d_model]}},
                "positions": {"tokens": tokens},
                "shards": shards,
            }
        )
    )
    src = ShardSource(tmp_path, hook, batch_size=50, buffer_tokens=120)
    a2, p2 = src.collect()
    assert torch.equal(a2, acts) and torch.equal(p2, prov)
    got = sorted((tuple(p.tolist()), tuple(a.tolist())) for a_b, p_b in src for a, p in zip(a_b, p_b))
    assert got == sorted((tuple(p.tolist()), tuple(a.tolist())) for a, p in zip(acts, prov))
    with pytest.raises(KeyError, match="was not extracted"):
        ShardSource(tmp_path, "blocks.0.hook_resid_post")
