"""How a line looks: its regime's colour, shaded by momentum, with a marker and dash per momentum.

Within a regime momentum is shown three ways (darker = more momentum, marker, line style),
so lines stay apart when they overlap and in greyscale. The paper's momenta
(:data:`robusthp.catalog.PAPER_MOMENTA`) keep the same marker and dash in every figure.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from matplotlib import colors as mcolors

from robusthp.catalog import PAPER_MOMENTA
from robusthp.report.names import base_colour, regime_label, regime_order

_PAPER_STYLES = (("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"))
# a momentum beyond these styles takes one of _OTHER_STYLES, hence strict=False
_MOMENTUM_STYLES = dict(zip(PAPER_MOMENTA, _PAPER_STYLES, strict=False))
_OTHER_STYLES = (("v", (0, (3, 1, 1, 1))), ("P", (0, (5, 1))), ("X", (0, (1, 1))))


@dataclass(frozen=True)
class LineStyle:
    """One line of a figure, (regime, momentum), and how it is drawn and labelled."""

    regime: str
    momentum: float
    label: str
    colour: tuple[float, ...]
    marker: str
    linestyle: Any

    def rows(self, table: pd.DataFrame) -> pd.DataFrame:
        """The rows of ``table`` (runs or summary) on this line, by batch size."""
        rows = table[(table["regime"] == self.regime)
                     & table["momentum"].map(lambda m: math.isclose(m, self.momentum))]
        return rows.sort_values("batch_size")


def line_styles(lines: Sequence[tuple[str, float]], show_regime: bool) -> list[LineStyle]:
    """A style per (regime, momentum), in legend order: regimes as the catalog, then momentum."""
    regimes = regime_order(r for r, _ in lines)
    all_momenta = sorted({m for _, m in lines})
    out = []
    for regime, momentum in sorted(lines, key=lambda rm: (regimes.index(rm[0]), rm[1])):
        momenta = sorted({m for r, m in lines if r == regime})
        colour = _shade(base_colour(regime, regimes), momentum, momenta)
        marker, ls = _momentum_style(momentum, all_momenta)
        if len(momenta) == 1:  # one line in this regime: colour and marker suffice
            ls = "-"
        label = f"m = {momentum:g}"
        if show_regime:
            label = f"{regime_label(regime)}, {label}"
        out.append(LineStyle(regime, momentum, label, colour, marker, ls))
    return out


def _shade(colour: str, momentum: float, momenta: Sequence[float]) -> tuple[float, ...]:
    """The regime's colour, lighter for the smallest momentum, darker for the largest."""
    if len(momenta) < 2:
        return mcolors.to_rgb(colour)
    t = sorted(momenta).index(momentum) / (len(momenta) - 1)  # 0 .. 1
    h, lum, s = colorsys.rgb_to_hls(*mcolors.to_rgb(colour))
    target = lum + 0.15 - 0.35 * t  # lightness from +0.15 to -0.20 around the base colour
    return colorsys.hls_to_rgb(h, min(0.82, max(0.25, target)), s)


def _momentum_style(momentum: float, momenta: Sequence[float]) -> tuple[str, Any]:
    for m, style in _MOMENTUM_STYLES.items():
        if math.isclose(momentum, m, abs_tol=1e-9):
            return style
    others = [m for m in momenta if not any(math.isclose(m, k) for k in _MOMENTUM_STYLES)]
    return _OTHER_STYLES[others.index(momentum) % len(_OTHER_STYLES)]
