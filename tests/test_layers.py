"""Imports run one way: core <- causal tools <- organism <- viewer <- analyses <- SAEs <- commands <- benchmarks.

Every import statement of every module (top level, inside functions, under TYPE_CHECKING) is read
from the source with ``ast``; a module may import only modules of its own layer or of a lower one,
no library module imports the tests or the benchmarks, and every module has a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hooked_vivit", "weights_conversion", "benchmarks")

# Lowest first. A module not listed here (nor under a listed prefix) fails test_every_module_has_a_layer:
# add it to the layer it belongs to. Names ending in "." are prefixes (a whole subpackage).
LAYERS: dict[str, tuple[str, ...]] = {
    # The models and everything they need: config, token grid and positions, components, conversion,
    # loading, pixels and rendered clips.
    "core": (
        "hooked_vivit",
        "hooked_vivit.attention_rows",
        "hooked_vivit.cache_memory",
        "hooked_vivit.collection",
        "hooked_vivit.compat",
        "hooked_vivit.components",
        "hooked_vivit.components.",
        "hooked_vivit.config",
        "hooked_vivit.labels",
        "hooked_vivit.loading",
        "hooked_vivit.model",
        "hooked_vivit.output_dir",
        "hooked_vivit.parity",
        "hooked_vivit.positions",
        "hooked_vivit.synthetic",
        "hooked_vivit.tensor_types",
        "hooked_vivit.testing",
        "hooked_vivit.timesformer",
        "hooked_vivit.token_grid",
        "hooked_vivit.video",
        "hooked_vivit.videomae",
        "hooked_vivit.videoprism",
        "hooked_vivit.vjepa2",
        "hooked_vivit.weight_processing",
        "weights_conversion",
        "weights_conversion.",
    ),
    # Causal tools on a model: metrics, patching, ablation, attribution, direct logit attribution, probes.
    "causal": (
        "hooked_vivit.causal",
        "hooked_vivit.causal.",
        "hooked_vivit.planted",
    ),
    # The shipped model organism (its data, checkpoint, training) and tools that load it by name.
    "organism": (
        "hooked_vivit.organism",
        "hooked_vivit.organism.data",
        "hooked_vivit.organism.train",
        "hooked_vivit.extract",
    ),
    "viewer": ("hooked_vivit.viewer",),
    # The reference paper's analyses, their report and pipeline.
    "analysis": ("hooked_vivit.analysis", "hooked_vivit.analysis."),
    # Sparse autoencoders: they read the analysis pipeline's model loading and report writer.
    "sae": ("hooked_vivit.sae", "hooked_vivit.sae."),
    # Entry points. organism.evaluate writes the organism's model card from analysis probes (a script,
    # like the CLI): see issue 19 on the organism <-> analysis split.
    "app": ("hooked_vivit.cli", "hooked_vivit.organism.evaluate"),
    "benchmarks": ("benchmarks", "benchmarks."),
}
RANK = {layer: i for i, layer in enumerate(LAYERS)}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    """The layer of a module: an exact entry wins over a prefix, the longest prefix over shorter ones."""
    best, best_len = None, -1
    for layer, entries in LAYERS.items():
        for entry in entries:
            if entry == module:
                return layer
            if entry.endswith(".") and module.startswith(entry) and len(entry) > best_len:
                best, best_len = layer, len(entry)
    return best


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_modules(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of a project module (hooked_vivit, weights_conversion,
    benchmarks, tests) in the file; ``from package import name`` counts as the submodule when there is one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target.split(".")[0] in (*PACKAGES, "tests"):
                out.append((node.lineno, target))
    return out


def test_the_map_sees_the_package(tmp_path):
    assert {
        "hooked_vivit.model",
        "hooked_vivit.causal.patching",
        "hooked_vivit.analysis.pipeline",
        "hooked_vivit.cli",
    } <= set(MODULES)
    assert (
        layer_of("hooked_vivit.components.attention") == "core"
        and layer_of("hooked_vivit.analysis.report") == "analysis"
    )
    assert layer_of("hooked_vivit.organism.evaluate") == "app" and layer_of("hooked_vivit.organism.data") == "organism"
    # The checker finds a lazy import inside a function, resolved to the submodule, and a relative one.
    probe = tmp_path / "viewer.py"
    probe.write_text("def f():\n    from hooked_vivit.analysis import experiments\n    from .causal import patching\n")
    assert imported_modules("hooked_vivit.viewer", probe) == [
        (2, "hooked_vivit.analysis.experiments"),
        (3, "hooked_vivit.causal.patching"),
    ]


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, (
        f"modules without a layer: {missing}; add each to LAYERS in {Path(__file__).name} (lowest layer it fits)"
    )


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    layer = layer_of(module)
    if layer is None:
        pytest.fail(f"{module} has no layer; add it to LAYERS in {Path(__file__).name}")
    bad = []
    for line, target in imported_modules(module, MODULES[module]):
        if target.split(".")[0] == "tests":
            bad.append(f"line {line}: imports {target} (library code and benchmarks never import the tests)")
            continue
        target_layer = layer_of(target)
        if target_layer is None:
            bad.append(f"line {line}: imports {target}, which has no layer (add it to LAYERS)")
        elif RANK[target_layer] > RANK[layer]:
            bad.append(f"line {line}: imports {target} ({target_layer}) from the lower layer {layer}")
    assert not bad, f"{module}:\n  " + "\n  ".join(bad)


# Private names another module may still import (none now).
PRIVATE_IMPORTS_PENDING: set[tuple[str, str]] = set()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_names_cross_modules(module):
    """A helper another module needs is public (``metric_rows``, ``checked_index``), not ``_private``."""
    tree = ast.parse(MODULES[module].read_text())
    private = [
        f"line {node.lineno}: from {node.module} import {alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (*PACKAGES, "tests")
        for alias in node.names
        if alias.name.startswith("_")
        and not alias.name.startswith("__")
        and (module, alias.name) not in PRIVATE_IMPORTS_PENDING
    ]
    assert not private, f"{module} imports private names of other modules:\n  " + "\n  ".join(private)
