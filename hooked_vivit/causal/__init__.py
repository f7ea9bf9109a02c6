"""The causal toolkit: what one does to a hooked model to find which parts carry a signal.

- ``metrics``: the scoring protocol (one value per batch row) and the patching metrics, signal recovery among them.
- ``patching``: activation patching — the batched engine (``run_patches``, ``denoise`` / ``noise``), patch builders by
  component, head and position group, and the TransformerLens twins that index positions by token, not pixel column.
- ``ablation``: zero / mean / resample ablation of components and of the tokens of a position group.
- ``attribution``: attribution patching, (a_clean - a_corrupt) · ∂metric/∂a, from two forwards and one backward.
- ``logit_attribution``: direct logit attribution through the classifier's readout (CLS, first token or token mean).
- ``probes``: linear probes on cached activations, held out by pair, with control tasks.

It sits above the models (``hooked_vivit.model`` and the components) and below the analyses (``hooked_vivit.analysis``).
"""
