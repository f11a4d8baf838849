"""Robustness and curvature as Lightning callbacks for any Lightning project.

    from robusthp.callbacks import AdversarialRobustness, HessianEigenvalues
    trainer = pl.Trainer(callbacks=[AdversarialRobustness(eps=0.3), HessianEigenvalues(top_n=1)])

Each works with ``pytorch_lightning`` and ``lightning.pytorch`` Trainers alike, whether the
data comes in a datamodule, as plain loaders to ``fit``/``test`` or as ``dataloader=``
(each class's docstring gives its rules). Neither breaks the user's fit: with no data at
its end they warn and evaluate at ``trainer.test`` instead, and a diverged model (NaN
weights) is skipped with a warning. Both share one implementation of hooks, skip rules,
data resolution, RNG guard, progress bar and argument checks (``_lightning.py``); their
defaults are ``robusthp.settings``'. No Hydra.
"""

from robusthp.callbacks.adversarial import AdversarialRobustness
from robusthp.callbacks.hessian import HessianEigenvalues

__all__ = ["AdversarialRobustness", "HessianEigenvalues"]
