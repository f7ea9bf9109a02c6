"""What an experiment costs, in forward-equivalents counted from the model's own forward calls.

One forward-equivalent (FE) is the work of the transformer blocks in one full forward of one clip.
A call of ``model.forward`` on a batch of b (clips, or residual streams with ``start_at_layer``)
that runs blocks ``start_at_layer .. stop_at_layer - 1`` counts b x (blocks run) "clip-blocks", and
FE = clip-blocks / n_layers. So a full forward of one clip is 1, a batch of k patched variants
started at layer l is k (n_layers - l) / n_layers, and a run stopped before block s is s / n_layers.

Not counted: the tubelet embedding (about 1 % of a ViViT-B forward), the classifier head, and the
arithmetic the analysis does on cached tensors outside the model (DLA's per-head OV products,
recovery metrics, logistic-regression probes). Every block counts alike whether attention runs
fused or explicitly (caching ``hook_pattern`` makes a ViViT-B forward about 2x slower on CPU:
count that in seconds, not here). A backward would count 2 FE per FE of its forward by
convention; analyze and study run none (everything under ``inference_mode``), and ``grad_calls``
records how many counted calls ran with autograd on, so this can be checked.

    with ForwardCounter(model) as cost:
        with cost.section("recovery"):
            ...
    cost.summary()   # {"total": FE, "per_experiment": {name: FE}, ...}
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

DEFINITION = (
    "forward-equivalents (FE): transformer-block work relative to one full forward of one clip, counted from every "
    "model.forward call as batch x blocks run / n_layers (a batch of k patched runs started at layer l counts "
    "k (n_layers - l) / n_layers); the embedding, the classifier head and arithmetic on cached tensors are not "
    "counted; no backward runs (a backward would count 2 per FE of its forward)"
)


class ForwardCounter:
    """Counts every forward of ``model`` (batch size, first and last block run) while active,
    attributed to the innermost open ``section``; calls outside any section go to "other".
    ``model(x)``, ``run_with_cache`` and ``run_with_hooks`` all pass through the wrapped forward."""

    def __init__(self, model: Any):
        self.model = model
        self.n_layers = int(model.cfg.n_layers)
        self.calls: list[tuple[str, int, int, int]] = []  # (section, batch, first block, blocks run)
        self.grad_calls = 0
        self._sections: list[str] = []
        self._order: list[str] = []  # every section opened, in order, also those that ran no forward
        self._handle = None

    # -------------------------------------------------------------------- counting
    def _record(self, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("pixel_values")
        start = kwargs.get("start_at_layer")
        stop = kwargs.get("stop_at_layer")
        blocks = range(self.n_layers)[0 if start is None else start : stop]  # exactly the forward's blocks[start:stop]
        batch = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim > 0 else 0
        self.calls.append(
            (self._sections[-1] if self._sections else "other", batch, blocks.start if len(blocks) else 0, len(blocks))
        )
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.grad_calls += 1

    def __enter__(self) -> ForwardCounter:
        if self._handle is not None:
            raise RuntimeError("this ForwardCounter is already counting")
        # The instance's forward is wrapped rather than hooked: TransformerLens's run_with_hooks
        # calls model.forward directly, past nn.Module's forward (pre-)hooks.
        model = self.model
        self._handle = (
            vars(model).get("forward"),
        )  # an earlier wrapper (a counter counting already), restored on exit
        inner = model.forward

        def counted_forward(*args: Any, **kwargs: Any) -> Any:
            self._record(args, kwargs)
            return inner(*args, **kwargs)

        model.forward = counted_forward
        return self

    def __exit__(self, *exc: Any) -> None:
        (previous,) = self._handle
        if previous is None:
            del self.model.forward
        else:
            self.model.forward = previous
        self._handle = None

    @contextmanager
    def section(self, name: str) -> Iterator[ForwardCounter]:
        self._sections.append(name)
        if name not in self._order:
            self._order.append(name)
        try:
            yield self
        finally:
            self._sections.pop()

    # -------------------------------------------------------------------- results
    def clip_blocks(self, section: str | None = None) -> int:
        """Blocks run, summed over clips (batch rows), in one section or in all."""
        return sum(b * n for s, b, _, n in self.calls if section is None or s == section)

    def fe(self, section: str | None = None) -> float:
        return self.clip_blocks(section) / self.n_layers

    def summary(self, **extra: Any) -> dict:
        """Per section (in the order opened; 0 for one that only read shared caches) and in total:
        FE, clip-blocks and forward calls."""
        sections = list(dict.fromkeys(self._order + [s for s, *_ in self.calls]))
        return {
            "unit": "forward-equivalents",
            "definition": DEFINITION,
            "n_layers": self.n_layers,
            "total": self.fe(),
            "per_experiment": {s: self.fe(s) for s in sections},
            "clip_blocks": {s: self.clip_blocks(s) for s in sections},
            "forward_calls": {s: sum(1 for c in self.calls if c[0] == s) for s in sections},
            "grad_calls": self.grad_calls,
            **extra,
        }
