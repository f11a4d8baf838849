"""Measures of the trained function itself (Ma, Pan, Farahmand 2023, arXiv 2308.06703).

The study finds that SGD-trained models, more robust than Adam/RMSProp-trained ones of the
same clean accuracy, have smaller Lipschitz constants and weight norms. This module
measures, for a model mapping [0, 1] pixels (N, C, H, W) to logits (N, K):

- ``lipschitz_upper_bound``: an upper bound of the global L2 Lipschitz constant, the
  product of the layers' true operator norms along the forward path (residual blocks:
  L(branch) + L(shortcut)); each conv's norm by power iteration at its real input shape;
- ``lipschitz_ma2023``: the authors' number, a product of reshaped-kernel norms (each a
  LOWER bound of its conv's operator norm, so the product is neither bound);
- ``input_gradient_norms``: the local, empirical counterpart, ``||grad_x f_y(x)||_2``;
- ``weight_norm``: the L2 norm of all parameters.

How the forward path is found: one forward pass of a probe input (uniform [0, 1] pixels
from a private generator seeded ``seed``) with hooks on every module records the tree of
module calls, each with a copy of its input and output. A module of a known layer type
(``_leaf_norm``) is a leaf; a ``robusthp.models.resnet.BasicBlock`` or a
``robusthp.models.preact_resnet.PreActBlock`` is a residual block;
any other module that calls submodules is a chain, and its recorded tensors are checked:
each call's input must equal the previous call's output (or the chain's own input) up to
ReLU, flatten or a global average pool, and the chain's output the last call's output the
same way. robusthp's M1, StdCNN, C1, ResNet and PreActResNet (their ``forward`` is explicit code, not
``nn.Sequential``; M1/StdCNN/C1 reuse one pool module) are such chains; anything the
checks cannot follow, and any layer type without a rule, raises ``ValueError`` naming
it, rather than returning a wrong bound.

Per layer type (every rule an upper bound of that layer's L2 Lipschitz constant):

- ``Conv2d``: its operator norm at its input shape, by power iteration on ``A^T A`` with
  ``F.conv2d`` (no bias: a shift changes no difference) and ``F.conv_transpose2d`` as the
  adjoint. Power iteration approaches the top singular value from below; ``converged``
  says whether every layer met ``tol``;
- ``Linear``: the top singular value of its weight, exact (``torch.linalg.svdvals``);
- ``Normalize`` (x - mean) / std: max 1/std; ``BatchNorm`` in eval mode, a per-channel
  affine map: max |gamma| / sqrt(running_var + eps);
- ``MaxPool2d``: sqrt(m), m the largest number of pooling windows any input pixel lies
  in: |max_W a - max_W b| <= max_{i in W} |a_i - b_i| <= ||(a - b)_W||_2, and summing the
  squares over windows counts each pixel at most m times. A single pixel raised in all its
  m windows attains it, so sqrt(m) is exact. Non-overlapping pools (kernel <= stride, as
  M1's and StdCNN's 2x2/2) have m = 1; C1's 3x3/2 pools have m = 2 x 2 = 4, so 2 each;
- ``AvgPool2d`` / ``AdaptiveAvgPool2d`` (linear): operator norm by power iteration; a
  global average pool between layers (ResNet's functional one): 1/sqrt(H W) exactly (the
  mean of n entries is a row of n entries 1/n, and the rows act on disjoint entries);
- ReLU, LeakyReLU (slope <= 1), Tanh, Identity, Flatten, Dropout (eval: identity): 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robusthp.attacks import PIXEL_TOL
from robusthp.models.normalize import Normalize
from robusthp.models.preact_resnet import PreActBlock
from robusthp.models.resnet import BasicBlock
from robusthp.side_effects import detached_copy, eval_mode, fp32, gradients_on

log = logging.getLogger(__name__)

DEFAULT_ITERS = 100  # power iterations per layer (robusthp.settings.FunctionSettings')
DEFAULT_TOL = 1e-4  # relative change of the estimate that stops the iteration
_MATCH_RTOL = 1e-4  # recorded tensors compared up to float rounding (a mean, a sum)

# 1-Lipschitz layers that are no factor worth listing in ``layers``
_ONE_LIPSCHITZ = (nn.ReLU, nn.Identity, nn.Flatten, nn.Tanh, nn.modules.dropout._DropoutNd)


# ---------------------------------------------------------------- operator norms


def operator_norm(
    layer: nn.Module,
    input_shape: tuple[int, ...],
    iters: int = DEFAULT_ITERS,
    tol: float = DEFAULT_TOL,
    generator: torch.Generator | None = None,
) -> float:
    """The L2 operator norm (top singular value) of a linear layer, bias left out.

    ``nn.Conv2d``: the conv as a map of inputs of shape ``input_shape`` = (C, H, W), by
    power iteration (``iters`` at most, stopping at a relative change <= ``tol``) from a
    random start drawn from ``generator`` (default: a private CPU generator seeded 0;
    never the global RNG); any stride, padding, dilation and groups, ``padding_mode``
    "zeros". The estimate is a lower estimate that converges to the norm from below.
    ``nn.Linear``: the top singular value of its weight, exactly (``input_shape`` may be
    anything whose last entry is ``in_features``). Returns a float >= 0.
    """
    norm, _ = _operator_norm(layer, tuple(input_shape), iters, tol, generator)
    return norm


def _operator_norm(
    layer: nn.Module, shape: tuple[int, ...], iters: int, tol: float, generator: torch.Generator | None
) -> tuple[float, bool]:
    """``(norm, converged)`` of ``operator_norm``."""
    if isinstance(layer, nn.Linear):
        if not shape or shape[-1] != layer.in_features:
            raise ValueError(f"Linear with in_features={layer.in_features} cannot act on inputs of shape {shape}")
        with torch.no_grad():
            return float(torch.linalg.svdvals(layer.weight.detach())[0]), True
    if not isinstance(layer, nn.Conv2d):
        raise ValueError(f"operator_norm handles nn.Conv2d and nn.Linear; got {type(layer).__name__}")
    forward, adjoint = _conv_maps(layer, shape)
    return _power_iteration(forward, adjoint, _start(shape, layer.weight, generator), iters, tol)


def _conv_maps(conv: nn.Conv2d, shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    """The conv without bias on (1, C, H, W) inputs, and its adjoint (same shapes)."""
    if len(shape) != 3 or shape[0] != conv.in_channels:
        raise ValueError(f"Conv2d with in_channels={conv.in_channels} needs input_shape (C, H, W) "
                         f"with C={conv.in_channels}; got {shape}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"Conv2d with padding_mode={conv.padding_mode!r}: only 'zeros' is supported")
    weight = conv.weight.detach()
    args = dict(stride=conv.stride, dilation=conv.dilation, groups=conv.groups)

    def forward(x: Tensor) -> Tensor:
        return F.conv2d(x, weight, None, padding=conv.padding, **args)  # (1, C_out, H', W')

    if isinstance(conv.padding, str):  # "same"/"valid": the adjoint by autograd
        return forward, _autograd_adjoint(forward, shape, weight)
    out_hw = [_conv_out(n, k, s, p, d) for n, k, s, p, d in
              zip(shape[1:], conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True)]
    # conv_transpose2d's output side is (out - 1) s - 2p + d (k - 1) + 1 + output_padding; a
    # strided conv that drops the input's last rows/columns needs them back as output_padding
    output_padding = tuple(n - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for n, o, k, s, p, d in zip(
        shape[1:], out_hw, conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True))

    def adjoint(y: Tensor) -> Tensor:
        return F.conv_transpose2d(y, weight, None, padding=conv.padding,
                                  output_padding=output_padding, **args)  # (1, C, H, W)

    return forward, adjoint


def _conv_out(n: int, k: int, s: int, p: int, d: int) -> int:
    out = (n + 2 * p - d * (k - 1) - 1) // s + 1
    if out < 1:
        raise ValueError(f"a conv with kernel {k}, padding {p}, dilation {d} cannot act on a side of {n}")
    return out


def _autograd_adjoint(forward: Callable, shape: tuple[int, ...], like: Tensor) -> Callable:
    """The adjoint of a linear ``forward`` on (1, *shape) inputs: its vector-Jacobian product."""

    def adjoint(y: Tensor) -> Tensor:
        with gradients_on():
            x = torch.zeros((1, *shape), dtype=like.dtype, device=like.device, requires_grad=True)
            (grad,) = torch.autograd.grad(forward(x), x, y)
        return grad

    return adjoint


def _start(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = torch.randn((1, *shape), generator=gen, dtype=like.dtype, device=gen.device)
    return x.to(like.device)


def _power_iteration(
    forward: Callable, adjoint: Callable, x: Tensor, iters: int, tol: float
) -> tuple[float, bool]:
    """Top singular value of A by power iteration on A^T A; ``(estimate, converged)``.

    For unit x, sqrt(||A^T A x||) >= ||A x|| and <= sigma_max: the estimate never exceeds
    the norm and rises to it."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1; got {iters!r}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol!r}")
    with torch.no_grad():
        x = x / x.norm()
        sigma_prev = 0.0
        for _ in range(iters):
            z = adjoint(forward(x))  # A^T A x
            z_norm = float(z.norm())
            if z_norm == 0.0:  # A = 0 (or x in its null space, which a random start is not)
                return 0.0, True
            sigma = math.sqrt(z_norm)
            x = z / z_norm
            if abs(sigma - sigma_prev) <= tol * sigma:
                return sigma, True
            sigma_prev = sigma
    return sigma, False


def _max_pool_multiplicity(pool: nn.MaxPool2d, shape: tuple[int, ...]) -> int:
    """The largest number of windows one input pixel of a (C, H, W) input lies in."""
    probe = torch.zeros(1, 1, *shape[-2:])
    out_hw = F.max_pool2d(probe, pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                          ceil_mode=pool.ceil_mode).shape[-2:]
    m = 1
    for axis, (n, o) in enumerate(zip(shape[-2:], out_hw, strict=True)):
        k, s, p, d = (_pair(v)[axis] for v in (pool.kernel_size, pool.stride, pool.padding, pool.dilation))
        counts = [0] * n
        for j in range(o):
            for t in range(k):
                i = j * s - p + t * d
                if 0 <= i < n:
                    counts[i] += 1
        m *= max(counts)
    return m


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _batch_norm_bound(bn: nn.modules.batchnorm._BatchNorm) -> float:
    if bn.running_var is None:
        raise ValueError(f"{type(bn).__name__} without running statistics normalizes by the batch "
                         "even in eval mode: no fixed function to bound")
    scale = (bn.running_var.detach() + bn.eps).rsqrt()  # (C,)
    if bn.weight is not None:
        scale = bn.weight.detach().abs() * scale
    return float(scale.max())


# ---------------------------------------------------------------- the forward path


@dataclass
class _Call:
    """One recorded module call: copies of its input and output, and the calls inside it."""

    module: nn.Module
    name: str
    x: Tensor | None
    out: Tensor | None = None
    children: list[_Call] = field(default_factory=list)


@dataclass
class _Bound:
    """What a bound collects on the way: the settings and the per-layer norms."""

    iters: int
    tol: float
    generator: torch.Generator
    layers: list[tuple[str, float]] = field(default_factory=list)
    factors: list[tuple[str, float]] = field(default_factory=list)
    not_converged: list[str] = field(default_factory=list)
    in_residual: int = 0  # > 0: inside a residual block, whose total is the factor

    def factor(self, name: str, value: float) -> None:
        if not self.in_residual:
            self.factors.append((name, value))


def lipschitz_upper_bound(
    model: nn.Module,
    input_shape: tuple[int, ...],
    iters: int = DEFAULT_ITERS,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
) -> dict[str, Any]:
    """An upper bound of the L2 Lipschitz constant of ``model`` (eval mode), pixels -> logits.

    ``input_shape``: one sample's shape, (C, H, W). The bound is the product of the layers'
    bounds along the forward path; a residual block contributes L(branch) + L(shortcut).
    See the module docstring for each layer type's rule and how the path is found; a layer
    type or an operation between layers that has no rule raises ``ValueError``.
    ``iters``/``tol``: each power iteration's budget; ``seed``: the private generator of the
    probe input and the power iterations' starts. The model's modes are restored, its
    ``.grad`` and the global RNG untouched.

    Returns ``{"upper": float, "layers": [(name, norm), ...], "factors": [(name, factor),
    ...], "converged": bool}``: ``layers`` holds every layer's own norm in call order
    (convs, linears, normalizations, pools, inside residual blocks too; not the
    1-Lipschitz activations); ``factors`` the top-level factors, whose product is
    ``upper`` (a residual block is one factor, named after the block).
    """
    params = next(model.parameters(), None)
    like = params.detach() if params is not None else torch.zeros(())
    ctx = _Bound(iters, tol, torch.Generator().manual_seed(int(seed)))
    with eval_mode(model), gradients_on(), fp32(), torch.no_grad():
        probe = torch.rand((1, *input_shape), generator=ctx.generator, dtype=like.dtype)
        root = _record_calls(model, probe.to(like.device))
        upper = _bound(root, ctx)
    if ctx.not_converged:
        log.warning("lipschitz_upper_bound: power iteration did not reach tol=%g in %d iterations "
                    "for %s (the bound is then a little low)", tol, iters, ", ".join(ctx.not_converged))
    return {"upper": upper, "layers": ctx.layers, "factors": ctx.factors,
            "converged": not ctx.not_converged}


def _record_calls(model: nn.Module, probe: Tensor) -> _Call:
    """The tree of module calls of ``model(probe)``, each with copies of its input and output."""
    names = {m: name or type(model).__name__ for name, m in model.named_modules()}
    roots: list[_Call] = []
    stack: list[_Call] = []

    def before(module: nn.Module, args: tuple) -> None:
        x = args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None
        node = _Call(module, names[module], None if x is None else x.detach().clone())
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def after(module: nn.Module, args: tuple, out: Any) -> None:
        node = stack.pop()
        node.out = out.detach().clone() if isinstance(out, Tensor) else None  # before in-place ReLUs

    handles = []
    try:
        for module in names:
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        model(probe)
    finally:
        for handle in handles:
            handle.remove()
    assert len(roots) == 1 and roots[0].module is model, "the model's own call is the root"
    return roots[0]


def _bound(node: _Call, ctx: _Bound) -> float:
    """The Lipschitz bound of one recorded call."""
    norm = _leaf_norm(node, ctx)
    if norm is not None:
        return norm
    if isinstance(node.module, BasicBlock):
        return _residual_bound(node, ctx)
    if isinstance(node.module, PreActBlock):
        return _preact_bound(node, ctx)
    if not node.children:
        raise ValueError(f"lipschitz_upper_bound: no Lipschitz bound known for layer type "
                         f"{type(node.module).__name__} ({node.name!r})")
    return _chain_bound(node, ctx)


def _leaf_norm(node: _Call, ctx: _Bound) -> float | None:
    """A known layer type's bound (see the module docstring), or None for other types."""
    module, shape = node.module, tuple(node.x.shape[1:]) if node.x is not None else ()
    if isinstance(module, _ONE_LIPSCHITZ):
        return 1.0
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        norm, converged = _operator_norm(module, shape, ctx.iters, ctx.tol, ctx.generator)
        if not converged:
            ctx.not_converged.append(node.name)
    elif isinstance(module, Normalize):
        norm = float((1.0 / module.std).max())
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        norm = _batch_norm_bound(module)
    elif isinstance(module, nn.MaxPool2d):
        norm = math.sqrt(_max_pool_multiplicity(module, shape))
    elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        adjoint = _autograd_adjoint(module, shape, node.x)
        norm, _ = _power_iteration(module, adjoint, _start(shape, node.x, ctx.generator),
                                   ctx.iters, ctx.tol)
    else:
        return None
    ctx.layers.append((node.name, norm))
    ctx.factor(node.name, norm)
    return norm


def _chain_bound(node: _Call, ctx: _Bound) -> float:
    """A module whose forward calls its submodules one after another: the product."""
    total, prev, prev_name = 1.0, node.x, f"the input of {node.name}"
    for child in node.children:
        total *= _between(prev, child.x, f"between {prev_name} and {child.name}", child.name, ctx)
        total *= _bound(child, ctx)
        prev, prev_name = child.out, child.name
    return total * _between(prev, node.out, f"between {prev_name} and the output of {node.name}",
                            node.name, ctx)


def _between(a: Tensor | None, b: Tensor | None, where: str, name: str, ctx: _Bound) -> float:
    """The bound of what the forward did between two recorded tensors: a -> b must be the
    identity, ReLU, flatten or a global average pool (1/sqrt(H W)); else ValueError."""
    if a is not None and b is not None:
        candidates = [(a, 1.0), (F.relu(a), 1.0)]
        if a.ndim == 4:
            gap = 1.0 / math.sqrt(a.shape[2] * a.shape[3])
            candidates += [(a.mean((2, 3)), gap), (F.relu(a).mean((2, 3)), gap), (F.relu(a.mean((2, 3))), gap)]
        for value, factor in candidates:
            if _same(value, b):
                if factor != 1.0:
                    ctx.layers.append((f"{name} (global average pool before it)", factor))
                    ctx.factor(f"{name} (global average pool before it)", factor)
                return factor
    raise ValueError(
        f"lipschitz_upper_bound cannot follow the forward path {where}: the forward does "
        "something there other than ReLU, flatten or a global average pool (a functional "
        "operation, several inputs or a skip connection); give it a module with a known bound"
    )


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal tensors up to float rounding, ``a`` flattened to ``b``'s shape if needed."""
    if a.shape[0] != b.shape[0] or a.numel() != b.numel():
        return False
    atol = _MATCH_RTOL * float(b.abs().max()) if b.numel() else 0.0
    return torch.allclose(a.reshape(b.shape), b, rtol=_MATCH_RTOL, atol=atol)


def _residual_bound(node: _Call, ctx: _Bound) -> float:
    """robusthp's BasicBlock, relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)):
    L(branch) + L(shortcut), the final ReLU 1; the recorded calls are checked against it."""
    block = node.module
    expected = [block.conv1, block.bn1, block.conv2, block.bn2, block.shortcut]
    if [c.module for c in node.children] != expected:
        raise ValueError(f"lipschitz_upper_bound: the BasicBlock {node.name!r} did not call "
                         "conv1, bn1, conv2, bn2, shortcut in that order")
    conv1, bn1, conv2, bn2, shortcut = node.children
    links = [(node.x, conv1.x), (conv1.out, bn1.x), (F.relu(bn1.out), conv2.x), (conv2.out, bn2.x),
             (node.x, shortcut.x), (F.relu(bn2.out + shortcut.out), node.out)]
    if not all(a is not None and b is not None and _same(a, b) for a, b in links):
        raise ValueError(f"lipschitz_upper_bound: the BasicBlock {node.name!r} does not compute "
                         "relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))")
    ctx.in_residual += 1
    try:
        branch = math.prod(_bound(c, ctx) for c in (conv1, bn1, conv2, bn2))
        total = branch + _bound(shortcut, ctx)
    finally:
        ctx.in_residual -= 1
    ctx.factor(node.name, total)
    return total


def _preact_bound(node: _Call, ctx: _Bound) -> float:
    """robusthp's PreActBlock, u = relu(bn1(x)) (bn1 optional), conv2(relu(bn2(conv1(u)))) +
    shortcut(u), or + x itself where the shortcut is the identity: L(bn1) (L(branch) +
    L(shortcut)), or L(bn1) L(branch) + 1; the recorded calls are checked against it."""
    block = node.module
    expected = [m for m in (block.bn1, block.shortcut, block.conv1, block.bn2, block.conv2) if m is not None]
    if [c.module for c in node.children] != expected:
        raise ValueError(f"lipschitz_upper_bound: the PreActBlock {node.name!r} did not call "
                         "bn1, shortcut, conv1, bn2, conv2 (those it has) in that order")
    calls = {c.module: c for c in node.children}
    bn1, sc, conv1, bn2, conv2 = (calls.get(m) for m in (block.bn1, block.shortcut, block.conv1,
                                                         block.bn2, block.conv2))
    if not _preact_links_hold(node, bn1, sc, conv1, bn2, conv2):
        raise ValueError(f"lipschitz_upper_bound: the PreActBlock {node.name!r} does not compute "
                         "conv2(relu(bn2(conv1(u)))) + shortcut(u) with u = relu(bn1(x))")
    ctx.in_residual += 1
    try:
        pre = _bound(bn1, ctx) if bn1 is not None else 1.0
        branch = math.prod(_bound(c, ctx) for c in (conv1, bn2, conv2) if c is not None)
        total = pre * (branch + _bound(sc, ctx)) if sc is not None else pre * branch + 1.0
    finally:
        ctx.in_residual -= 1
    ctx.factor(node.name, total)
    return total


def _preact_links_hold(node: _Call, bn1: _Call | None, sc: _Call | None, conv1: _Call,
                       bn2: _Call | None, conv2: _Call) -> bool:
    """Whether the recorded tensors chain as the PreActBlock's forward says."""
    links = [(node.x, bn1.x)] if bn1 is not None else []
    u = F.relu(bn1.out if bn1 is not None else node.x)
    links += [(u, conv1.x)] + ([(u, sc.x)] if sc is not None else [])
    mid = conv1.out
    if bn2 is not None:
        links.append((conv1.out, bn2.x))
        mid = bn2.out
    links += [(F.relu(mid), conv2.x), (conv2.out + (sc.out if sc is not None else node.x), node.out)]
    return all(a is not None and b is not None and _same(a, b) for a, b in links)


# ---------------------------------------------------------------- the authors' number

_RESIDUAL_BLOCKS = (BasicBlock, PreActBlock)
# parametrized layers the authors' number leaves out: their models have no BN, and their
# function reads only the convs and the final linear (utils_analysis.py:1372-1448)
_LEFT_OUT = (nn.modules.batchnorm._BatchNorm,)


def lipschitz_ma2023(model: nn.Module) -> float:
    """Ma et al.'s L2 "Lipschitz constant", as their ``return_Lipschitz_resnet_L2`` and
    ``return_Lipschitz_c2_L2`` compute it (freq-robust/src/utils_analysis.py:1372-1487):

    - a conv or linear outside a residual block: the top singular value of its weight
      reshaped to (C_out, -1) (:1376-1378, :1446, :1475-1485);
    - a residual block (robusthp's BasicBlock and PreActBlock): ``L_conv1 * L_conv2 +
      L_shortcut``, ``+ 1`` for an identity shortcut (:1391-1392, :1407-1408);
    - the product of all of these. BatchNorm, pools, activations and ``Normalize`` are
      left out, as theirs.

    Inside a block their code reshapes every kernel to (C_in, -1) (``.view(64, -1)`` for
    layer2's 64->128 conv1 and shortcut, :1396, :1400; likewise :1413, :1417, :1430, :1434).
    Where C_in == C_out that is (C_out, C_in k k); in a downsampling block's conv1 and
    shortcut it is another matrix, each row two output filters side by side. This keeps
    their reshape, so the number is theirs.

    A (C_out, C_in k k) kernel's norm is a LOWER bound of the conv's operator norm, not an
    upper bound (their comment, :1479, says otherwise): the conv maps an input holding one
    patch v, zero elsewhere, to an output whose value at that patch's position is W_mat v,
    so ||conv|| >= ||W_mat|| whenever one window lies wholly inside the input and groups=1.
    So the product is neither an upper nor a lower bound of the network's Lipschitz
    constant; it is reported to compare with the paper. Returns a float >= 0.

    A layer with parameters of a type without a rule (P4CNN's group convs, say) raises
    ``ValueError`` naming it: no number rather than a wrong one.
    """
    with torch.no_grad():
        return _ma2023(model, type(model).__name__)


def _ma2023(module: nn.Module, name: str) -> float:
    if isinstance(module, _RESIDUAL_BLOCKS):
        return _ma2023_block(module, name)
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        return _reshaped_norm(module, rows=module.weight.shape[0])
    if _has_own_parameters(module) and not isinstance(module, _LEFT_OUT):
        raise ValueError(f"lipschitz_ma2023: no rule for layer type {type(module).__name__} "
                         f"({name!r}); it handles Conv2d, Linear and robusthp's residual blocks")
    return math.prod(_ma2023(child, f"{name}.{key}") for key, child in module.named_children())


def _ma2023_block(block: nn.Module, name: str) -> float:
    """``L_conv1 * L_conv2 + L_shortcut`` (1 for the identity), each conv reshaped to
    (C_in, -1) as the authors' code does inside blocks."""
    shortcut = getattr(block, "shortcut", None)
    convs = [] if shortcut is None else [m for m in shortcut.modules() if isinstance(m, nn.Conv2d)]
    other = [] if shortcut is None else [m for m in shortcut.modules() if _has_own_parameters(m)
                                         and not isinstance(m, (nn.Conv2d, *_LEFT_OUT))]
    if len(convs) > 1 or other:
        raise ValueError(f"lipschitz_ma2023: the shortcut of {name!r} is not one conv (or BN) "
                         "nor the identity")
    in_block = [_reshaped_norm(c, rows=c.in_channels) for c in (block.conv1, block.conv2, *convs)]
    return in_block[0] * in_block[1] + (in_block[2] if convs else 1.0)


def _has_own_parameters(module: nn.Module) -> bool:
    return next(module.parameters(recurse=False), None) is not None


def _reshaped_norm(layer: nn.Conv2d | nn.Linear, rows: int) -> float:
    weight = layer.weight.detach()
    return float(torch.linalg.svdvals(weight.reshape(rows, -1))[0])


# ---------------------------------------------------------------- local and weight measures


def input_gradient_norms(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``||grad_x f_y(x)||_2`` per point: the L2 norm of the gradient of the true class's
    logit w.r.t. the input pixels, the model in eval mode (restored afterwards).

    x: float (N, C, H, W) pixels in [0, 1]; y: (N,) integer labels in [0, K). Returns a
    float (N,) tensor (x's dtype and device), detached. Works under ``torch.no_grad`` and
    ``torch.inference_mode`` (turned off for itself); writes no parameter's ``.grad``
    (``torch.autograd.grad`` w.r.t. x only) and draws no random numbers. The points are
    independent in eval mode, so one backward pass of the summed logits gives them all.
    """
    _check_xy(x, y)
    with eval_mode(model), gradients_on(), fp32():
        x = detached_copy(x).requires_grad_(True)
        y = detached_copy(y).to(x.device)
        logits = model(x)  # (N, K)
        if logits.ndim != 2 or logits.shape[0] != len(y):
            raise ValueError(f"the model must return logits of shape (N={len(y)}, K); got {tuple(logits.shape)}")
        if len(y) and int(y.max()) >= logits.shape[1]:
            raise ValueError(f"labels must be < the number of classes {logits.shape[1]}; got {int(y.max())}")
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    return grad.flatten(1).norm(dim=1).detach()  # (N,)


def weight_norm(model: nn.Module) -> float:
    """sqrt(sum of squares of every parameter of ``model``): weights, biases and BatchNorm's
    affine gamma/beta included, frozen parameters too (each shared parameter once);
    buffers (BatchNorm's running statistics, Normalize's mean/std) excluded. Computed in
    float64; returns a float >= 0."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            total += float(p.detach().double().pow(2).sum())
    return math.sqrt(total)


def _check_xy(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor of [0, 1] pixels; got {type(x).__name__}")
    if not isinstance(y, Tensor) or y.ndim != 1 or y.is_floating_point() or len(y) != len(x):
        raise ValueError(f"y must be a 1-D tensor of integer labels, one per point of x {tuple(x.shape)}")
    if x.numel() and (float(x.min()) < -PIXEL_TOL or float(x.max()) > 1 + PIXEL_TOL):
        raise ValueError(f"x must be pixels in [0, 1] (normalize inside the model); got "
                         f"min {float(x.min()):.4g}, max {float(x.max()):.4g}")
