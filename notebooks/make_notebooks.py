"""Writes the three notebooks from the cells below (``python notebooks/make_notebooks.py``).

Kept as code so that a change to the library is one edit here; tests/test_notebooks.py executes
every notebook on the shipped organism, so none can rot.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    new_markdown_cell("# Quickstart: a hooked ViViT\n\nLoad the shipped model organism (a small ViViT trained on rendered action clips; "
                      "`HookedViViT.from_pretrained('google/vivit-b-16x2-kinetics400')` works the same way where you have the weights), "
                      "look at its hooks, cache a run, and patch one activation."),
    new_code_cell("import torch\nfrom transformer_lens.utilities import get_act_name\n\nfrom hooked_vivit import HookedViViT, organism, synthetic, format_top_k\n"
                  "from hooked_vivit.video import preprocess\n\nmodel = HookedViViT.from_pretrained(organism.checkpoint_path())\nmodel"),
    new_code_cell("list(model.hook_dict)[:12], len(model.hook_dict)"),
    new_markdown_cell("Render a bowling clip at the model's size and turn it into pixel values (exactly ViViT's preprocessing)."),
    new_code_cell("clip = synthetic.render_clip('bowling', seed=7, outcome='strike', num_frames=model.cfg.num_frames, size=model.cfg.image_size[0])\n"
                  "x = preprocess(clip.frames, config=model.cfg)\nx.shape"),
    new_code_cell("logits, cache = model.run_with_cache(x)\nprint(format_top_k(logits, model.cfg.id2label, k=3))\n"
                  "assert model.cfg.id2label[int(logits.argmax())] == 'bowling'"),
    new_markdown_cell("`get_act_name` short names index the cache, as in TransformerLens."),
    new_code_cell("name = get_act_name('resid_pre', 2)\nprint(name, cache[name].shape)\ncache['pattern', 3].shape  # [batch, head, query, key]"),
    new_code_cell("grid = model.cfg.grid\nprint(grid)\ncls_attention = cache['pattern', -1][0, :, 0, 1:]  # last layer, every head, from CLS to patches\n"
                  "cls_attention.view(model.cfg.n_heads, *grid.shape).sum(dim=(2, 3))  # attention per frame slot"),
    new_markdown_cell("Attention patterns in circuitsvis (`pip install hooked-vivit[viz]`), labelled with `model.token_labels()`: CLS and "
                      "one frame slot's tokens, layer 3. Attention is bidirectional, hence `mask_upper_tri=False`; `local_src` is the "
                      "self-contained HTML (circuitsvis's own display first probes the network for its JavaScript)."),
    new_code_cell("import circuitsvis as cv\nfrom IPython.display import HTML\n\n"
                  "labels = model.token_labels()\nkeep = [0] + grid.positions(frame_slots=4)  # CLS and the 36 tokens of frame slot 4\n"
                  "pattern = cache['pattern', 3][0][:, keep][:, :, keep]  # [head, query, key]\n"
                  "html = cv.attention.attention_heads(attention=pattern, tokens=[labels[i] for i in keep], mask_upper_tri=False)\n"
                  "HTML(html.local_src)"),
    new_markdown_cell("Patch: zero the MLP output of layer 1 at every token and watch the bowling logit."),
    new_code_cell("def zero(act, hook):\n    act[:] = 0\n    return act\n\n"
                  "patched = model.run_with_hooks(x, fwd_hooks=[('blocks.1.hook_mlp_out', zero)])\n"
                  "bowling = model.cfg.label2id['bowling']\nprint(f'bowling logit {logits[0, bowling]:.3f} -> {patched[0, bowling]:.3f}')\n"
                  "assert not torch.allclose(patched, logits)"),
]

REPRODUCE = [
    new_markdown_cell("# Reproducing the reference paper on a rendered pair\n\nA strike and a gutter ball, identical until the ball "
                      "drifts toward the gutter, both classified 'bowling'. Every experiment of the paper, with figures inline."),
    new_code_cell("%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np\n\nfrom hooked_vivit.analysis import experiments as ex, pipeline, report\n\n"
                  "model = pipeline.load_model('organism')\npair = pipeline.rendered_pair(model, 'bowling', seed=0)\n"
                  "pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)\n"
                  "print(pair.names, 'diverge at frame', pair.divergence_frame)"),
    new_code_cell("from pathlib import Path\nimport tempfile\nfrom IPython.display import Image, display\n"
                  "tmp = Path(tempfile.mkdtemp())\ndisplay(Image(report.fig_frames(pair.positive, pair.negative, pair.names, tmp / 'frames.png')))"),
    new_markdown_cell("**(a)** L2 norm of the activation difference per layer (the paper's Figure 1)."),
    new_code_cell("deltas = ex.activation_deltas(model, pos, neg)\ndisplay(Image(report.fig_deltas(deltas, tmp / 'deltas.png')))"),
    new_markdown_cell("**(b)** Component patching: each layer's attention block and MLP block output from the strike run into the gutter "
                      "run, as the share of the last layer's CLS difference recovered (Figure 2)."),
    new_code_cell("rec = ex.component_recovery(model, pos, neg)\ndisplay(Image(report.fig_recovery(rec, tmp / 'recovery.png')))\n"
                  "{k: np.round(v, 2).tolist() for k, v in rec['projection'].items()}"),
    new_markdown_cell("**(c)** Direct logit attribution over space and time (Figure 3)."),
    new_code_cell("c = model.cfg.label2id['bowling']\ndla = ex.token_dla(model, pos, c)\ndisplay(Image(report.fig_dla(dla, tmp / 'dla.png')))\n"
                  "# The per-source terms add up to each head's attribution; heads plus the rest add up to the logit.\n"
                  "dla['terms'].sum().item(), dla['logit']"),
    new_markdown_cell("**(d)** CLS attention per head (Figure 4), and how much of it falls on the ball and the pins."),
    new_code_cell("att = ex.cls_attention(model, pos, masks=pair.masks['positive'])\n"
                  "display(Image(report.fig_cls_attention(att, pair.positive, model.cfg.tubelet_size[0], tmp / 'att.png')))\n"
                  "{k: np.round(np.mean(v), 3) for k, v in att['object_share'].items() if isinstance(v, list)}"),
    new_markdown_cell("**(e)** Region ablation (Table 1): zero the pixels around the most attributed tokens."),
    new_code_cell("from hooked_vivit.ablation import format_topk_table\nabl = ex.region_ablation(model, pos, dla)\nprint(format_topk_table(abl['table']))"),
    new_markdown_cell("**(f)** Linear probes for the outcome, trained across many pairs and held out by pair, with a shuffled-label control "
                      "and a pixel baseline: the paper's one-pair 'fingerprint' made measurable (Figure 5)."),
    new_code_cell("pairs = pipeline.rendered_probe_pairs(model, 'bowling', 24, seed0=5_000_000)\nprobes = ex.layer_probes(model, pairs)\n"
                  "display(Image(report.fig_probes(probes, tmp / 'probes.png')))"),
]

STUDY = [
    new_markdown_cell("# Multi-pair study: does 'attention gathers, MLPs compose' hold?\n\nThe paper's own limitation was one pair, one model, "
                      "no error bars. Here: many rendered pairs per domain (bowling, golf), bootstrap 95 % intervals, and the comparison "
                      "across domains. Raise `N_PAIRS` for tighter intervals; `hooked-vivit study --pairs 50` does the same from the shell."),
    new_code_cell("%matplotlib inline\nimport tempfile\nfrom pathlib import Path\nfrom IPython.display import Image, display\n\n"
                  "from hooked_vivit.analysis import pipeline, report\n\nN_PAIRS = 8\nmodel = pipeline.load_model('organism')"),
    new_code_cell("studies = {d: pipeline.study_domain(model, d, N_PAIRS, progress=False) for d in ('bowling', 'golf')}\n"
                  "for d, st in studies.items():\n    g = st['mlp_minus_attn']\n"
                  "    print(f\"{d}: MLP - attention recovery {g['mean']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}], MLP higher in {g['share_of_pairs_mlp_higher']:.0%} of pairs\")"),
    new_code_cell("tmp = Path(tempfile.mkdtemp())\nfor d, st in studies.items():\n"
                  "    rec = {'projection': {'attn': st['attn']['mean'], 'mlp': st['mlp']['mean']}}\n"
                  "    display(Image(report.fig_recovery(rec, tmp / f'{d}.png', ci={'attn': st['attn']['ci95'], 'mlp': st['mlp']['ci95']})))"),
    new_code_cell("for d, st in studies.items():\n    display(Image(report.fig_probes(st['probes'], tmp / f'{d}_probes.png')))"),
]


def main() -> None:
    for name, cells in (("01_quickstart", QUICKSTART), ("02_reproduce_paper", REPRODUCE), ("03_multi_pair_study", STUDY)):
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
