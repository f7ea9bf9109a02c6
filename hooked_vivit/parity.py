"""Parity as a user feature: does the hooked model equal the Hugging Face model on *your*
checkpoint and *your* clip?

    report = compare(hooked_model, hf_model, pixel_values)
    report.ok()            # within the documented tolerance for the dtype
    print(report)          # a table: logits, every layer's residual stream, every attention pattern

Differences are reported as max |hooked - hf| and as that over max(1, max |hf|) (``rel``), the
measure the tolerances use: fp32 1e-5, fp16 1e-2, bf16 5e-2.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # annotations only
    pass

TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


@dataclass
class ParityRow:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float


@dataclass
class ParityReport:
    rows: list[ParityRow]
    dtype: torch.dtype
    patterns_compared: bool
    notes: list[str] = field(default_factory=list)

    @property
    def tolerance(self) -> float:
        return TOLERANCE.get(self.dtype, 1e-5)

    def _tol(self, tol: float | None) -> float:
        if tol is None:
            return self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
            raise ValueError(f"the tolerance (--tol) must be a finite number >= 0, got {tol!r}")
        return float(tol)

    def ok(self, tol: float | None = None) -> bool:
        return not self.failures(tol)

    def failures(self, tol: float | None = None) -> list[ParityRow]:
        tol = self._tol(tol)
        return [r for r in self.rows if not r.max_rel <= tol]  # NaN (non-finite outputs) fails too

    def first_failure(self, tol: float | None = None) -> str | None:
        """The earliest activation (in forward order) above tolerance, e.g. 'resid_post 2'."""
        bad = self.failures(tol)
        return bad[0].name if bad else None

    def worst(self) -> ParityRow:
        return max(self.rows, key=lambda r: (math.isnan(r.max_rel), r.max_rel))  # NaN is the worst

    def to_markdown(self, tol: float | None = None) -> str:
        tol = self._tol(tol)
        lines = ["| activation | shape | max abs diff | max rel diff | ok |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.name} | {'x'.join(map(str, r.shape))} | {r.max_abs:.3e} | {r.max_rel:.3e} | {'yes' if r.max_rel <= tol else 'NO'} |"
            for r in self.rows
        ]
        verdict = "PASS" if self.ok(tol) else f"FAIL (first: {self.first_failure(tol)})"
        lines.append(
            f"\n{verdict}: worst {self.worst().name} at {self.worst().max_rel:.3e}, tolerance {tol:g} ({str(self.dtype).removeprefix('torch.')})"
        )
        lines += self.notes
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(
            {
                "dtype": str(self.dtype),
                "tolerance": self.tolerance,
                "ok": self.ok(),
                "patterns_compared": self.patterns_compared,
                "rows": [r.__dict__ | {"shape": list(r.shape)} for r in self.rows],
                "notes": self.notes,
            },
            indent=2,
        )

    def __repr__(self) -> str:
        width = max(len(r.name) for r in self.rows)
        lines = [f"{'activation':<{width}}  {'max abs':>10}  {'max rel':>10}"]
        lines += [
            f"{r.name:<{width}}  {r.max_abs:>10.3e}  {r.max_rel:>10.3e}{'' if r.max_rel <= self.tolerance else '  <- above tolerance'}"
            for r in self.rows
        ]
        lines.append(
            f"{'PASS' if self.ok() else 'FAIL'} (tolerance {self.tolerance:g}, {str(self.dtype).removeprefix('torch.')})"
        )
        return "\n".join(lines)

    _repr_markdown_ = to_markdown


def parity_row(name: str, ours: torch.Tensor, ref: torch.Tensor) -> ParityRow:
    """One row of a parity report: the largest absolute and relative difference of ``ours`` against the
    reference ``ref`` (both read in float64), or the shape mismatch; shared by every architecture's report."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        return ParityRow(
            f"{name} (shape {tuple(ours.shape)} vs {tuple(ref.shape)})", tuple(ref.shape), float("inf"), float("inf")
        )
    diff = float((ours - ref).abs().max())
    return ParityRow(name, tuple(ref.shape), diff, diff / max(1.0, float(ref.abs().max())))


def compare(hooked_model: Any, hf_model: Any, pixel_values: torch.Tensor, *, attn: str = "eager") -> ParityReport:
    """Run both models on the same input and compare logits (or a backbone's pooled embedding:
    CLS / first token, or VideoMAEModel's token mean),
    every layer's residual stream (HF ``hidden_states``) and, when ``attn="eager"``, every attention
    pattern (HF ``output_attentions``)."""
    notes = []
    if attn not in ("eager", "sdpa"):
        raise ValueError(f"attn must be 'eager' or 'sdpa', got {attn!r}")
    if getattr(hf_model.config, "_attn_implementation", attn) != attn:
        hf_model.set_attn_implementation(attn)
    hf_model.eval()
    n = hooked_model.cfg.n_layers
    device = next(hf_model.parameters()).device
    dtype = next(hf_model.parameters()).dtype
    x = pixel_values.to(device, dtype)
    patterns = attn == "eager"
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n)]
    if patterns:
        names += [f"blocks.{l}.attn.hook_pattern" for l in range(n)]
    # TimeSformer: transformers orders the tokens otherwise, and returns no temporal patterns.
    order = hooked_model.hf_token_order() if hasattr(hooked_model, "hf_token_order") else None
    temporal = getattr(hooked_model, "hf_temporal_patterns", None)
    if patterns and temporal is not None:
        names += [f"blocks.{l}.temporal_attn.hook_pattern" for l in range(n)]
    # VJEPA2Model runs its pretraining predictor unless told not to; the hooked model is the encoder.
    extra = {"skip_predictor": True} if type(hf_model).__name__ == "VJEPA2Model" else {}
    with (
        torch.inference_mode(),
        temporal(hf_model) if patterns and temporal is not None else contextlib.nullcontext([]) as hf_temporal,
    ):
        ref = hf_model(x, output_hidden_states=True, output_attentions=patterns, **extra)
        out, cache = hooked_model.run_with_cache(x.to(hooked_model.W_E.device), names_filter=names)
    hidden = [h if order is None else h[:, order.to(h.device)] for h in ref.hidden_states]
    # Forward order, each row named by the layer that produced it, so the first failure names the
    # broken layer.
    rows = [parity_row("embeddings (resid_pre 0)", cache["blocks.0.hook_resid_pre"], hidden[0])]
    for l in range(n):
        if hf_temporal:
            rows.append(
                parity_row(f"temporal pattern {l}", cache[f"blocks.{l}.temporal_attn.hook_pattern"], hf_temporal[l])
            )
        if patterns:
            rows.append(parity_row(f"pattern {l}", cache[f"blocks.{l}.attn.hook_pattern"], ref.attentions[l]))
        rows.append(parity_row(f"resid_post {l}", cache[f"blocks.{l}.hook_resid_post"], hidden[l + 1]))
    if hasattr(ref, "logits"):
        rows.append(parity_row("logits", out, ref.logits))
    elif hooked_model.cfg.pooling == "mean":  # VideoMAEModel: no pooling of its own, the token mean is ours
        rows.append(parity_row("pooled embedding (last_hidden_state.mean(1))", out, ref.last_hidden_state.mean(1)))
    elif out.ndim == 3:  # a backbone that returns every token (V-JEPA 2's encoder)
        rows.append(parity_row("last_hidden_state", out, ref.last_hidden_state))
    else:
        first = "CLS" if hooked_model.cfg.n_prefix_tokens else "first-token"
        rows.append(parity_row(f"{first} embedding (last_hidden_state[:, 0])", out, ref.last_hidden_state[:, 0]))
    if not patterns:
        notes.append("attention patterns not compared (HF sdpa returns none; use attn='eager')")
    return ParityReport(rows, dtype, patterns, notes)
