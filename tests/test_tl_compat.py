"""What a TransformerLens user reaches for first, on TransformerLens 3.9 and 4.x: backward caching,
the logit lens, the set_use_* switches, the patching helpers by their TL names, exact logit
attribution, torch.func / torch.compile, token labels and circuitsvis."""

from __future__ import annotations

import importlib.metadata
import warnings

import pytest
import torch
import torch.nn.functional as F
from transformer_lens import patching as tl_patching

from hooked_vivit import HookedViViT, compat
from hooked_vivit.causal import patching
from hooked_vivit.causal.metrics import ClassLogit
from tests.conftest import SMALL_CONFIGS, make_hf, pixels

KW = SMALL_CONFIGS["nonsquare_2x8x8_3heads"]
TL4 = compat.TL_MAJOR >= 4


@pytest.fixture(scope="module")
def hf():
    return make_hf(KW)


@pytest.fixture
def model(hf):
    return HookedViViT.from_hf_model(hf)


@pytest.fixture(scope="module")
def x():
    return pixels(KW)


# ------------------------------------------------------------------------------------------- compat
def test_compat_reads_the_installed_transformer_lens():
    installed = importlib.metadata.version("transformer-lens")
    assert compat.TL_VERSION_STRING == installed
    assert compat.TL_VERSION == tuple(int(p) for p in installed.split(".")[:2])
    # Each switch says what the installed TransformerLens really has.
    assert (compat.PatchingResult is not None) == hasattr(tl_patching, "PatchingResult")
    assert compat.HAS_DIRECT_PATH == hasattr(tl_patching, "get_act_patch_direct_path")
    from transformer_lens import ActivationCache

    assert compat.HAS_LOGIT_LENS == hasattr(ActivationCache, "logit_lens")
    assert compat.TL_MAJOR in (3, 4)


def test_per_example_patching_on_each_generation(model, x):
    _, clean_cache = model.run_with_cache(x)
    corrupted = x + 0.3
    if TL4:
        res = patching.get_act_patch_resid_mid(model, corrupted, clean_cache, ClassLogit(2), reduce="none")
        assert res.values.shape == (model.cfg.n_layers, model.cfg.n_ctx, 2)
    else:
        with pytest.raises(TypeError, match="transformer-lens >= 4"):
            patching.get_act_patch_resid_mid(model, corrupted, clean_cache, ClassLogit(2), reduce="none")
    # reduce="scalar" is TL 3's only behaviour, so it is accepted on both.
    scalar = patching.get_act_patch_resid_mid(model, corrupted, clean_cache, ClassLogit(2), reduce="scalar")
    assert scalar.shape == (model.cfg.n_layers, model.cfg.n_ctx)


# ------------------------------------------------------------------------------------------- forward
def test_return_types_and_loss(model, x):
    logits = model(x)
    labels = torch.tensor([1, 4])
    loss = model(x, return_type="loss", labels=labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    both_logits, both_loss = model(x, "both", labels=[model.cfg.id2label[1], 4])  # names work too
    torch.testing.assert_close(both_logits, logits)
    torch.testing.assert_close(both_loss, loss)
    torch.testing.assert_close(model(x, return_type="loss", labels=3), F.cross_entropy(logits, torch.tensor([3, 3])))
    assert model(x, return_type=None) is None
    with pytest.raises(ValueError, match="labels="):
        model(x, return_type="loss")
    with pytest.raises(ValueError, match="return_type must be"):
        model(x, return_type="probs")
    with pytest.raises(ValueError, match="one per batch row"):
        model(x, return_type="loss", labels=[1, 2, 3])


def test_run_with_cache_incl_bwd_grads_equal_autograd(model, x):
    labels = torch.tensor([1, 4])
    names = [
        "blocks.0.hook_resid_pre",
        "blocks.1.attn.hook_pattern",
        "blocks.1.hook_mlp_out",
        "ln_final.hook_normalized",
    ]
    loss, cache = model.run_with_cache(x, return_type="loss", labels=labels, incl_bwd=True, names_filter=names)
    for name in names:
        assert name + "_grad" in cache.cache_dict

    acts = {}

    def keep(act, hook):
        acts[hook.name] = act
        return act

    model.zero_grad()
    reference = model.run_with_hooks(x, return_type="loss", labels=labels, fwd_hooks=[(n, keep) for n in names])
    torch.testing.assert_close(loss, reference)
    grads = torch.autograd.grad(reference, [acts[n] for n in names])
    for name, grad in zip(names, grads):
        assert grad.abs().max() > 0
        torch.testing.assert_close(cache[name + "_grad"], grad, rtol=1e-5, atol=1e-7)


def test_incl_bwd_without_a_scalar_says_how(model, x):
    with pytest.raises(ValueError, match="return_type='loss' and labels="):
        model.run_with_cache(x, incl_bwd=True)


def test_vmap_over_the_forward(model, x):
    with torch.no_grad():
        batched = model(x)
        mapped = torch.func.vmap(model)(x[:, None])  # one clip per vmapped call
    torch.testing.assert_close(mapped[:, 0], batched, rtol=1e-5, atol=1e-5)
    # Per-clip input gradients through torch.func, as for per-sample saliency.
    grad_fn = torch.func.vmap(torch.func.grad(lambda clip: model(clip[None])[0, 2]))
    per_clip = grad_fn(x)
    xs = x.clone().requires_grad_(True)
    model(xs)[:, 2].sum().backward()
    torch.testing.assert_close(per_clip, xs.grad, rtol=1e-4, atol=1e-6)
    # Outside a transform the finiteness check still runs.
    bad = x.clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(bad)


def test_torch_compile_ignores_hooks_added_after_compiling(model, x):
    """The behaviour README documents: a compiled model keeps the hooks it was compiled with
    (PyTorch's skip_nnmodule_hook_guards); with the guards on it recompiles and sees new ones."""
    dynamo = pytest.importorskip("torch._dynamo")

    def zero(act, hook):
        return act * 0

    with torch.no_grad():
        plain = model(x)
        dynamo.reset()
        compiled = torch.compile(model, backend="eager")
        torch.testing.assert_close(compiled(x), plain)
        model.add_hook("blocks.1.hook_mlp_out", zero)
        hooked = model(x)
        assert not torch.allclose(hooked, plain)
        torch.testing.assert_close(compiled(x), plain)  # the new hook is not seen
        model.reset_hooks()
        dynamo.reset()
        with dynamo.config.patch(skip_nnmodule_hook_guards=False):
            compiled = torch.compile(model, backend="eager")
            compiled(x)
            model.add_hook("blocks.1.hook_mlp_out", zero)
            torch.testing.assert_close(compiled(x), hooked)
        model.reset_hooks()
        dynamo.reset()


# ------------------------------------------------------------------------------------------- switches
def test_set_use_switches(model, x):
    logits = model(x)
    L = model.cfg.n_layers
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(x)
    torch.testing.assert_close(
        cache["result", 1].sum(2) + model.blocks[1].attn.b_O, cache["attn_out", 1], rtol=1e-5, atol=1e-5
    )
    model.set_use_attn_result(False)
    assert "blocks.1.attn.hook_result" not in model.run_with_cache(x)[1].cache_dict

    model.set_use_hook_mlp_in(True)
    out, cache = model.run_with_cache(x)
    torch.testing.assert_close(cache["blocks.0.hook_mlp_in"], cache["resid_mid", 0])
    torch.testing.assert_close(out, logits)
    model.set_use_hook_mlp_in(False)

    model.set_use_split_qkv_input(True)
    out, cache = model.run_with_cache(x)
    torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-5)
    for l in range(L):
        for m in "qkv":
            assert cache[f"blocks.{l}.hook_{m}_input"].shape == (
                2,
                model.cfg.n_ctx,
                model.cfg.n_heads,
                model.cfg.d_model,
            )
    torch.testing.assert_close(cache["blocks.1.hook_k_input"][:, :, 2], cache["resid_pre", 1])
    with pytest.raises(ValueError, match="exclusive"):
        model.set_use_attn_in(True)
    model.set_use_split_qkv_input(False)

    model.set_use_attn_in(True)
    out, cache = model.run_with_cache(x)
    torch.testing.assert_close(out, logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache["blocks.0.hook_attn_in"][:, :, 1], cache["resid_pre", 0])
    model.set_use_attn_in(False)


# ------------------------------------------------------------------------------------------- logit lens / attribution
def test_logit_lens_last_row_is_the_logits(model, x):
    logits, cache = model.run_with_cache(x)
    if not TL4:
        with pytest.raises(NotImplementedError, match="accumulated_resid"):
            cache.logit_lens()
        pytest.skip("ActivationCache.logit_lens exists from transformer-lens 4 on")
    result = cache.logit_lens()  # CLS by default: the token the classifier reads
    assert result.labels == ["0_pre", "1_pre", "final_post"]
    values = result.values
    assert values.shape == (model.cfg.n_layers + 1, 2, model.cfg.n_classes)
    torch.testing.assert_close(values[-1].reshape(logits.shape), logits, rtol=1e-5, atol=1e-5)
    # Each row is ln_final then the classifier on that layer's residual stream at CLS.
    resid = cache["resid_pre", 1][:, 0]
    torch.testing.assert_close(
        values[1].reshape(logits.shape), model.unembed(model.ln_final(resid[:, None])[:, 0]), rtol=1e-5, atol=1e-5
    )


def test_tl3_logit_lens_idiom_on_a_folded_model(model, x):
    model.process_weights_(fold_ln=True)
    logits, cache = model.run_with_cache(x)
    lens = cache.accumulated_resid(apply_ln=True, pos_slice=0) @ model.W_U + model.b_U
    torch.testing.assert_close(lens[-1], logits, rtol=1e-5, atol=1e-5)


def test_unfolded_logit_attrs_warn_and_process_weights_makes_them_exact(hf, x):
    model = HookedViViT.from_hf_model(hf)
    logits, cache = model.run_with_cache(x)
    stack = cache.decompose_resid(pos_slice=0)
    with pytest.warns(UserWarning, match="process_weights_"):
        attrs = cache.logit_attrs(stack, tokens=3, pos_slice=0)
    miss = (attrs.sum(0) + model.b_U[3] - logits[:, 3]).abs().max()
    assert miss > 1e-2  # the miss the warning is about is real

    model.process_weights_()  # TL's defaults: fold_ln and center_writing_weights
    assert model.cfg.folded_ln and model.cfg.centered_writing_weights and model.cfg.normalization_type == "LNPre"
    logits2, cache = model.run_with_cache(x)
    torch.testing.assert_close(logits2, logits, rtol=1e-4, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=0), tokens=3, pos_slice=0)
    torch.testing.assert_close(attrs.sum(0) + model.b_U[3], logits2[:, 3], rtol=1e-4, atol=1e-4)
    # Idempotent; the remaining step applies on its own.
    model.process_weights_()
    model.process_weights_(fold_ln=False, center_writing_weights=False, fold_value_biases=True)
    assert model.cfg.folded_value_biases and float(model.b_V.detach().abs().max()) == 0.0
    torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- patching twins
def test_twins_carry_transformer_lens_names_and_docstrings():
    names = [
        n
        for n in dir(tl_patching)
        if n.startswith("get_act_patch") and not n.endswith("_every") and "direct_path" not in n
    ]
    assert "get_act_patch_attn_head_pattern_dest_src_pos" in names
    for name in names:
        twin = getattr(patching, name)
        assert twin.__name__ == name
        assert "Video twin" in twin.__doc__ and getattr(tl_patching, name).__doc__.strip()[:60] in twin.__doc__
    assert patching.get_act_patch_direct_path.__name__ == "get_act_patch_direct_path"
    if compat.HAS_DIRECT_PATH:
        assert tl_patching.get_act_patch_direct_path.__doc__.strip()[:60] in patching.get_act_patch_direct_path.__doc__


def test_dest_src_pattern_twin_equals_brute_force():
    kw = SMALL_CONFIGS["nobias_1layer_5heads"]  # 13 tokens, 5 heads: 845 cells
    model = HookedViViT.from_hf_model(make_hf(kw))
    clean = pixels(kw, batch=1, seed=1)
    corrupted = clean + 0.5 * pixels(kw, batch=1, seed=2)
    _, clean_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[:, 1].mean() - logits[:, 0].mean()

    out = patching.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted, clean_cache, metric)
    P = model.cfg.n_ctx
    assert out.shape == (1, model.cfg.n_heads, P, P)
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        h, q, k = (int(torch.randint(0, n, (1,), generator=gen)) for n in (model.cfg.n_heads, P, P))

        def setter(act, hook):
            act = act.clone()
            act[:, h, q, k] = clean_cache[hook.name][:, h, q, k]
            return act

        expected = metric(model.run_with_hooks(corrupted, fwd_hooks=[("blocks.0.attn.hook_pattern", setter)]))
        torch.testing.assert_close(out[0, h, q, k], expected, rtol=1e-6, atol=1e-6)
    assert out.std() > 0


@pytest.mark.parametrize("component", ["q", "k", "v"])
def test_direct_path_twin_equals_patching_the_head_input(component):
    kw = SMALL_CONFIGS["3layers_4x4x4"]
    model = HookedViViT.from_hf_model(make_hf(kw))
    clean, corrupted = pixels(kw, batch=2, seed=1), pixels(kw, batch=2, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupt_cache = model.run_with_cache(corrupted)

    def metric(logits):
        return logits[:, 1].mean() - logits[:, 0].mean()

    src_layer, src_head = 0, 1
    out = patching.get_act_patch_direct_path(
        model, corrupted, clean_cache, corrupt_cache, metric, src_layer, src_head, component=component, verbose=False
    )
    assert out.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert not model.cfg.use_split_qkv_input  # the sweep's switch is restored
    assert float(out[: src_layer + 1].abs().max()) == 0.0

    # Independently: recompute head (l, h)'s q/k/v from ln1(corrupted resid_pre + the source head's
    # clean-minus-corrupted write), which reaches no other reader.
    W_O = model.blocks[src_layer].attn.W_O[src_head]
    z = f"blocks.{src_layer}.attn.hook_z"
    delta = (clean_cache[z][:, :, src_head] - corrupt_cache[z][:, :, src_head]) @ W_O
    for l in range(src_layer + 1, model.cfg.n_layers):
        block = model.blocks[l]
        W, b = getattr(block.attn, f"W_{component.upper()}"), getattr(block.attn, f"b_{component.upper()}")
        normed = F.layer_norm(
            corrupt_cache["resid_pre", l] + delta, (model.cfg.d_model,), block.ln1.w, block.ln1.b, model.cfg.eps
        )
        for h in range(model.cfg.n_heads):

            def replace(act, hook, h=h):
                act = act.clone()
                act[:, :, h] = normed @ W[h] + b[h]
                return act

            with torch.no_grad():
                expected = metric(
                    model.run_with_hooks(corrupted, fwd_hooks=[(f"blocks.{l}.attn.hook_{component}", replace)])
                )
            torch.testing.assert_close(out[l, h], expected.float(), rtol=1e-5, atol=1e-5)
    assert out[src_layer + 1 :].std() > 0


# ------------------------------------------------------------------------------------------- labels / circuitsvis
def test_token_labels(model):
    labels = model.token_labels()
    grid = model.cfg.grid
    assert len(labels) == model.cfg.n_ctx and labels[0] == "CLS" and len(set(labels)) == len(labels)
    assert labels[grid.index(1, 2, 5)] == "t1 r2 c5"


def test_circuitsvis_attention_html(model, x):
    cv = pytest.importorskip("circuitsvis")
    _, cache = model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
    labels = model.token_labels()
    pattern = cache["pattern", 1][0]  # [head, query, key]
    html = cv.attention.attention_heads(attention=pattern, tokens=labels, mask_upper_tri=False)
    src = html.local_src  # self-contained: inline JavaScript, no network
    assert "AttentionHeads" in src and '"maskUpperTri": false' in src
    assert '"t1 r3 c5"' in src and '"CLS"' in src
    assert f"{float(pattern[2, 0, 7]):.4f}"[:6] in src  # the pattern's numbers are in it
    legacy = cv.attention.attention_patterns(tokens=labels, attention=pattern)
    assert "AttentionPatterns" in legacy.local_src and '"t0 r0 c0"' in legacy.local_src
