"""What an experiment costs, in forward-equivalents priced by the FLOPs of the work the model runs.

One forward-equivalent (FE) is the matmul work of the transformer blocks in one full forward of one
clip. The counter records every attention and MLP call inside the blocks (a forward pre-hook on
each), as work items: attention over ``batch`` rows of the leading axis, computing ``rows`` query
rows against ``keys`` key tokens, and an MLP on ``rows`` rows. Each is priced in FLOPs
(``attention_flops``, ``mlp_flops``), and FE = FLOPs / FLOPs of one full forward. So a full forward of
one clip is 1, a patched run started at block l's MLP counts that MLP and the blocks after it, and a
last block computing only the readout row counts its keys and values for every token but its
queries, attention and MLP for one row.

The whole-block count of earlier versions, batch x blocks touched / n_layers per ``model.forward``
call (a partial block counts whole), stays beside it (``whole_blocks``).

Not counted: the tubelet embedding (about 1 % of a ViViT-B forward), LayerNorms, softmax and
activation functions, the classifier head, and the arithmetic the analysis does on cached tensors
outside the model (DLA's per-head OV products, recovery metrics, logistic-regression probes). Fused
and explicit attention count alike (caching ``hook_pattern`` makes a ViViT-B forward about 2x
slower on CPU: count that in seconds, not here). A backward would count 2 FE per FE of its forward
by convention; analyze and study run none (everything under ``inference_mode``), and ``grad_calls``
records how many counted calls ran with autograd on, so this can be checked.

    with ForwardCounter(model) as cost:
        with cost.section("recovery"):
            ...
    cost.summary()                    # {"total": FE, "per_experiment": {name: FE}, "work": ..., ...}
    reprice(cost.summary(), VIVIT_B)  # the same work priced at ViViT-B's shape (joint attention)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from hooked_vivit.cache_memory import hook_shape
from hooked_vivit.components import MLP, Attention

if TYPE_CHECKING:  # annotations only
    from hooked_vivit.model import HookedVideoTransformer

DEFINITION = (
    "forward-equivalents (FE): the transformer blocks' matmul FLOPs relative to one full forward of one clip, "
    "counted from every attention and MLP call the model runs: attention over b rows of the leading axis computing "
    "r query rows against k key tokens costs b a (2 r d + 4 k d + 4 r k + 2 r d) (q; k and v; q k^T and pattern v; "
    "W_O; d = d_model, a = n_heads d_head), an MLP on r rows b 4 r d d_mlp; so a patched run started at a block's "
    "MLP, or whose last block computes only the readout row, counts only that work. The embedding, LayerNorms, "
    "softmax, the classifier head and arithmetic on cached tensors are not counted; no backward runs (a backward "
    "would count 2 per FE of its forward). Whole-block count (the earlier definition): batch x blocks touched / "
    "n_layers per model.forward call"
)


@dataclass(frozen=True)
class Shape:
    """The sizes the FLOP prices depend on."""

    n_ctx: int
    d_model: int
    d_attn: int  # n_heads * d_head
    d_mlp: int
    n_layers: int

    @classmethod
    def of(cls, cfg: Any) -> Shape:
        return cls(int(cfg.n_ctx), int(cfg.d_model), int(cfg.n_heads * cfg.d_head), int(cfg.d_mlp), int(cfg.n_layers))


VIVIT_B = Shape(n_ctx=3137, d_model=768, d_attn=768, d_mlp=3072, n_layers=12)  # 32 frames of 224x224, tubelets 2x16x16


def attention_flops(shape: Shape, batch: int, rows: int, keys: int) -> int:
    d, a = shape.d_model, shape.d_attn
    return batch * a * (2 * rows * d + 4 * keys * d + 4 * rows * keys + 2 * rows * d)


def mlp_flops(shape: Shape, batch: int, rows: int) -> int:
    return batch * rows * 4 * shape.d_model * shape.d_mlp


def work_flops(shape: Shape, kind: str, batch: int, rows: int, keys: int) -> int:
    return attention_flops(shape, batch, rows, keys) if kind == "attn" else mlp_flops(shape, batch, rows)


def _blocks_modules(model: HookedVideoTransformer) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in model.blocks.named_modules(prefix="blocks"):
        if isinstance(module, (Attention, MLP)):
            yield name, module


def full_forward_work(model: HookedVideoTransformer) -> list[tuple[str, int, int, int]]:
    """The work items (kind, batch, rows, keys) of one full forward of one clip, from the shapes each
    attention's q and k and each MLP's hidden layer fire with (so TimeSformer's divided attentions count
    as they batch)."""
    items = []
    for name, module in _blocks_modules(model):
        if isinstance(module, Attention):
            q, k = hook_shape(model.cfg, f"{name}.hook_q", 1), hook_shape(model.cfg, f"{name}.hook_k", 1)
            items.append(("attn", q[0], q[1], k[1]))
        else:
            pre = hook_shape(model.cfg, f"{name}.hook_pre", 1)
            items.append(("mlp", pre[0], pre[1], 0))
    return items


class ForwardCounter:
    """Counts, while active, every forward of ``model`` (batch, blocks touched) and every attention and
    MLP call in its blocks (work items), attributed to the innermost open ``section``; work outside any
    section goes to "other". ``model(x)``, ``run_with_cache`` and ``run_with_hooks`` all pass through
    the wrapped forward."""

    def __init__(self, model: HookedVideoTransformer):
        self.model = model
        self.n_layers = int(model.cfg.n_layers)
        self.shape = Shape.of(model.cfg)
        self.calls: list[tuple[str, int, int, int]] = []  # (section, batch, first block, blocks touched)
        self.work: list[tuple[str, str, int, int, int]] = []  # (section, kind, batch, rows, keys)
        self.reference = full_forward_work(model)
        self.grad_calls = 0
        self._sections: list[str] = []
        self._order: list[str] = []  # every section opened, in order, also those that ran no forward
        self._handle = None

    # -------------------------------------------------------------------- counting
    def _section(self) -> str:
        return self._sections[-1] if self._sections else "other"

    def _record(self, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("pixel_values")
        start = kwargs.get("start_at_layer")
        stop = kwargs.get("stop_at_layer")
        blocks = range(self.n_layers)[0 if start is None else start : stop]  # exactly the forward's blocks[start:stop]
        batch = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.ndim > 0 else 0
        self.calls.append((self._section(), batch, blocks.start if len(blocks) else 0, len(blocks)))
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            self.grad_calls += 1

    def _record_attention(self, module: Any, args: tuple) -> None:
        q_in, k_in = args[0], args[1]
        self.work.append((self._section(), "attn", int(q_in.shape[0]), int(q_in.shape[1]), int(k_in.shape[1])))

    def _record_mlp(self, module: Any, args: tuple) -> None:
        x = args[0]
        self.work.append((self._section(), "mlp", int(x.shape[0]), int(x.shape[1]), 0))

    def _wrap(self, model: HookedVideoTransformer) -> tuple:
        # The instance's forward is wrapped rather than hooked: TransformerLens's run_with_hooks
        # calls model.forward directly, past nn.Module's forward (pre-)hooks. The blocks' attention
        # and MLP modules are called as modules, so pre-hooks see them.
        previous = vars(model).get("forward")  # an earlier wrapper (a counter counting already), restored on exit
        inner = model.forward

        def counted_forward(*args: Any, **kwargs: Any) -> Any:
            self._record(args, kwargs)
            return inner(*args, **kwargs)

        model.forward = counted_forward
        handles = [
            m.register_forward_pre_hook(self._record_attention if isinstance(m, Attention) else self._record_mlp)
            for _, m in _blocks_modules(model)
        ]
        return previous, handles

    @staticmethod
    def _unwrap(model: HookedVideoTransformer, handle: tuple) -> None:
        previous, handles = handle
        for h in handles:
            h.remove()
        if previous is None:
            del model.forward
        else:
            model.forward = previous

    def __enter__(self) -> ForwardCounter:
        if self._handle is not None:
            raise RuntimeError("this ForwardCounter is already counting")
        self._handle = self._wrap(self.model)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._unwrap(self.model, self._handle)
        self._handle = None

    @contextmanager
    def also(self, other: HookedVideoTransformer) -> Iterator[ForwardCounter]:
        """Count ``other``'s forwards and block work too, in the open sections, priced as this model's
        (``other`` must have the same config: e.g. the probes' random-weights control)."""
        if other.cfg != self.model.cfg:
            raise ValueError(
                "ForwardCounter.also counts a model of the same config only (its work is priced as this one's)"
            )
        handle = self._wrap(other)
        try:
            yield self
        finally:
            self._unwrap(other, handle)

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
    def flops(self, section: str | None = None) -> int:
        return sum(work_flops(self.shape, *w[1:]) for w in self.work if section is None or w[0] == section)

    def fe(self, section: str | None = None) -> float:
        """FLOP-priced forward-equivalents, in one section or in all."""
        return self.flops(section) / sum(work_flops(self.shape, *w) for w in self.reference)

    def clip_blocks(self, section: str | None = None) -> int:
        """Blocks touched (a partial block counts whole), summed over clips (batch rows), in one section or in all."""
        return sum(b * n for s, b, _, n in self.calls if section is None or s == section)

    def summary(self, **extra: Any) -> dict:
        """Per section (in the order opened; 0 for one that only read shared caches) and in total: FE
        (FLOP-priced), the whole-block count, forward calls and the work items ("work": per section,
        [kind, rows, keys, clips] with clips summed over calls), from which ``reprice`` prices the
        same work at another shape."""
        sections = list(dict.fromkeys(self._order + [s for s, *_ in self.calls] + [w[0] for w in self.work]))
        work: dict[str, Counter] = {s: Counter() for s in sections}
        for s, kind, batch, rows, keys in self.work:
            work[s][(kind, rows, keys)] += batch
        return {
            "unit": "forward-equivalents",
            "definition": DEFINITION,
            "n_layers": self.n_layers,
            "priced_at": asdict(self.shape),
            "total": self.fe(),
            "per_experiment": {s: self.fe(s) for s in sections},
            "whole_blocks": {
                "total": self.clip_blocks() / self.n_layers,
                "per_experiment": {s: self.clip_blocks(s) / self.n_layers for s in sections},
            },
            "clip_blocks": {s: self.clip_blocks(s) for s in sections},
            "forward_calls": {s: sum(1 for c in self.calls if c[0] == s) for s in sections},
            "work": {s: [[k, r, n, c] for (k, r, n), c in sorted(work[s].items())] for s in sections},
            "grad_calls": self.grad_calls,
            **extra,
        }


def reprice(summary: dict, shape: Shape) -> dict:
    """FE of a summary's work priced at another ``shape``, for joint attention (every full attention
    over n_ctx keys; rows and keys equal to the counted model's n_ctx become ``shape.n_ctx``, fewer
    rows, e.g. the readout row, stay). {"total", "per_experiment"}."""
    n_ctx = summary["priced_at"]["n_ctx"]
    if summary["n_layers"] != shape.n_layers:
        raise ValueError(f"the work was counted on {summary['n_layers']} layers, the shape has {shape.n_layers}")
    scale = lambda n: shape.n_ctx if n == n_ctx else n  # noqa: E731
    one = shape.n_layers * (attention_flops(shape, 1, shape.n_ctx, shape.n_ctx) + mlp_flops(shape, 1, shape.n_ctx))
    per = {}
    for s, items in summary["work"].items():
        if any(k == "attn" and n != n_ctx for k, _, n, _ in items):
            raise ValueError("reprice needs joint attention (keys = every token); this work has other attentions")
        per[s] = sum(work_flops(shape, k, c, scale(r), scale(n)) for k, r, n, c in items) / one
    return {"total": sum(per.values()), "per_experiment": per}
