"""robusthp: SGD hyperparameters of natural training vs adversarial robustness and curvature.

Layers (imports point down only):
  tables     catalog.py (datasets, models, regimes), settings.py (every setting,
             its default and check), results.py                      (pure Python)
  core       models/, attacks/, hessian.py, optim.py, side_effects.py     (pure torch)
  lightning  lit_module.py, data/, callbacks/                          (no Hydra)
  face       run.py, config.py, config_store.py, report/               (Hydra, files)
"""

from importlib import metadata as _metadata

try:  # one version, pyproject.toml's, read from the installed package's metadata
    __version__ = _metadata.version("robusthp")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
