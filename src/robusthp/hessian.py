"""Top eigenvalues of the training-loss Hessian w.r.t. the model parameters ("principal curvature").

The loss is the mean cross-entropy over a data subset given as batches; with batches of
sizes n_b (N in all) it is the size-weighted mean L = sum_b (n_b / N) L_b, so a short last
batch counts right, and H = sum_b (n_b / N) H_b. Kamath et al. (arXiv 2006.11604) follow
Yao et al. (arXiv 1802.08241): power iteration on Hessian-vector products (HVPs).

Backends (``top_eigenvalues(..., backend=...)``):

- ``"lanczos"`` (ours): Lanczos with full re-orthogonalisation on exact HVPs (double
  backward through ``torch.autograd.grad``). Returns the *algebraically largest*
  eigenvalues. It starts (``warm_start=True``) from the top Ritz vector of a few Lanczos
  steps on the Hessian of a small subsample (at most 128 samples, 1/8 of the data), much
  closer to the top eigenvector than a random vector; it stops on the residual of the full
  Hessian, so the eigenvalue is the full loss's whatever the start. To 1e-4 on briefly
  trained MNIST nets (benchmarks/hessian.py, M1 and StdCNN, medians over start seeds 0-4):
  4x fewer full HVPs than power iteration, 3.1-3.4x less time (warm start included; from a
  random start 2.2-3.4x fewer, 1.9-3.3x less time), more as lambda_2 / lambda_1 approaches
  1; its tol bounds the Ritz residual, so at tol 1e-3 the eigenvalue is typically accurate
  to ~1e-6, PyHessian's to ~1e-3. A product costs the same in both backends (the same
  double backward); forward-over-reverse products, channels_last and several vectors per
  pass were measured and not faster on CPU (benchmarks/hessian.py's docstring).
- ``"pyhessian"``: PyHessian 0.1 (Yao et al., arXiv 1912.07145), the reference the study
  names: power iteration with deflation. It returns the eigenvalues of *largest magnitude*
  (the same as ours whenever the top eigenvalue dominates the most negative one, as after
  training). Its side effects (eval mode left on, global RNG draws, ``.grad`` writes, CUDA
  forced, crash on parameters without gradient) are absorbed here. Its products are
  counted by a subclass of its ``hessian`` class (``_counted_pyhessian_class``); the
  pyhessian module itself is never modified, so other users of it are unaffected (torch's
  global RNG, which PyHessian draws its start vectors from, is seeded for the call and
  restored after it).

``top_eigenvalues``' defaults (backend, top_n, max_iter, tol) are
``robusthp.settings.HessianSettings``', the same as the callback's and the CLI's.

Only parameters with ``requires_grad`` that receive a gradient enter the Hessian; the zero
rows of unused parameters are left out (so are their zero eigenvalues).

Memory: by default (``reuse_graph=False``) a Hessian-vector product runs batch by batch,
the gradient with ``create_graph`` and the second backward of one batch, whose graph is
freed before the next: the peak is one batch's graph, so the batch size bounds it (the
callback re-batches to ``eval.hessian.batch_size``). ``reuse_graph=True`` keeps the
gradient graph of every batch alive across products: fewer backward passes per product,
memory growing with the number of samples (benchmarks/hessian_memory.py measures both).
Lanczos also keeps one vector of the parameter count per iteration (``max_iter`` at most);
its warm start briefly adds the kept graph of its subsample (at most 128 samples).

Beyond the top eigenvalues, on the same products (``eval.hessian.trace``, ``.density``,
``.per_layer``): ``hessian_trace`` (Hutchinson's estimator to a relative standard error),
``hessian_density`` (the eigenvalue density by stochastic Lanczos quadrature, Ghorbani et al.
arXiv 1901.10159, as PyHessian's ``hessian.density``; ``smoothed_density`` puts it on a
grid) and ``layer_top_eigenvalues`` (the top eigenvalue of each module's diagonal block).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robusthp.settings import HESSIAN_BACKENDS, HessianSettings
from robusthp.side_effects import detached_copy, eval_mode, fp32, gradients_on, preserved_grads
from robusthp.spectral_density import smoothed_density as smoothed_density  # torch-free

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Vec = list[torch.Tensor]


@dataclass
class HessianResult:
    """What ``top_eigenvalues`` found.

    eigenvalues: top_n values, sorted descending. residuals: per eigenvalue, lanczos the
    relative residual estimate |beta_k s_k| / |theta|; pyhessian the relative change between
    its last two power-iteration estimates (its own stopping rule). num_hvp: full-data
    Hessian-vector products used. converged: every residual below ``tol``. history: the
    estimate after each HVP (lanczos, the top Ritz value; pyhessian, the Rayleigh quotient
    of the eigenvalue being computed at the time), for convergence plots and benchmarks.
    warm_hvp: lanczos, the products on the warm start's subsample (each costs about
    subsample / N of a full one; their time is in ``seconds``), not in num_hvp or history.
    residual_history: lanczos, after each HVP the largest residual of the top_n (what tol
    is compared with: a run with a larger tol stops at the first entry below it and
    returns that entry's estimate); pyhessian, empty.
    """

    eigenvalues: list[float]
    backend: str
    num_hvp: int
    residuals: list[float] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)
    warm_hvp: int = 0
    residual_history: list[float] = field(default_factory=list)

    @property
    def top(self) -> float:
        return self.eigenvalues[0]


# --------------------------------------------------------------------------- HVP machinery


class NoCurvature(ValueError):
    """The loss has no second derivative in the parameters asked for."""



class _HVP:
    """Hessian-vector products of the size-weighted mean loss, on flat vectors.

    ``active`` are the parameters whose gradient depends on the parameters (others have a
    zero Hessian row and column). Two ways to make a product:

    - bounded (``reuse_graph=False``, the default): per batch, the gradient with
      ``create_graph`` and at once the second backward through it, which frees that
      batch's graph before the next batch is touched; H v = sum_b (n_b / N) H_b v. Peak
      memory is one batch's double-backward graph, whatever the number of batches; each
      product costs one extra forward and backward per batch.
    - kept (``reuse_graph=True``): the gradient graph of all batches is built once and
      every product is one backward through it (retain_graph). Faster, but all batches'
      activations and first-backward graphs stay alive for the whole run.

    With a single batch both are the same peak memory (that batch's graph), so the graph is
    kept either way. Which parameters are active is read off the kept graph, or, bounded,
    off a two-sample probe of the first batch (a structural property: only models whose
    control flow depends on the data could differ between batches; the products check it).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: list[Batch],
        loss_fn: LossFn,
        reuse_graph: bool,
        active: Vec | None = None,
        params: Vec | None = None,
    ):
        self.model, self.batches, self.loss_fn = model, batches, loss_fn
        self.num_samples = sum(len(y) for _, y in batches)
        self.weights = [len(y) / self.num_samples for _, y in batches]
        # given: a diagonal block of the Hessian, the other parameters held fixed
        self.params = [p for p in (model.parameters() if params is None else params)
                       if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no parameter with requires_grad=True")
        self.grads: list | None = None
        self.kept = reuse_graph or len(batches) == 1
        if self.kept:
            grads = self._grads(self.params, batches, self.weights)
            keep = [_curved(g) for g in grads]
        else:
            keep = curvature_mask(model, loss_fn, self.params, batches[0])
        if active is None:  # given: the same vector space as another product's (a subsample)
            active = [p for p, k in zip(self.params, keep, strict=True) if k]
        self.active = active
        if not self.active:
            raise NoCurvature("the loss has no curvature in any parameter (no second derivative)")
        if self.kept:  # per active parameter, its curved gradient or None
            curved = {id(p): g for p, g in zip(self.params, grads, strict=True) if _curved(g)}
            self.grads = [curved.get(id(p)) for p in self.active]
        self.dim = sum(p.numel() for p in self.active)
        self.dtype, self.device = self.active[0].dtype, self.active[0].device
        self.count = 0

    def subsample(self, n: int) -> _HVP:
        """Products of the mean loss over the first ``n`` samples, in the same vector space
        (the same active parameters), their graph kept (one batch)."""
        xs, ys, left = [], [], n
        for x, y in self.batches:
            if left <= 0:
                break
            xs.append(x[:left])
            ys.append(y[:left])
            left -= len(xs[-1])
        head = [(torch.cat(xs), torch.cat(ys))]
        return _HVP(self.model, head, self.loss_fn, reuse_graph=True, active=self.active,
                    params=self.params)

    def _grads(self, params: Vec, batches: list[Batch], weights: list[float]) -> list:
        loss = sum(
            w * self.loss_fn(self.model(x), y) for w, (x, y) in zip(weights, batches, strict=True)
        )
        return list(torch.autograd.grad(loss, params, create_graph=True, allow_unused=True))

    def split(self, v: torch.Tensor) -> Vec:
        out, i = [], 0
        for p in self.active:
            out.append(v[i : i + p.numel()].view_as(p).to(p.dtype))
            i += p.numel()
        return out

    def flat(self, parts: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.cat(
            [
                (torch.zeros_like(p) if h is None else h).reshape(-1).to(self.dtype)
                for p, h in zip(self.active, parts, strict=True)
            ]
        )

    def batch_product(self, batch: Batch, parts: Vec) -> Vec:
        """H_b v for one batch's mean loss; its graph is freed before this returns."""
        active = {id(p) for p in self.active}
        grads = self._grads(self.params, [batch], [1.0])
        used, stray = [], []
        for p, g in zip(self.params, grads, strict=True):
            if id(p) in active:
                used.append(g)
            elif _curved(g):
                stray.append(p)
        if stray:
            raise RuntimeError(
                f"{len(stray)} parameter(s) have curvature in this batch but not in the probe "
                "of the first one (data-dependent control flow?): use reuse_graph=True"
            )
        pairs = [(g, u) for g, u in zip(used, parts, strict=True) if _curved(g)]
        if not pairs:  # no active parameter has curvature in this batch
            return [None] * len(self.active)
        hb = torch.autograd.grad(
            [g for g, _ in pairs], self.active, [u for _, u in pairs], allow_unused=True
        )  # retain_graph=False: the batch's saved tensors go here
        return list(hb)

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector v of length ``dim``."""
        parts = self.split(v)
        self.count += 1
        if self.grads is not None:
            pairs = [(g, u) for g, u in zip(self.grads, parts, strict=True) if g is not None]
            if not pairs:  # a subsample with no curvature in any active parameter
                return torch.zeros_like(v)
            hb = torch.autograd.grad(
                [g for g, _ in pairs],
                self.active,
                [u for _, u in pairs],
                retain_graph=True,
                allow_unused=True,
            )
            return self.flat(hb)
        hv = torch.zeros_like(v)
        for w, batch in zip(self.weights, self.batches, strict=True):
            hv.add_(self.flat(self.batch_product(batch, parts)), alpha=w)
        return hv


def _curved(g: torch.Tensor | None) -> bool:
    """Whether a gradient computed with create_graph depends on the parameters."""
    return g is not None and g.requires_grad


def curvature_mask(model: nn.Module, loss_fn: LossFn, params: Vec, batch: Batch) -> list[bool]:
    """Per parameter, whether the loss has curvature in it, from the first two samples."""
    x, y = batch
    loss = loss_fn(model(x[:2]), y[:2])
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    return [_curved(g) for g in grads]


# --------------------------------------------------------------------------- Lanczos


class _Basis:
    """Orthonormal Lanczos vectors as rows of a matrix that grows by doubling."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device):
        self.rows = torch.empty(8, dim, dtype=dtype, device=device)
        self.size = 0

    def append(self, q: torch.Tensor) -> None:
        if self.size == len(self.rows):
            self.rows = torch.cat([self.rows, torch.empty_like(self.rows)])
        self.rows[self.size] = q
        self.size += 1

    def orthogonalise(self, w: torch.Tensor) -> torch.Tensor:
        """Remove the span of the basis from w, twice (classical Gram-Schmidt, CGS2)."""
        q = self.rows[: self.size]
        for _ in range(2):
            w = w - q.T @ (q @ w)
        return w


def _random_unit(hvp: _HVP, gen: torch.Generator, basis: _Basis | None = None) -> torch.Tensor:
    v = torch.randn(hvp.dim, generator=gen, dtype=torch.float64).to(hvp.device, hvp.dtype)
    if basis is not None:
        v = basis.orthogonalise(v)
    return v / v.norm()


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    """The Lanczos matrix T (k, k), float64: alphas on the diagonal, betas beside it."""
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _ritz(alphas: list[float], betas: list[float], beta: float, top_n: int):
    """Top Ritz values of the tridiagonal T (descending) and their relative residuals."""
    theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
    idx = torch.argsort(theta, descending=True)[:top_n]
    scale = theta.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    res = (beta * s[-1, idx]).abs() / theta[idx].abs().clamp_min(1e-12 * scale)
    return theta[idx].tolist(), res.tolist()


@dataclass
class _Krylov:
    """A finished Lanczos run: its top Ritz values, residuals, history, and what it takes to
    rebuild the Ritz vectors (the basis and T)."""

    theta: list[float]
    res: list[float]
    history: list[float]
    res_history: list[float]
    basis: _Basis
    alphas: list[float]
    betas: list[float]  # T's off-diagonal: len(alphas) - 1 values

    def ritz_vectors(self, top_n: int) -> torch.Tensor:
        """(dim, top_n): the unit Ritz vectors of the top_n Ritz values, descending."""
        theta, s = torch.linalg.eigh(_tridiagonal(self.alphas, self.betas))
        idx = torch.argsort(theta, descending=True)[:top_n]
        q = self.basis.rows[: self.basis.size]  # (k, dim)
        return q.T @ s[:, idx].to(q.dtype)


def _lanczos(
    hvp: _HVP,
    top_n: int,
    max_iter: int,
    tol: float,
    gen: torch.Generator,
    on_hvp,
    start: torch.Tensor | None = None,
) -> _Krylov:
    """Lanczos from ``start`` (a random unit vector drawn from ``gen`` if None)."""
    steps = min(max_iter, hvp.dim)
    basis = _Basis(hvp.dim, hvp.dtype, hvp.device)
    q = _random_unit(hvp, gen) if start is None else start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    theta, res, history, res_history = [], [float("inf")], [], []
    for k in range(steps):
        basis.append(q)
        w = hvp(q)
        if on_hvp is not None:
            on_hvp(hvp.count)
        alphas.append(float(w @ q))
        w = basis.orthogonalise(w)  # full re-orthogonalisation (covers alpha and beta terms)
        beta = float(w.norm())
        theta, res = _ritz(alphas, betas, beta, top_n)
        history.append(theta[0])
        res_history.append(max(res) if k + 1 >= top_n else float("inf"))
        if (k + 1 >= top_n and max(res) < tol) or k + 1 == steps:
            break
        if beta <= 1e-10 * max(abs(a) for a in alphas):  # invariant subspace: restart
            q, beta = _random_unit(hvp, gen, basis), 0.0
        else:
            q = w / beta
        betas.append(beta)
    return _Krylov(theta, res, history, res_history, basis, alphas, betas)


# The start vector: the top Ritz vector(s) of a few Lanczos steps on the Hessian of the first
# samples (at most WARM_SAMPLES, at most 1 / WARM_FRACTION of the data; none below
# WARM_MIN_SAMPLES). On M1 and StdCNN (benchmarks/hessian.py, 1000 images, seeds 0-4) it cut
# the full products to 1e-4 from 7-11 (random start) to 5-6, for 5-8 products on 125 images
# (about one full product's time).
WARM_SAMPLES = 128
WARM_FRACTION = 8
WARM_MIN_SAMPLES = 16
WARM_STEPS = 8  # subsample products for the top eigenvalue; 2 more per further eigenvalue
WARM_TOL = 1e-2  # the subsample's residual at which its run stops early
# A random part of this norm is added to the (unit) start vector: were the subsample's top
# Ritz vectors orthogonal to the full Hessian's top eigenvector (e.g. a block of parameters
# without curvature in the subsample and none coupling it to the rest), the Krylov space
# would never reach it. Its cost is small: it adds WARM_NOISE^2 to tan^2 of the start
# vector's angle to the top eigenvector.
WARM_NOISE = 0.1


def _warm_start(hvp: _HVP, top_n: int, gen: torch.Generator) -> tuple[torch.Tensor | None, int]:
    """(start vector or None, subsample products made)."""
    n = min(WARM_SAMPLES, hvp.num_samples // WARM_FRACTION)
    if n < WARM_MIN_SAMPLES:
        return None, 0
    sub = hvp.subsample(n)
    run = _lanczos(sub, top_n, WARM_STEPS + 2 * (top_n - 1), WARM_TOL, gen, None)
    start = run.ritz_vectors(top_n).sum(dim=1)  # a component along each of the top_n
    start = start / start.norm() + WARM_NOISE * _random_unit(hvp, gen)
    return start, sub.count  # sub (its graph) is freed on return


# --------------------------------------------------------------------------- PyHessian


@contextlib.contextmanager
def _frozen(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """requires_grad=False on ``params`` for the duration."""
    flags = [(p, p.requires_grad) for p in params]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@functools.cache
def _counted_pyhessian_class() -> type:
    """A subclass of PyHessian 0.1's ``hessian`` that reports every HVP it makes.

    ``hessian.eigenvalues`` makes its products in one of two places: in dataloader mode it
    calls the method ``dataloader_hv_product``, in single-batch mode it calls the module
    function ``pyhessian.utils.hessian_vector_product`` inline and takes the Rayleigh quotient
    with ``group_product``. So that one overridable method sees every product (no patching
    of the pyhessian module, which other code may be using), an instance always takes the
    dataloader branch (``full_dataset = True`` once constructed) and, in single-batch mode,
    its ``dataloader_hv_product`` runs exactly the inline branch's two calls: the same
    products, eigenvalues and counts as plain PyHessian.
    """
    from pyhessian import hessian as PyHessian  # the class; the package re-exports it
    from pyhessian.utils import group_product, hessian_vector_product

    class CountedPyHessian(PyHessian):
        def __init__(self, *args, on_product: Callable[[float], None], **kwargs):
            super().__init__(*args, **kwargs)
            self._single_batch, self.full_dataset = not self.full_dataset, True
            self._on_product = on_product

        def dataloader_hv_product(self, v):
            if self._single_batch:  # = the single-batch branch of hessian.eigenvalues
                hv = hessian_vector_product(self.gradsH, self.params, v)
                value = group_product(hv, v).cpu().item()
            else:
                value, hv = super().dataloader_hv_product(v)
            self._on_product(value)
            return value, hv

    return CountedPyHessian


def pyhessian_relative_change(prev: float, new: float) -> float:
    """PyHessian 0.1's convergence measure between successive power-iteration estimates:
    ``hessian.eigenvalues`` stops once it is below tol (and returns ``prev``)."""
    return abs(prev - new) / (abs(prev) + 1e-6)


def _pyhessian_changes(record: list[float], top_n: int, max_iter: int, tol: float) -> list:
    """Per eigenvalue, the last relative change PyHessian computed (its residual).

    PyHessian returns no convergence information, only the eigenvalues. ``record`` is the
    Rayleigh quotient of every product, in order, for all ``top_n`` eigenvalues; this
    splits it per eigenvalue by replaying the stopping rule of PyHessian 0.1's
    ``hessian.eigenvalues`` (pyhessian/hessian.py): at most ``maxIter`` products per
    eigenvalue, stop after the product whose ``pyhessian_relative_change`` from the
    previous estimate is below ``tol``. If a pyhessian version stops
    differently, the replay does not use up ``record`` exactly and this raises.
    """
    mismatch = RuntimeError(
        f"PyHessian's {len(record)} products do not follow its 0.1 stopping rule: "
        "robusthp.hessian._pyhessian_changes needs updating for this pyhessian version"
    )
    changes, i = [], 0
    for _ in range(top_n):
        prev, change = None, float("inf")
        for _ in range(max_iter):
            if i == len(record):
                raise mismatch
            value = record[i]
            i += 1
            if prev is not None:
                change = pyhessian_relative_change(prev, value)
                if change < tol:
                    break
            prev = value
        changes.append(change)
    if i != len(record):
        raise mismatch
    return changes


def _pyhessian(
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[Batch],
    top_n,
    max_iter,
    tol,
    seed,
    reuse_graph,
    on_hvp,
) -> tuple:
    """PyHessian's ``eigenvalues``. reuse_graph: the batches concatenated into one, PyHessian's
    single-batch mode (its graph kept across products); else its dataloader mode, which
    makes each product batch by batch, freeing each batch's graph (bounded memory). A
    single batch is always the single-batch mode (the same peak memory either way)."""
    device = batches[0][0].device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"backend 'pyhessian' runs on cpu or cuda only, the model is on {device}")
    cuda = device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True")
    mask = curvature_mask(model, loss_fn, params, batches[0])  # PyHessian needs every .grad
    if not any(mask):
        raise ValueError("the loss has no curvature in any parameter (no second derivative)")
    inactive = [p for p, curved in zip(params, mask, strict=True) if not curved]
    if reuse_graph and len(batches) > 1:  # one batch = PyHessian's graph-reusing mode
        batches = [(torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches]))]
    source = {"data": batches[0]} if len(batches) == 1 else {"dataloader": batches}
    record: list[float] = []  # the Rayleigh quotient of each product, in order

    def on_product(value: float) -> None:
        record.append(value)
        if on_hvp is not None:
            on_hvp(len(record))

    rng_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(_frozen(inactive))  # PyHessian crashes on grad-less parameters
        stack.enter_context(torch.random.fork_rng(devices=rng_devices))
        if cuda:
            stack.enter_context(torch.cuda.device(device))  # PyHessian's "cuda" = current device
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        torch.default_generator.manual_seed(seed)  # PyHessian draws randn on the CPU
        h = _counted_pyhessian_class()(
            model, loss_fn, cuda=cuda, on_product=on_product, **source
        )
        values, _ = h.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
        del h  # drops its create_graph gradients (preserved_grads resets .grad)
    return values, _pyhessian_changes(record, top_n, max_iter, tol), record


# --------------------------------------------------------------------------- public API

_BACKENDS = tuple(sorted(HESSIAN_BACKENDS))  # ("lanczos", "pyhessian")


def backends() -> tuple[str, ...]:
    """Names accepted by ``top_eigenvalues(backend=...)``."""
    return _BACKENDS


def _check(top_n: int, max_iter: int, tol: float, backend: str, batches: Sequence) -> None:
    if backend not in _BACKENDS:
        raise ValueError(f"unknown Hessian backend {backend!r}; valid: {', '.join(_BACKENDS)}")
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1:
        raise ValueError(f"top_n must be an integer >= 1, got {top_n!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    if len(batches) == 0 or sum(len(y) for _, y in batches) == 0:
        raise ValueError("no data: pass a non-empty sequence of (inputs, targets) batches")


def _on_device(batches: Sequence[Batch], device: torch.device) -> list[Batch]:
    """Normal (non-inference) copies on the model's device; call under ``gradients_on``."""
    return [(detached_copy(x.to(device)), detached_copy(y.to(device))) for x, y in batches]


@contextlib.contextmanager
def _hessian_context(model: nn.Module) -> Iterator[None]:
    """Eval mode, full precision, gradients on, caller's ``.grad`` untouched."""
    with gradients_on(), fp32(), eval_mode(model), preserved_grads(model):
        yield


def top_eigenvalues(
    model: nn.Module,
    batches: Sequence[Batch],
    top_n: int = HessianSettings.top_n,
    backend: str = HessianSettings.backend,
    max_iter: int = HessianSettings.max_iter,
    tol: float = HessianSettings.tol,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    reuse_graph: bool = False,
    on_hvp: Callable[[int], None] | None = None,
    warm_start: bool = True,
) -> HessianResult:
    """The ``top_n`` largest eigenvalues of the Hessian of the training loss.

    model: maps x -> logits (N, C); evaluated in eval mode (dropout off, BatchNorm on its
      running statistics), every submodule's mode restored afterwards.
    batches: (x, y) pairs, x of any shape the model takes, y int64 class indices (N,); moved
      to the model's device once. Inference tensors are fine (works under inference_mode).
    loss_fn: mean-reduced loss(logits, y); default cross-entropy. The loss of several batches
      is the size-weighted mean.
    backend: "pyhessian" (the default, as the callback's and the CLI's: largest magnitude;
      see module) or "lanczos" (algebraically largest, fewer HVPs).
    top_n, max_iter, tol: defaults 1, 100, 1e-3 (``HessianSettings``).
    max_iter: lanczos, HVPs at most; pyhessian, power iterations per eigenvalue.
    tol: lanczos, relative Ritz residual |beta_k s_k| / |theta|; pyhessian, relative change
      between successive estimates. seed: the random start vector (lanczos with a warm start:
      the subsample run's; never the global RNG).
    reuse_graph: False (default): bounded memory, each product made batch by batch (the
      gradient with create_graph, then the second backward, then the batch's graph freed),
      so the peak is one batch's double-backward graph: the batch size bounds the memory.
      True: the graph of all batches built once and kept across products (faster per
      product, but every batch's activations and gradient graph alive at once: several GB
      for thousands of CIFAR images on ResNet18). pyhessian: True concatenates the batches
      into one (PyHessian's graph-reusing single-batch mode, on all samples at once), False
      uses its dataloader mode (forward and backward again per batch and product). A
      single batch keeps its graph either way (the same peak memory).
    on_hvp: called with the running HVP count after each product (progress bars); the
      warm start's subsample products are not counted.
    warm_start: lanczos only. True (default): start from the top Ritz vector(s) of a few
      Lanczos steps on the Hessian of the first min(128, N // 8) samples (none when N < 128:
      a random start). The eigenvalues are the full loss's either way (the same stopping
      rule on the full Hessian); fewer full products. False: a random start.
    The caller's ``.grad``, train/eval modes and global RNG state are left as found.
    """
    _check(top_n, max_iter, tol, backend, batches)
    loss_fn = loss_fn or F.cross_entropy
    start = time.perf_counter()
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    with _hessian_context(model):
        data = _on_device(batches, params[0].device)
        if backend == "lanczos":
            hvp = _HVP(model, data, loss_fn, reuse_graph)
            gen = torch.Generator().manual_seed(seed)
            start_vec, warm_hvp = _warm_start(hvp, top_n, gen) if warm_start else (None, 0)
            run = _lanczos(hvp, top_n, max_iter, tol, gen, on_hvp, start_vec)
            values, res, history, res_history = run.theta, run.res, run.history, run.res_history
            del hvp, run  # its kept graph, if any, and the basis
        else:
            warm_hvp, res_history = 0, []
            values, res, history = _pyhessian(
                model, loss_fn, data, top_n, max_iter, tol, seed, reuse_graph, on_hvp
            )
    pairs = sorted(zip(values, res, strict=True), key=lambda t: -t[0])
    return HessianResult(
        eigenvalues=[float(v) for v, _ in pairs],
        backend=backend,
        num_hvp=len(history),
        residuals=[float(r) for _, r in pairs],
        converged=len(pairs) == top_n and all(r < tol for _, r in pairs),
        seconds=time.perf_counter() - start,
        history=[float(v) for v in history],
        warm_hvp=warm_hvp,
        residual_history=[float(r) for r in res_history],
    )



# --------------------------------------------------------------------------- beyond the top
#
# The trace, the eigenvalue density and the top eigenvalue of each module's diagonal block,
# on the same products as ``top_eigenvalues`` (same loss, data, modes and side-effect rules).
# Random vectors come from a private generator seeded with ``seed``, never the global RNG.

TRACE_MIN_ITER = 10  # vectors before the standard error is trusted enough to stop on


@dataclass
class TraceResult:
    """What ``hessian_trace`` found.

    trace: the mean of v^T H v over Rademacher vectors v; se: its standard error (sample
    standard deviation / sqrt(num_hvp)); converged: se <= tol |trace|; samples: v^T H v per
    vector, in draw order.
    """

    trace: float
    se: float
    num_hvp: int
    converged: bool
    seconds: float
    samples: list[float] = field(default_factory=list)


@dataclass
class DensityResult:
    """What ``hessian_density`` found: per start vector, the Gauss quadrature of its spectral
    measure (nodes ascending, weights summing to 1), so sum_i w_i f(node_i) estimates
    tr f(H) / dim. dim: the parameters with curvature (the Hessian's size). alphas, betas:
    per vector, the Lanczos matrix T (diagonal, off-diagonal), from which ``truncated``
    gives what fewer steps from the same start would have.
    """

    nodes: list[list[float]]
    weights: list[list[float]]
    dim: int
    num_hvp: int
    seconds: float
    alphas: list[list[float]] = field(default_factory=list)
    betas: list[list[float]] = field(default_factory=list)

    def truncated(self, steps: int) -> tuple[list[list[float]], list[list[float]]]:
        """(nodes, weights) of the first ``steps`` Lanczos steps of each vector: a run with
        iter=steps and the same seed (restarts aside), without its products."""
        out = [_quadrature(a[:steps], b[: steps - 1]) for a, b in zip(self.alphas, self.betas,
                                                                        strict=True)]
        return [n for n, _ in out], [w for _, w in out]

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable: what the callback records."""
        return {"nodes": self.nodes, "weights": self.weights, "dim": self.dim}


@dataclass
class LayerResult:
    """What ``layer_top_eigenvalues`` found, per block (module qualified name): the top
    eigenvalue, its parameter count and whether Lanczos reached tol. Blocks without
    curvature are left out. num_hvp: full-data block products, all blocks together."""

    top_eig: dict[str, float]
    num_params: dict[str, int]
    converged: dict[str, bool]
    num_hvp: int
    seconds: float


def _rademacher(dim: int, gen: torch.Generator) -> torch.Tensor:
    """Entries +-1 (float64, CPU): the lowest-variance i.i.d. choice for Hutchinson's
    estimator, and PyHessian's for both trace() and density()."""
    return torch.randint(0, 2, (dim,), generator=gen, dtype=torch.float64).mul_(2).sub_(1)


def _check_count(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_data(batches: Sequence) -> None:
    if len(batches) == 0 or sum(len(y) for _, y in batches) == 0:
        raise ValueError("no data: pass a non-empty sequence of (inputs, targets) batches")


@contextlib.contextmanager
def _prepared(model: nn.Module, batches: Sequence[Batch]) -> Iterator[list[Batch]]:
    """The batches on the model's device, inside ``_hessian_context``."""
    params = list(model.parameters())
    if not params:
        raise ValueError("the model has no parameters")
    with _hessian_context(model):
        yield _on_device(batches, params[0].device)


def _mean_se(samples: list[float]) -> tuple[float, float]:
    x = torch.tensor(samples, dtype=torch.float64)
    se = float(x.std() / len(samples) ** 0.5) if len(samples) > 1 else float("inf")
    return float(x.mean()), se


def hessian_trace(
    model: nn.Module,
    batches: Sequence[Batch],
    tol: float = HessianSettings.trace_tol,
    max_iter: int = HessianSettings.trace_max_iter,
    min_iter: int = TRACE_MIN_ITER,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    reuse_graph: bool = False,
    on_hvp: Callable[[int], None] | None = None,
) -> TraceResult:
    """tr H by Hutchinson's estimator: the mean of v^T H v over Rademacher vectors v.

    Stops once the standard error is at most ``tol`` times |mean| (after ``min_iter``
    vectors: the sample standard deviation of a few is too rough to stop on), or after
    ``max_iter`` vectors. Unlike PyHessian's ``trace()``, which stops when the running mean
    changes by less than tol between two vectors (often after 2-3 of them), the rule bounds
    the estimate's error. Vector k is the k-th ``_rademacher`` draw of a generator seeded with
    ``seed``. Arguments otherwise as ``top_eigenvalues``.
    """
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and 0 < tol < math.inf):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    _check_count(min_iter, "min_iter", 2)
    _check_count(max_iter, "max_iter", min_iter)
    _check_data(batches)
    start = time.perf_counter()
    samples: list[float] = []
    with _prepared(model, batches) as data:
        hvp = _HVP(model, data, loss_fn or F.cross_entropy, reuse_graph)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(max_iter):
            v = _rademacher(hvp.dim, gen).to(hvp.device, hvp.dtype)
            samples.append(float(v @ hvp(v)))
            if on_hvp is not None:
                on_hvp(hvp.count)
            mean, se = _mean_se(samples)
            if len(samples) >= min_iter and se <= tol * abs(mean):
                break
        del hvp
    mean, se = _mean_se(samples)
    return TraceResult(trace=mean, se=se, num_hvp=len(samples), converged=se <= tol * abs(mean),
                       seconds=time.perf_counter() - start, samples=samples)


def _quadrature(alphas: list[float], betas: list[float]) -> tuple[list[float], list[float]]:
    """Gauss quadrature of a Lanczos run: the Ritz values and the squared first components
    of T's eigenvectors (Golub and Welsch)."""
    theta, s = torch.linalg.eigh(_tridiagonal(alphas, betas))
    return theta.tolist(), s[0].square().tolist()


def hessian_density(
    model: nn.Module,
    batches: Sequence[Batch],
    n_v: int = HessianSettings.density_vectors,
    iter: int = HessianSettings.density_iter,  # noqa: A002 (PyHessian's density() name)
    seed: int = 0,
    loss_fn: LossFn | None = None,
    reuse_graph: bool = False,
    on_hvp: Callable[[int], None] | None = None,
) -> DensityResult:
    """The eigenvalue density of H by stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao,
    arXiv 1901.10159), as PyHessian's ``hessian.density(iter, n_v)``.

    Per start vector (a normalised Rademacher vector, the k-th ``_rademacher`` draw of a
    generator seeded with ``seed``), ``iter`` Lanczos steps (at most dim), fully
    re-orthogonalised as PyHessian's; the nodes and weights of the quadrature are T's
    eigenvalues and the squared first components of its eigenvectors. With iter >= dim the
    nodes are H's eigenvalues. A run that exhausts its Krylov space goes on from a random
    vector orthogonal to it (as PyHessian), drawn from a second private generator, so the
    start vectors do not depend on such restarts. ``smoothed_density`` turns the result into
    a density on a grid. n_v * iter products in all.
    """
    _check_count(n_v, "n_v", 1)
    _check_count(iter, "iter", 1)
    _check_data(batches)
    start = time.perf_counter()
    nodes, weights, alphas, betas = [], [], [], []
    with _prepared(model, batches) as data:
        hvp = _HVP(model, data, loss_fn or F.cross_entropy, reuse_graph)
        starts = torch.Generator().manual_seed(seed)
        restarts = torch.Generator().manual_seed(seed + 1)
        for _ in range(n_v):
            v = _rademacher(hvp.dim, starts).to(hvp.device, hvp.dtype)
            run = _lanczos(hvp, 1, iter, 0.0, restarts, on_hvp, v)  # tol 0: all iter steps
            node, weight = _quadrature(run.alphas, run.betas)
            nodes.append(node)
            weights.append(weight)
            alphas.append(run.alphas)
            betas.append(run.betas)
        dim, num_hvp = hvp.dim, hvp.count
        del hvp, run
    return DensityResult(nodes=nodes, weights=weights, dim=dim, num_hvp=num_hvp,
                         seconds=time.perf_counter() - start, alphas=alphas, betas=betas)


ROOT_BLOCK = "(model)"  # the block of parameters the model itself owns


def parameter_blocks(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Per module owning parameters directly (``recurse=False``), by qualified name
    (``ROOT_BLOCK`` for the model itself), its parameters with requires_grad: a Linear's
    or Conv's weight and bias, a BatchNorm's scale and shift. A shared parameter is in its
    first owner's block only."""
    blocks: dict[str, list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            blocks[name or ROOT_BLOCK] = own
    return blocks


def layer_top_eigenvalues(
    model: nn.Module,
    batches: Sequence[Batch],
    max_iter: int = HessianSettings.max_iter,
    tol: float = HessianSettings.tol,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    reuse_graph: bool = False,
    on_hvp: Callable[[int], None] | None = None,
    warm_start: bool = True,
) -> LayerResult:
    """Per block of ``parameter_blocks``, the top (algebraically largest) eigenvalue of the
    Hessian restricted to it (its diagonal block H_BB: the curvature along that module's
    parameters with the others held fixed), by Lanczos on the block's products, as
    ``top_eigenvalues(backend="lanczos")`` (warm start, stopping rule, tol, max_iter).
    on_hvp: the running count of full-data block products over all blocks.
    """
    _check(1, max_iter, tol, "lanczos", batches)
    loss_fn = loss_fn or F.cross_entropy
    start = time.perf_counter()
    out = LayerResult({}, {}, {}, 0, 0.0)
    with _prepared(model, batches) as data:
        for name, params in parameter_blocks(model).items():
            try:
                hvp = _HVP(model, data, loss_fn, reuse_graph, params=params)
            except NoCurvature:
                continue  # e.g. a module the loss does not use
            done = out.num_hvp
            count = None if on_hvp is None else (lambda n, done=done: on_hvp(done + n))
            gen = torch.Generator().manual_seed(seed)
            start_vec, _ = _warm_start(hvp, 1, gen) if warm_start else (None, 0)
            run = _lanczos(hvp, 1, max_iter, tol, gen, count, start_vec)
            out.top_eig[name] = float(run.theta[0])
            out.num_params[name] = hvp.dim
            out.converged[name] = run.res[0] < tol
            out.num_hvp += hvp.count
            del hvp, run  # this block's kept graph, if any, before the next one's
    out.seconds = time.perf_counter() - start
    return out
