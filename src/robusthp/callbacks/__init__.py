"""Robustness and curvature as Lightning callbacks for any Lightning project.

    from robusthp.callbacks import AdversarialRobustness, HessianEigenvalues, PerturbationRobustness
    trainer = pl.Trainer(callbacks=[AdversarialRobustness(eps=0.3), HessianEigenvalues(top_n=1),
                                    PerturbationRobustness(dataset="mnist")])

Each works with ``pytorch_lightning`` and ``lightning.pytorch`` Trainers alike, whether the
data comes in a datamodule, as plain loaders to ``fit``/``test`` or as ``dataloader=``
(each class's docstring gives its rules). None breaks the user's fit: with no data at
its end they warn and evaluate at ``trainer.test`` instead, and a diverged model (NaN
weights) is skipped with a warning. All share one implementation of hooks, skip rules,
data resolution, RNG guard, progress bar and argument checks (``_lightning.py``); their
defaults are ``robusthp.settings``'. No Hydra.

Two measure training as it goes rather than the trained model: ``GradientStatistics``
(per-epoch gradient norm and variance, on the inputs the module trains on) and
``RobustValidation`` (per-epoch PGD accuracy on validation points).
"""

from robusthp.callbacks.adversarial import AdversarialRobustness
from robusthp.callbacks.function_measures import FunctionMeasures
from robusthp.callbacks.gradient_stats import GradientStatistics
from robusthp.callbacks.hessian import HessianEigenvalues
from robusthp.callbacks.invariance import InvarianceProfile
from robusthp.callbacks.perturbation import PerturbationRobustness
from robusthp.callbacks.robust_validation import RobustValidation
from robusthp.callbacks.universal import UniversalPerturbation

__all__ = ["AdversarialRobustness", "FunctionMeasures", "GradientStatistics", "HessianEigenvalues",
           "InvarianceProfile", "PerturbationRobustness", "RobustValidation", "UniversalPerturbation"]
