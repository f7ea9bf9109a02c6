"""Writes the notebooks from the cells below (``python notebooks/make_notebooks.py``).

Kept as code so that a change to the library is one edit here; tests/test_notebooks.py executes
every notebook on the shipped organism, so none can rot.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

QUICKSTART = [
    new_markdown_cell(
        "# Quickstart: a hooked ViViT\n\nLoad the shipped model organism (a small ViViT trained on rendered action clips; "
        "`HookedViViT.from_pretrained('google/vivit-b-16x2-kinetics400')` works the same way where you have the weights), "
        "look at its hooks, cache a run, and patch one activation."
    ),
    new_code_cell(
        "import torch\nfrom transformer_lens.utilities import get_act_name\n\nfrom hooked_vivit import HookedViViT, organism, synthetic, format_top_k\n"
        "from hooked_vivit.video import preprocess\n\nmodel = HookedViViT.from_pretrained(organism.checkpoint_path())\nmodel"
    ),
    new_code_cell("list(model.hook_dict)[:12], len(model.hook_dict)"),
    new_markdown_cell(
        "Render a bowling clip at the model's size and turn it into pixel values (exactly ViViT's preprocessing)."
    ),
    new_code_cell(
        "clip = synthetic.render_clip('bowling', seed=4_000_007, outcome='strike', num_frames=model.cfg.num_frames, size=model.cfg.image_size[0])\n"
        "x = preprocess(clip.frames, config=model.cfg)\nx.shape"
    ),
    new_code_cell(
        "logits, cache = model.run_with_cache(x)\nprint(format_top_k(logits, model.cfg.id2label, k=3))\n"
        "assert model.cfg.id2label[int(logits.argmax())] == 'bowling'"
    ),
    new_markdown_cell("`get_act_name` short names index the cache, as in TransformerLens."),
    new_code_cell(
        "name = get_act_name('resid_pre', 2)\nprint(name, cache[name].shape)\ncache['pattern', 3].shape  # [batch, head, query, key]"
    ),
    new_code_cell(
        "grid = model.cfg.grid\nprint(grid)\ncls_attention = cache['pattern', -1][0, :, 0, 1:]  # last layer, every head, from CLS to patches\n"
        "cls_attention.view(model.cfg.n_heads, *grid.shape).sum(dim=(2, 3))  # attention per frame slot"
    ),
    new_markdown_cell(
        "Attention patterns in circuitsvis (`pip install hooked-vivit[viz]`), labelled with `model.token_labels()`: CLS and "
        "one frame slot's tokens, layer 3. Attention is bidirectional, hence `mask_upper_tri=False`; `local_src` is the "
        "self-contained HTML (circuitsvis's own display first probes the network for its JavaScript)."
    ),
    new_code_cell(
        "import circuitsvis as cv\nfrom IPython.display import HTML\n\n"
        "labels = model.token_labels()\nkeep = [0] + grid.positions(frame_slots=4)  # CLS and the 36 tokens of frame slot 4\n"
        "pattern = cache['pattern', 3][0][:, keep][:, :, keep]  # [head, query, key]\n"
        "html = cv.attention.attention_heads(attention=pattern, tokens=[labels[i] for i in keep], mask_upper_tri=False)\n"
        "HTML(html.local_src)"
    ),
    new_markdown_cell("Patch: zero the MLP output of layer 1 at every token and watch the bowling logit."),
    new_code_cell(
        "def zero(act, hook):\n    act[:] = 0\n    return act\n\n"
        "patched = model.run_with_hooks(x, fwd_hooks=[('blocks.1.hook_mlp_out', zero)])\n"
        "bowling = model.cfg.label2id['bowling']\nprint(f'bowling logit {logits[0, bowling]:.3f} -> {patched[0, bowling]:.3f}')\n"
        "assert not torch.allclose(patched, logits)"
    ),
]

REPRODUCE = [
    new_markdown_cell(
        "# Reproducing the reference paper on a rendered pair\n\nA strike and a gutter ball, identical until the ball "
        "drifts toward the gutter, both classified 'bowling'. Every experiment of the paper, with figures inline, beside the "
        "outcome-targeted versions a reviewer asks for. The seed lies in the held-out analysis range (no clip the organism "
        "was trained, validated, tested or probed on)."
    ),
    new_code_cell(
        "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np\nimport pandas as pd\n\n"
        "from hooked_vivit.analysis import experiments as ex, pipeline, report\nfrom hooked_vivit.organism.data import ANALYSIS_SEEDS\n\n"
        "model = pipeline.load_model('actions')\npair = pipeline.rendered_pair(model, 'bowling', seed=4_000_000)\n"
        "pos, neg = pipeline.model_pixels(model, pair.positive), pipeline.model_pixels(model, pair.negative)\n"
        "print(pair.names, 'diverge at frame', pair.divergence_frame, '| analysis seeds:', ANALYSIS_SEEDS)"
    ),
    new_markdown_cell("The scope of everything below: which model, and which of the paper's claims it can test."),
    new_code_cell("from IPython.display import HTML\nHTML(report.scope_html(report.scope(model)))"),
    new_code_cell(
        "from pathlib import Path\nimport tempfile\nfrom IPython.display import Image, display\n"
        "tmp = Path(tempfile.mkdtemp())\ndisplay(Image(report.fig_frames(pair.positive, pair.negative, pair.names, tmp / 'frames.png')))"
    ),
    new_markdown_cell("**(a)** Norm of the activation difference per layer (the paper's Figure 1)."),
    new_code_cell(
        "deltas = ex.activation_deltas(model, pos, neg)\ndisplay(Image(report.fig_deltas(deltas.to_json(), tmp / 'deltas.png')))"
    ),
    new_markdown_cell(
        "**(b)** Component patching: each layer's attention block and MLP block output from the strike run into the gutter "
        "run, scored on the last layer's residual in every variant side by side (Figure 2). The headline is the projection at "
        "CLS; a norm ratio above 100 % would not show sufficiency (the patched run can move away from the clean one)."
    ),
    new_code_cell(
        "rec = ex.component_recovery(model, pos, neg)\nprint(rec['headline_reason'])\n"
        "display(Image(report.fig_recovery_variants(rec['variants'], tmp / 'recovery.png')))\n"
        "pd.DataFrame({v: {f'L{l} {c}': rec['variants'][v][c][l] for c in ('attn', 'mlp') for l in rec['layers']} for v in rec['variants']}).round(3)"
    ),
    new_markdown_cell(
        "Where this pair lies among the held-out pairs of the organism's shipped study (single pairs vary a lot):"
    ),
    new_code_cell(
        "summary = pipeline.load_study_summary(model)\nplaced = pipeline.place_in_distribution(rec, summary, 'bowling')\n"
        "print(placed['pairs'], 'study pairs, seeds', placed['seeds'])\n"
        "pd.DataFrame(placed['variants'][ex.HEADLINE_RECOVERY]['attn']).round(3)"
    ),
    new_markdown_cell(
        "**(c)** Direct logit attribution over space and time (Figure 3), and its differential version: the positive clip's "
        "attribution minus the negative's, per source token. Identical clips give exactly zero; tokens whose pixels are "
        "alike in both clips need not cancel (attention and values change downstream), so it is not a map of where the "
        "pixels differ."
    ),
    new_code_cell(
        "c = model.cfg.label2id['bowling']\ndla = ex.token_dla(model, pos, c)\ndisplay(Image(report.fig_dla(dla, tmp / 'dla.png')))\n"
        "diff = ex.differential_token_dla(model, pos, neg, c, positive_dla=dla)\n"
        "display(Image(report.fig_dla({**diff.to_json(), 'class_name': 'bowling (positive - negative)'}, tmp / 'diff.png')))\n"
        "# The per-source terms add up to each head's attribution; heads plus the rest add up to the logit.\n"
        "dla['terms'].sum().item(), dla['logit'], diff.logit_difference"
    ),
    new_markdown_cell(
        "**(d)** CLS attention per head (Figure 4); **(e)** the outcome-targeted analysis: region ablation after the divergence "
        "against control boxes of equal size matched on their share of the pair's pixel difference, and each object's "
        "attention / attribution share beside its base rate."
    ),
    new_code_cell(
        "att = ex.cls_attention(model, pos, masks=pair.masks['positive'])\n"
        "display(Image(report.fig_cls_attention(att, pair.positive, model.cfg.tubelet_size[0], tmp / 'att.png')))\n"
        "out = ex.outcome_analysis(model, pos, neg, c, pair_masks=pair.masks, divergence_frame=pair.divergence_frame, positive_dla=dla)\n"
        "display(Image(report.fig_outcome_ablation(out.ablation.to_json(), tmp / 'abl.png')))\n"
        "display(Image(report.fig_enrichment(out.to_json()['enrichment'], tmp / 'enr.png')))\n"
        "pd.DataFrame({(o, w): {'mean_share': e.mean_share, 'base_rate': e.base_rate, 'enrichment': e.enrichment} "
        "for o, per in out.enrichment.items() for w, e in per.items()}).T"
    ),
    new_markdown_cell(
        "The paper's Table 1 (zero the pixels around the most attributed tokens), which targets the class, not the outcome:"
    ),
    new_code_cell(
        "from hooked_vivit.causal.ablation import format_topk_table\nabl = ex.region_ablation(model, pos, dla)\nprint(format_topk_table(abl.table))"
    ),
    new_markdown_cell(
        "**(f)** Linear probes for the outcome on 100 held-out pairs: repeated grouped 5-fold cross-validation (groups = pairs), "
        "bootstrap intervals over pairs, paired accuracy, the shuffled-within-pair control, and pixel baselines pooled like the "
        "features and spatially resolved (Figure 5)."
    ),
    new_code_cell(
        "pairs = pipeline.rendered_probe_pairs(model, 'bowling', 100, seed0=ANALYSIS_SEEDS['probe'])\nprobes = ex.layer_probes(model, pairs)\n"
        "display(Image(report.fig_probes_ci(probes.to_json(), tmp / 'probes.png')))\n"
        "pd.DataFrame({f'{k} {n}': {m: getattr(r, m) for m in ('accuracy', 'paired_accuracy', 'control_paired_accuracy')} "
        "for k in ('cls', 'mean') for n, r in zip(probes.layers, getattr(probes, k))}).T.round(3)"
    ),
]

STUDY = [
    new_markdown_cell(
        "# Multi-pair study: does 'attention gathers, MLPs compose' hold?\n\nThe paper's own limitation was one pair, one model, "
        "no error bars. The organism ships a precomputed study on held-out seeds (`study_summary.json`, made by "
        "`python -m benchmarks.organism_study`): every recovery variant per pair, the outcome-targeted measures and the "
        "probes, with bootstrap 95 % intervals over pairs. Below: those tables, then the same study run live on a few pairs."
    ),
    new_code_cell(
        "%matplotlib inline\nimport json\nimport tempfile\nfrom pathlib import Path\nfrom IPython.display import Image, Markdown, display\n\n"
        "from hooked_vivit import organism\nfrom hooked_vivit.analysis import pipeline, report\n\n"
        "model = pipeline.load_model('actions')\nsummary = pipeline.load_study_summary(model)\n"
        "{d: (st['pairs'], st['seeds']) for d, st in summary['domains'].items()}"
    ),
    new_code_cell("display(Markdown(pipeline.study_tables_markdown(summary)))"),
    new_code_cell(
        "tmp = Path(tempfile.mkdtemp())\nfor d, st in summary['domains'].items():\n"
        "    display(Image(report.fig_recovery_variants({v: {c: r[c]['mean'] for c in ('attn', 'mlp')} for v, r in st['recovery'].items()},\n"
        "                                               tmp / f'{d}.png', ci={v: {c: r[c]['ci95'] for c in ('attn', 'mlp')} for v, r in st['recovery'].items()})))"
    ),
    new_markdown_cell(
        "Live: the same study on a handful of pairs (raise `N_PAIRS` for tighter intervals; `hooked-vivit study --pairs 50` "
        "does the same from the shell). Study seeds start at 6,000,000, inside the held-out range."
    ),
    new_code_cell(
        "N_PAIRS = 6\nstudies = {d: pipeline.study_domain(model, d, N_PAIRS, outcome_pairs=2, n_controls=20, progress=False) for d in ('bowling', 'golf')}\n"
        "for d, st in studies.items():\n    g = st['mlp_minus_attn']\n"
        "    print(f\"{d}: MLP - attention recovery {g['mean']:+.1%} [{g['ci95'][0]:+.1%}, {g['ci95'][1]:+.1%}], MLP higher in {g['share_of_pairs_mlp_higher']:.0%} of pairs; \"\n"
        "          f\"norm ratio at CLS above 1 in {st['norm_ratio_above_1']['cls']['count']} of {st['norm_ratio_above_1']['cls']['of']} cases\")"
    ),
    new_code_cell(
        "for d, st in studies.items():\n    display(Image(report.fig_probes_ci(st['probes'], tmp / f'{d}_probes.png')))"
    ),
]


GROUND_TRUTH = [
    new_markdown_cell(
        "# Ground truth: do the methods find a mechanism that is known to be there?\n\n"
        "First the planted-mechanism models (`hooked_vivit.planted`: weights set by hand, so the mechanism is exact), "
        "the null model whose decision ignores what its pairs change, and the difficulty ladder on which each method "
        "eventually breaks; then the two organisms side by side on the same held-out pairs: the ground-truth organism (`outcomes`, trained "
        "with the outcome as its label: it must carry it) and the action organism (`actions`, the outcome was never a "
        "label). `hooked-vivit validate` runs all of this on 50 pairs per domain; the table is in README and the model cards."
    ),
    new_code_cell(
        "import torch\nfrom IPython.display import Markdown, display\n\n"
        "from hooked_vivit import organism, planted\nfrom hooked_vivit.causal import patching\nfrom hooked_vivit.analysis import experiments as ex, validation\n"
        "from hooked_vivit.causal.metrics import LogitDiff\n\n"
        "single = planted.build('single_head')\nprint(single.truth.summary)"
    ),
    new_markdown_cell(
        "Head patching on a planted pair (blob vs no blob, one background): the planted head restores everything, "
        "every other head nothing."
    ),
    new_code_cell(
        "m = single.model\npos, neg = single.pair(3)\n_, clean_cache = m.run_with_cache(pos)\n"
        "sweep = patching.denoise(m, patching.head_patches(m, 'z'), clean_cache=clean_cache, corrupted=neg, metric=LogitDiff(0, 1), progress=False)\n"
        "top = sweep.labels[int(sweep.values.argmax())]\nprint('top head:', top, '| planted:', single.truth.head_labels)\n"
        "assert top == f'{single.truth.head_labels[0]} z'"
    ),
    new_markdown_cell(
        "The composition model: two heads gather, one MLP neuron composes. Token DLA is blind to it (no head writes what "
        "the classifier reads): a method failing on a known mechanism, reported as a finding."
    ),
    new_code_cell(
        "comp = planted.build('and_composition')\ndla = ex.token_dla(comp.model, comp.render(0, a=True, b=True), comp.truth.positive)\n"
        "print(f\"logit {dla['logit']:.2f}, largest |DLA term| {float(dla['terms'].abs().max()):.1e}\")"
    ),
    new_markdown_cell(
        "The null model (a negative control): its pair changes blob A, which the model sees (a head gathers it and "
        "every distractor responds), but the classifier reads a decoy box that is fixed within the pair. The clips "
        "differ in pixels, and their logits are equal to float rounding: a method that names a component here names "
        "a false positive."
    ),
    new_code_cell(
        "null = planted.build('null')\npos, neg = null.pair(0)\nwith torch.inference_mode():\n"
        "    lp, ln = null.model(pos), null.model(neg)\n"
        "moved = {c: round(v, 3) for c, v in planted.component_changes(null, 0).items() if v > 1e-3}\n"
        "print(f'pixels that differ: {int((pos != neg).sum()):,} of {pos.numel():,}; '\n"
        "      f'largest |logit change| between the clips: {float((lp - ln).abs().max()):.1e}')\n"
        "print('components whose CLS output changes within the pair (L2 norm):', moved)\n"
        "assert (pos != neg).any() and float((lp - ln).abs().max()) < 1e-4 and moved"
    ),
    new_markdown_cell(
        "The difficulty ladder (`planted.LEVELS`: the distractors' gain grows and the planted heads' attention gets "
        "blunter): each method's per-pair decision rule (`hooked_vivit.analysis.ladder`) as recall on the planted "
        "models and as a false-positive rate on the null. A small run: the easiest and the hardest level, 4 pairs per "
        "model, 10 on the null (`hooked-vivit validate` runs every level on 20 pairs, the null on 100)."
    ),
    new_code_cell(
        "from hooked_vivit.analysis import ladder\n\n"
        "small = ladder.ladder(planted.NAMES, levels=(0, len(planted.LEVELS) - 1), n_pairs=4, null_pairs=10)\n"
        "display(Markdown(ladder.ladder_section(small)))"
    ),
    new_markdown_cell(
        "The two organisms on the same rendered pairs (seeds in the held-out analysis range): what each predicts."
    ),
    new_code_cell(
        "models = {name: organism.load(name) for name in ('actions', 'outcomes')}\n"
        "for name, model in models.items():\n"
        "    pairs = validation.organism_pairs(model, 'bowling', 4)\n"
        "    with torch.inference_mode():\n"
        "        preds = [[model.cfg.id2label[int(model(x).argmax())] for x in (p.positive, p.negative)] for p in pairs]\n"
        "    print(f'{name:9s}', preds)"
    ),
    new_markdown_cell(
        "Every method on both organisms and both planted models, on a few pairs of one domain (the validation table in "
        "small; raise `N_PAIRS` for tighter intervals)."
    ),
    new_code_cell(
        "N_PAIRS = 5\ndata = validation.validate(('actions', 'outcomes'), n_pairs=N_PAIRS, domains=('bowling',), sanity_pairs=1,\n"
        "                           attribution_pairs=2, n_controls=2, progress=False, models=models)\n"
        "display(Markdown(validation.validation_markdown(data)))"
    ),
]


def main() -> None:
    for name, cells in (
        ("01_quickstart", QUICKSTART),
        ("02_reproduce_paper", REPRODUCE),
        ("03_multi_pair_study", STUDY),
        ("04_ground_truth", GROUND_TRUTH),
    ):
        nb = new_notebook(
            cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
        )
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
