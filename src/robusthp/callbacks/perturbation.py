"""``PerturbationRobustness``: accuracy of any LightningModule under Ma et al. 2023's
perturbations (Gaussian noise, DCT band noise, PGD-L2, optionally AutoAttack), as a callback.

    import lightning.pytorch as pl            # or: import pytorch_lightning as pl
    from robusthp.callbacks import PerturbationRobustness
    cb = PerturbationRobustness(dataset="mnist")          # the study's MNIST budgets
    pl.Trainer(callbacks=[cb]).fit(model, datamodule=dm)
    cb.results  # {"perturbation_clean_acc": ..., "gaussian_acc@0.01": ..., "band_drop@9": ...}

Ma, Pan, Farahmand, 'Understanding the robustness difference between SGD and adaptive
gradient methods' (arXiv 2308.06703): models trained with SGD and with Adam reach similar
clean accuracy, the SGD ones are far more robust to these perturbations. The
perturbations are ``robusthp.attacks``' (``gaussian_noise``, ``band_noise``, ``pgd_l2``,
``autoattack``), all in ``[0, 1]`` pixels, evaluated through the one attack loop
``robust_accuracy`` (each test point counts, clean-misclassified ones too).

When, on which data and when not: exactly as ``AdversarialRobustness`` (its module
docstring; the shared rules are ``_lightning.StageHooks``'): at the end of fit and/or
test, test data only (``dataloader=``, else the datamodule's ``test_dataloader()`` at
fit end, the running test's loader at test end; none at fit end moves the evaluation to
the next ``trainer.test``), global rank zero only, not after an interrupted fit, and a
diverged model is skipped: ``results == {"perturbation_skipped": reason}``.

Budgets: a budget left None (``noise_var``, ``band_var``, ``l2_eps``, ``linf_eps``) is the
study's for ``dataset`` (``robusthp.catalog.perturbation_budgets``); an empty list turns
that kind off. The noises run on the first ``num_samples`` test points, the attacks
(PGD-L2, AutoAttack) on the first ``attack_num_samples`` of those (None: all), as the
authors add noise to the whole test set and attack the first 1,000. Each perturbation (kind and budget) draws its noise from its own private
``torch.Generator`` seeded ``seed`` on the model's device, so adding or removing one
never changes another's draws, and the Gaussian variances share their standard-normal
draws. The draws depend on ``batch_size`` (the batches they are drawn in); PGD-L2 is
deterministic; AutoAttack uses torchattacks' ``seed``.

``self.results`` keys (the report and results.json rely on them), budgets printed with
``:g``:

* ``perturbation_clean_acc``;
* ``gaussian_acc@<var>`` per noise variance;
* ``band_acc@<i>`` and ``band_drop@<i>`` (``perturbation_clean_acc - band_acc@<i>``), for
  ``i`` in ``0 .. bands-1`` (band 0: the lowest frequencies);
* ``pgd_l2_acc@<eps>`` per L2 eps;
* with ``autoattack``: ``autoattack_linf_acc@<eps>`` per ``linf_eps`` and
  ``autoattack_l2_acc@<eps>`` per ``l2_eps``;
* ``perturbation_num_samples`` (the noises' points), ``perturbation_bands`` (int),
  ``perturbation_time_s``; with any attack, ``perturbation_attack_num_samples`` and
  ``perturbation_attack_clean_acc`` (clean accuracy on the attacked points).

Loggers get the accuracies and the band drops, prefixed ``pert/``. The model's
train/eval flags, parameters' ``.grad`` and the global RNGs (torch's CPU, Python's,
NumPy's; AutoAttack's reseeding too) are left as found.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from robusthp.attacks import bind, robust_accuracy
from robusthp.callbacks import _lightning as shared
from robusthp.callbacks.adversarial import _device_of
from robusthp.catalog import MA2023_BUDGETS, perturbation_budgets
from robusthp.settings import PerturbationSettings, boolean, eps_values, integer, positive_number

log = logging.getLogger(__name__)

LOG_PREFIX = "pert/"
_OWNER = "PerturbationRobustness"


class _PerturbationRobustnessLogic(shared.TestDataEvaluation):
    """Lightning-free logic; ``PerturbationRobustness`` adds the Callback bases."""

    owner, skip_key, _log = _OWNER, "perturbation_skipped", log
    log_prefix, title = LOG_PREFIX, "perturbation robustness"

    def __init__(
        self,
        noise_var: float | Sequence[float] | None = PerturbationSettings.noise_var,
        bands: int = PerturbationSettings.bands,
        band_var: float | None = PerturbationSettings.band_var,
        l2_eps: float | Sequence[float] | None = PerturbationSettings.l2_eps,
        l2_steps: int = PerturbationSettings.l2_steps,
        autoattack: bool = PerturbationSettings.autoattack,
        linf_eps: float | Sequence[float] | None = PerturbationSettings.linf_eps,
        dataset: str | None = None,
        num_samples: int | None = PerturbationSettings.num_samples,
        attack_num_samples: int | None = PerturbationSettings.attack_num_samples,
        dataloader: Iterable[Any] | None = None,
        batch_to_xy: shared.BatchToXY | None = None,
        on: str | Sequence[str] = ("fit_end",),
        seed: int = 0,
        batch_size: int | None = PerturbationSettings.batch_size,
        progress: bool = True,
    ) -> None:
        super().__init__()
        self.bands = shared.check_value(_OWNER, integer(0), bands, "bands")
        self.band_var = _band_var(band_var, dataset, needed=bool(self.bands))
        self.l2_steps = shared.check_value(_OWNER, integer(1), l2_steps, "l2_steps")
        self.autoattack = shared.check_value(_OWNER, boolean, autoattack, "autoattack")
        self.dataset = dataset
        self.noise_var = _budget(noise_var, "noise_var", dataset)
        self.l2_eps = _budget(l2_eps, "l2_eps", dataset)
        self.linf_eps = _budget(linf_eps, "linf_eps", dataset, needed=self.autoattack)
        if self.autoattack and importlib.util.find_spec("torchattacks") is None:
            raise ImportError(f"{_OWNER}: autoattack=True needs torchattacks: pip install torchattacks")
        self.on, self.num_samples, self.batch_size, self.batch_to_xy = shared.check_common(
            _OWNER, on=on, num_samples=num_samples, batch_size=batch_size, batch_to_xy=batch_to_xy
        )
        self.attack_num_samples = shared.check_value(
            _OWNER, integer(1, optional=True), attack_num_samples, "attack_num_samples")
        self.seed = shared.check_value(_OWNER, integer(), seed, "seed")
        self.dataloader, self.progress = dataloader, bool(progress)
        self.results: dict[str, Any] = {}

    # ------------------------------------------------------------ what the loggers get

    def logged(self, key: str, value: Any) -> bool:
        return "_acc" in key or key.startswith("band_drop@")

    # ------------------------------------------------------------ the evaluation

    def evaluate(
        self, model: nn.Module, loader: Iterable[Any], device: torch.device | str | None = None
    ) -> dict[str, Any]:
        """Clean and noisy accuracy of ``model`` on the first ``num_samples`` of ``loader``,
        attacked accuracy on the first ``attack_num_samples`` of those: the keys of the
        module docstring."""
        start = time.perf_counter()
        batches = shared.gather_batches(loader, self.num_samples, self.batch_to_xy, self.batch_size)
        fns = self.perturbation_fns(_device_of(model, device))
        noises = {k: fn for k, fn in fns.items() if k.startswith(_NOISES)}
        attacks = {k: fn for k, fn in fns.items() if k not in noises}
        attack_batches = _first(batches, self.attack_num_samples)
        total = len(batches) + (len(attack_batches) if attacks else 0)
        with shared.progress_bar(self.progress, "perturbation eval") as progress:
            accs = robust_accuracy(model, batches, noises, device=device,
                                   progress=lambda done, _: progress(done, total))
            if attacks:
                attacked = robust_accuracy(model, attack_batches, attacks, device=device,
                                           progress=lambda done, _: progress(len(batches) + done, total))
        results = self._named(accs)
        if attacks:
            results.update(self._attacked(attacked))
        results["perturbation_time_s"] = time.perf_counter() - start
        return results

    def perturbation_fns(self, device: torch.device) -> dict[str, Callable[..., Tensor]]:
        """``{name@budget: fn(model, x, y) -> x_perturbed}``; each noise with its own
        generator seeded ``seed`` on ``device``."""
        fns: dict[str, Callable[..., Tensor]] = {}
        for var in self.noise_var:
            fns[f"gaussian@{var:g}"] = bind("gaussian", var=var, generator=self._generator(device))
        for band in range(self.bands):
            fns[f"band@{band}"] = bind("band", band=band, bands=self.bands, var=self.band_var,
                                       generator=self._generator(device))
        for eps in self.l2_eps:
            fns[f"pgd_l2@{eps:g}"] = bind("pgd_l2", eps=eps, steps=self.l2_steps)
        if self.autoattack:
            for norm, budget in (("Linf", self.linf_eps), ("L2", self.l2_eps)):
                for eps in budget:
                    fns[f"autoattack_{norm.lower()}@{eps:g}"] = bind(
                        "autoattack", eps=eps, norm=norm, seed=self.seed)
        return fns

    def _generator(self, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def _named(self, accs: dict[str, float]) -> dict[str, Any]:
        """``robust_accuracy``'s keys under this callback's names, the band drops added."""
        clean = accs["clean_acc"]
        results: dict[str, Any] = {"perturbation_clean_acc": clean}
        results.update({k: v for k, v in accs.items() if k.startswith(("gaussian_acc@", "band_acc@"))})
        results.update({f"band_drop@{i}": clean - accs[f"band_acc@{i}"] for i in range(self.bands)})
        results["perturbation_num_samples"] = accs["num_samples"]
        results["perturbation_bands"] = int(self.bands)
        return results

    @staticmethod
    def _attacked(accs: dict[str, float]) -> dict[str, Any]:
        """The attacks' accuracies, with the size and clean accuracy of their subset."""
        results = {k: v for k, v in accs.items() if k.startswith(("pgd_l2_acc@", "autoattack_"))}
        results["perturbation_attack_num_samples"] = accs["num_samples"]
        results["perturbation_attack_clean_acc"] = accs["clean_acc"]
        return results


class PerturbationRobustness(_PerturbationRobustnessLogic, *shared.callback_bases()):
    """Accuracy under Ma et al. 2023's perturbations at the end of fit and/or test, for
    either Lightning namespace (module docstring: the keys, data and skip rules).

    Args:
        noise_var: Gaussian noise variances (pixels squared; clamped to ``[0, 1]``). None:
            the study's for ``dataset`` (MNIST 0.01, 0.05, 0.1; CIFAR-10 0.001, 0.005,
            0.007); ``[]``: no Gaussian noise.
        bands: number of equal-count radial DCT bands (default 10, the study's); 0: no
            band noise. band_var: variance of the band noise's DCT coefficients. None:
            the study's for ``dataset`` (MNIST and Fashion-MNIST 0.1, CIFAR-10 0.01).
        l2_eps: PGD-L2 radii (pixels), also AutoAttack L2's. None: the study's for
            ``dataset`` (MNIST 0.5, 0.7, 1.0; CIFAR-10 0.1, 0.2, 0.3); ``[]``: none.
        l2_steps: PGD-L2 steps (default 40; step ``2.5 * eps / l2_steps``).
        autoattack: also run AutoAttack (standard, torchattacks; slow): L-inf at
            ``linf_eps`` and L2 at ``l2_eps``. Default False.
        linf_eps: AutoAttack's L-inf radii (pixels). None: the study's for ``dataset``
            (MNIST 0.05, 0.07, 0.1; CIFAR-10 1, 2, 4 /255); only used with ``autoattack``.
        dataset: the dataset whose study budgets fill the None ones (``mnist``,
            ``fashion_mnist``, ``cifar10``; any other: MNIST's, with a warning).
        num_samples: evaluate on the first N test points (default 1000; None: all, as the
            study's noise evaluations).
        attack_num_samples: run PGD-L2 and AutoAttack on the first N of those (default
            None: all of them; the study attacks the first 1000).
        dataloader, batch_to_xy, on, progress: as ``AdversarialRobustness``'.
        seed: the seed of every noise generator and of AutoAttack (default 0).
        batch_size: re-batch the samples (default 1000; None: the loader's batches).

    Defaults are ``robusthp.settings.PerturbationSettings``' (the CLI's too).
    """


# ---------------------------------------------------------------- helpers

_NOISES = ("gaussian@", "band@")  # the perturbation_fns names that are noise, not attacks


def _first(batches: list[tuple[Tensor, Tensor]], n: int | None) -> list[tuple[Tensor, Tensor]]:
    """The first ``n`` points of ``batches`` (None: all), in the same batches."""
    if n is None:
        return batches
    out, left = [], n
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(y)
    return out


def _band_var(value: float | None, dataset: str | None, needed: bool) -> float | None:
    """The band noise's variance: the given one, else the study's for ``dataset``."""
    if value is not None:
        return shared.check_value(_OWNER, positive_number, value, "band_var")
    if not needed:
        return None
    if dataset is None:
        raise ValueError(f"{_OWNER}: band_var=None takes the study's for dataset=, but dataset "
                         f"is None; pass band_var= or dataset= (one of {', '.join(MA2023_BUDGETS)})")
    return _budget(None, "band_var", dataset)


def _budget(
    value: float | Sequence[float] | None, key: str, dataset: str | None, needed: bool = True
) -> tuple[float, ...]:
    """The budgets of one kind: the given ones (checked, distinct as printed with ``:g``),
    ``()`` for an empty list (or a None one that is not ``needed``), else the study's for
    ``dataset``."""
    if value is None:
        if not needed:
            return ()
        if dataset is None:
            raise ValueError(f"{_OWNER}: {key}=None takes the study's budgets for dataset=, but "
                             f"dataset is None; pass {key}=[...] or dataset= (one of "
                             f"{', '.join(MA2023_BUDGETS)})")
        if dataset not in MA2023_BUDGETS:
            log.warning("%s: Ma et al. 2023 give no budgets for dataset %r; %s takes MNIST's",
                        _OWNER, dataset, key)
        return getattr(perturbation_budgets(dataset), key)
    if isinstance(value, (list, tuple)) and not value:
        return ()
    values = shared.check_value(_OWNER, eps_values, value, key)
    labels = [f"{v:g}" for v in values]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{_OWNER}: {key} values must be distinct (as printed with :g); got {labels}")
    return values
