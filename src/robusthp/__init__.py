"""robusthp: SGD hyperparameters of natural training vs adversarial robustness and curvature.

Layers (imports point down only):
  core       models/, attacks.py, hessian.py, optim.py, side_effects.py   (pure torch)
  lightning  lit_module.py, data/, callbacks/                          (no Hydra)
  face       run.py, report.py                                         (Hydra, files)
"""

__version__ = "0.1.0"
