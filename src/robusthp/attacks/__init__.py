"""L-inf evasion attacks (FGSM, PGD) and robust accuracy, in pure torch.

The code lives in ``robusthp.attacks.linf`` for now; ``robusthp.attacks`` stays the
import path, with the same names.
"""

# the settings constants and type aliases stay importable from here, outside __all__ as before
from robusthp.attacks.linf import (  # noqa: F401
    ALPHA_EPS_BUDGET,
    ATTACKS,
    DEFAULT_PGD_STEPS,
    MIN_EPS_BISECTIONS,
    MIN_EPS_CURVE_POINTS,
    MIN_EPS_PROBE_STEPS,
    MIN_EPS_SWEEP_STEPS,
    PIXEL_TOL,
    PROBE_COARSE_ALPHA,
    PROBE_FINE_ALPHA,
    AttackFn,
    AttackWarning,
    Box,
    acc_key,
    bind,
    check_attack_args,
    default_alpha,
    fgsm,
    get_attack,
    min_eps_summary,
    minimal_adversarial,
    minimal_eps,
    pgd,
    register_attack,
    robust_accuracy,
    robustness_curve,
)

__all__ = [
    "ATTACKS",
    "AttackWarning",
    "acc_key",
    "bind",
    "check_attack_args",
    "default_alpha",
    "fgsm",
    "get_attack",
    "min_eps_summary",
    "minimal_adversarial",
    "minimal_eps",
    "pgd",
    "register_attack",
    "robust_accuracy",
    "robustness_curve",
]
