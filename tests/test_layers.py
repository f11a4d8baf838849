"""The layers' import direction, read from the source (AST), not from a running import.

Layers, imports pointing down only: tables (torch-free settings and tables), core (pure
torch: usable without Lightning), Lightning (usable without Hydra), application (Hydra
entry points, the run pipeline, evaluate, report). A module may import robusthp modules of
its own layer or below, and each layer keeps out the third-party stack of the layers above
it. The map is written here, once: a new module must be placed in it (the last test).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "robusthp"

TABLES, CORE, LIGHTNING, APP = range(4)
NAMES = {TABLES: "tables", CORE: "core", LIGHTNING: "Lightning", APP: "application"}
LAYER_OF = {  # module or package prefix -> layer; the longest prefix wins
    "robusthp": TABLES,  # the package's __init__: its version only
    "robusthp.catalog": TABLES, "robusthp.settings": TABLES, "robusthp.results": TABLES,
    "robusthp.models": CORE, "robusthp.attacks": CORE, "robusthp.hessian": CORE,
    "robusthp.spectral_density": CORE, "robusthp.optim": CORE, "robusthp.rotation": CORE,
    "robusthp.side_effects": CORE, "robusthp.function_measures": CORE,
    "robusthp.gradient_stats": CORE, "robusthp.per_example": CORE, "robusthp.engm": CORE,
    "robusthp.lit_module": LIGHTNING, "robusthp.data": LIGHTNING, "robusthp.callbacks": LIGHTNING,
    "robusthp.run": APP, "robusthp.config": APP, "robusthp.config_store": APP,
    "robusthp.experiment": APP, "robusthp.evaluate": APP, "robusthp.summary": APP,
    "robusthp.report": APP,
}
# third-party packages a layer must not import (at module level or inside functions)
FORBIDDEN = {
    TABLES: ("torch", "lightning", "pytorch_lightning", "hydra", "omegaconf"),
    CORE: ("lightning", "pytorch_lightning", "hydra", "omegaconf"),
    LIGHTNING: ("hydra", "omegaconf"),
    APP: (),
}


def module_name(path: Path) -> str:
    parts = ("robusthp", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int | None:
    # "robusthp" (the package's __init__) names itself only, not every module under it
    best = max((p for p in LAYER_OF if name == p or (p != "robusthp" and name.startswith(p + "."))),
               key=len, default=None)
    return None if best is None else LAYER_OF[best]


def imports(name: str, source: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every absolute name module ``name`` imports in ``source``, with its line (relative
    imports resolved against its package)."""
    package = name if is_package else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            out.append((base, node.lineno))
            out += [(f"{base}.{alias.name}", node.lineno) for alias in node.names
                    if base.startswith("robusthp") and layer(f"{base}.{alias.name}") is not None]
    return out


def violations(name: str, source: str, is_package: bool = False) -> list[str]:
    """Why each import of module ``name`` breaks the layering (empty: none does)."""
    own = layer(name)
    if own is None:
        return [f"{name} is in no layer: add it to LAYER_OF"]
    out = []
    for target_name, line in imports(name, source, is_package):
        top = target_name.split(".")[0]
        if top in FORBIDDEN[own]:
            out.append(f"{name}:{line} ({NAMES[own]}) imports {target_name}, which the layer keeps out")
        target = layer(target_name) if top == "robusthp" else None
        if target is not None and target > own:
            out.append(f"{name}:{line} ({NAMES[own]}) imports {target_name} ({NAMES[target]}): "
                       "an arrow pointing up")
    return out


MODULES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    assert violations(module_name(path), path.read_text(), path.name == "__init__.py") == []


@pytest.mark.parametrize("name, source, expected", [
    ("robusthp.attacks.probe", "from robusthp.callbacks import AdversarialRobustness\n",
     "an arrow pointing up"),
    ("robusthp.attacks.probe", "from ..callbacks import adversarial\n", "an arrow pointing up"),
    ("robusthp.hessian", "import lightning.pytorch as pl\n", "which the layer keeps out"),
    ("robusthp.settings", "def f():\n    import torch\n", "which the layer keeps out"),
    ("robusthp.callbacks.probe", "from omegaconf import OmegaConf\n", "which the layer keeps out"),
    ("robusthp.newthing", "import os\n", "in no layer"),
])
def test_the_walker_catches_each_kind_of_break(name, source, expected):
    found = violations(name, source)
    assert found and all(expected in why for why in found), found


def test_imports_within_and_below_pass():
    assert violations("robusthp.callbacks.probe",
                      "import torch\nfrom robusthp.attacks import pgd\nfrom . import _lightning\n") == []
