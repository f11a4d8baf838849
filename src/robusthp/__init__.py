"""robusthp: SGD hyperparameters of natural training vs adversarial robustness and curvature.

Layers (imports point down only):
  tables     catalog.py (datasets, models, regimes), settings.py (every setting,
             its default and check), results.py                      (pure Python)
  core       models/, attacks/, hessian.py, optim.py, side_effects.py     (pure torch)
  lightning  lit_module.py, data/, callbacks/                          (no Hydra)
  face       run.py, config.py, config_store.py, report/               (Hydra, files)
"""

__version__ = "0.1.0"
