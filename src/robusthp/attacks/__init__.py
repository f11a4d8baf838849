"""Evasion attacks (FGSM, PGD; PGD-L2, AutoAttack), random perturbations (Gaussian and
DCT band noise) and accuracy under them, in pure torch.

Contract shared by every attack here:

- ``x``: float tensor ``(N, ...)`` (images ``(N, C, H, W)``), pixels in ``[0, 1]``; any
  normalization lives inside the model. ``y``: ``(N,)`` integer class indices.
- The model returns **logits** ``(N, num_classes)``; the loss is cross-entropy (mean
  over the batch, as torchattacks). Outputs that look like probabilities warn.
- Returns the adversarial ``x_adv`` (same shape and dtype as ``x``, detached, on
  ``x``'s device) with ``|x_adv - x|_inf <= eps`` and ``x_adv`` in ``[0, 1]``
  (``pgd_l2``, AutoAttack's L2: ``||x_adv - x||_2 <= eps`` per sample; the noises:
  see ``noise``, whose band noise is added unclamped).
- ``eps`` (and ``alpha``) is a float (one box for everything: torchattacks' exact
  arithmetic) or a tensor broadcastable to ``x``, an elementwise box
  ``|x_adv - x| <= eps``: ``(C, 1, 1)`` per channel (CIFAR-10's "normalized" reading,
  ``eps_pixel_c = eps * std_c``), ``(N, 1, 1, 1)`` per sample, or ``(N, C, 1, 1)``.
- Side effects: none. The model runs in eval mode and each submodule's own
  train/eval flag is restored afterwards; no parameter's ``.grad`` is written
  (``torch.autograd.grad`` w.r.t. the input only; AutoAttack's FAB writes and is undone);
  the global RNG is never drawn from (AutoAttack reseeds it: its state is restored);
  works under ``torch.no_grad``/``torch.inference_mode`` (inference-tensor inputs are
  cloned); runs in fp32 even inside ``torch.autocast``.

The code, by job (every name is imported from ``robusthp.attacks``, the public path):

- ``linf``: ``fgsm`` and ``pgd``, both run by the one attack loop ``_linf_pgd``; the eps/alpha
  boxes, ``default_alpha``, ``check_attack_args`` and the input checks; the defaults and why.
- ``l2``: ``pgd_l2``, PGD in the L2 ball (torchattacks ``PGDL2``'s arithmetic).
- ``noise``: ``gaussian_noise`` and ``band_noise`` (Ma et al. 2023's random perturbations,
  the attacks' call shape), ``dct_matrix`` and ``radial_bands``.
- ``autoattack``: ``autoattack``, AutoAttack at the reference implementation's settings
  from torchattacks' sub-attacks (a lazy import), with the global RNG, ``.grad`` and
  train/eval flags restored; an L-inf box per channel too.
- ``accuracy``: the registry of attacks and perturbations by name (``ATTACKS``: fgsm, pgd,
  pgd_l2, gaussian, band, autoattack; ``register_attack``, ``get_attack``, ``bind``) and
  ``robust_accuracy`` over all evaluated points (``acc_key``), from per-point
  ``correct_masks``; ``worst_case``: robust only if every attack at an eps failed.
- ``minimal``: ``minimal_eps`` / ``minimal_adversarial`` (the per-example minimal eps*),
  ``robustness_curve`` and ``min_eps_summary``.
- ``deepfool``: ``deepfool`` / ``deepfool_perturbation``, L2 DeepFool (a minimal
  perturbation, no budget: not in the registry).
- ``universal``: SVD-Universal (``svd_universal``: the top right singular vector of n
  points' attack directions, ``attack_directions``, ``top_singular_direction``), its
  ``fooling_rates`` and the universal invariant direction of rotation tangents
  (``invariant_direction``, a reconstruction).

Example::

    >>> from robusthp.attacks import bind, fgsm, pgd, robust_accuracy
    >>> x_adv = pgd(model, x, y, eps=0.3, steps=40)            # alpha = 0.01875
    >>> accs = robust_accuracy(model, [(x, y)], {"fgsm": bind("fgsm", eps=0.3),
    ...                                          "pgd": bind("pgd", eps=0.3)})
    >>> accs = robust_accuracy(model, [(x, y)], {"pgd_l2@0.5": bind("pgd_l2", eps=0.5),
    ...                                          "gaussian@0.05": bind("gaussian", var=0.05)})
    >>> eps_star = minimal_eps(model, x, y, eps_max=0.6)      # (N,) pixels, inf = > 0.6
    >>> acc = robustness_curve(eps_star, torch.linspace(0, 0.6, 101))
"""

# the modules' constants and type aliases are importable from here too, so a caller takes an
# attack and its defaults from one place; __all__ lists the attacks and helpers only
from robusthp.attacks.accuracy import (  # noqa: F401
    ATTACK_KINDS,
    ATTACKS,
    AttackFn,
    acc_key,
    accuracies,
    attack_names,
    bind,
    correct_masks,
    get_attack,
    register_attack,
    robust_accuracy,
    worst_case,
)
from robusthp.attacks.auto_attack import autoattack
from robusthp.attacks.deepfool import deepfool, deepfool_perturbation
from robusthp.attacks.l2 import DEFAULT_L2_STEPS, pgd_l2  # noqa: F401
from robusthp.attacks.linf import (  # noqa: F401
    ALPHA_EPS_BUDGET,
    DEFAULT_PGD_STEPS,
    PIXEL_TOL,
    AttackWarning,
    Box,
    check_attack_args,
    default_alpha,
    fgsm,
    pgd,
)
from robusthp.attacks.minimal import (  # noqa: F401
    MIN_EPS_BISECTIONS,
    MIN_EPS_CURVE_POINTS,
    MIN_EPS_PROBE_STEPS,
    MIN_EPS_SWEEP_STEPS,
    PROBE_COARSE_ALPHA,
    PROBE_FINE_ALPHA,
    bounded_by_attacks,
    min_eps_summary,
    minimal_adversarial,
    minimal_eps,
    robustness_curve,
)
from robusthp.attacks.noise import band_noise, dct_matrix, gaussian_noise, radial_bands
from robusthp.attacks.universal import (
    ATTACK_DIRECTIONS,
    UniversalDirection,
    abs_cosine,
    attack_directions,
    fooling_rates,
    invariant_direction,
    svd_universal,
    top_singular_direction,
)

__all__ = [
    "ATTACKS",
    "ATTACK_KINDS",
    "attack_names",
    "AttackWarning",
    "acc_key",
    "accuracies",
    "autoattack",
    "band_noise",
    "bind",
    "bounded_by_attacks",
    "check_attack_args",
    "correct_masks",
    "dct_matrix",
    "default_alpha",
    "fgsm",
    "gaussian_noise",
    "get_attack",
    "min_eps_summary",
    "minimal_adversarial",
    "minimal_eps",
    "pgd",
    "pgd_l2",
    "radial_bands",
    "register_attack",
    "robust_accuracy",
    "robustness_curve",
    "ATTACK_DIRECTIONS",
    "UniversalDirection",
    "abs_cosine",
    "attack_directions",
    "deepfool",
    "deepfool_perturbation",
    "fooling_rates",
    "invariant_direction",
    "svd_universal",
    "top_singular_direction",
    "worst_case",
]
