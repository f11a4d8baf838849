"""Robustness and curvature as Lightning callbacks for any Lightning project.

    from robusthp.callbacks import AdversarialRobustness, HessianEigenvalues
    trainer = pl.Trainer(callbacks=[AdversarialRobustness(eps=0.3), HessianEigenvalues(top_n=1)])
"""

from robusthp.callbacks.adversarial import AdversarialRobustness
from robusthp.callbacks.hessian import HessianEigenvalues

__all__ = ["AdversarialRobustness", "HessianEigenvalues"]
