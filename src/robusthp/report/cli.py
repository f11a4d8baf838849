"""``python -m robusthp.report`` / ``robusthp-report``: arguments, exit codes, one-line errors.

A bad dir, an empty sweep or an x-axis the runs cannot give is one line on stderr and an
exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from robusthp.report.figures import SPREADS
from robusthp.report.flags import DEFAULT_UNTRAINED_MARGIN
from robusthp.report.printing import print_summary
from robusthp.report.table import collect
from robusthp.report.write import write_report
from robusthp.report.xaxis import X_AXES, NoNoiseScale


def _margin(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m robusthp.report",
        description="Collect results.json files (and each run's evaluations/*.json) of "
                    "robusthp sweeps into tables (results.csv, summary.csv, trends.csv) and "
                    "figures: accuracy at every eps and reading, top Hessian eigenvalue and "
                    "median eps* vs batch size, and robustness curves (accuracy vs eps).")
    p.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="dirs searched recursively")
    p.add_argument("--out", metavar="OUT_DIR", help="output dir (default: FIRST_SWEEP_DIR/report)")
    p.add_argument("--momentum", type=float, nargs="+", metavar="M",
                   help="only these momenta in the per-(dataset, model) figures (Benchmark "
                        "always kept), e.g. --momentum 0 for the paper's Section 3 figures")
    p.add_argument("--spread", choices=SPREADS, default="minmax",
                   help="band around the mean over seeds (default: minmax)")
    p.add_argument("--x", choices=list(X_AXES), default="batch_size",
                   help="x-axis of the batch-size figures: batch_size (default) or "
                        "noise_scale = lr / (B (1 - m)), the SGD noise scale (log axis; "
                        "files *_noise_scale.png); runs without lr or with m = 1 are left out")
    p.add_argument("--untrained-margin", type=_margin, default=DEFAULT_UNTRAINED_MARGIN,
                   metavar="A",
                   help="a run whose clean test accuracy is below 1/num_classes + A is "
                        "'untrained': drawn hollow, left out of lines, trends and summary "
                        f"(default: {DEFAULT_UNTRAINED_MARGIN})")
    p.add_argument("--quiet", action="store_true", help="do not print the summary table")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 ok, 1 no results, 2 bad arguments)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    missing = [d for d in args.sweep_dirs if not Path(d).is_dir()]
    if missing:
        print(f"error: sweep dir not found (or not a directory): {', '.join(missing)}",
              file=sys.stderr)
        return 2
    df = collect(args.sweep_dirs, untrained_margin=args.untrained_margin)
    if df.empty:
        print(f"error: no results.json found under {', '.join(args.sweep_dirs)}",
              file=sys.stderr)
        return 1
    out_dir = Path(args.out) if args.out else Path(args.sweep_dirs[0]) / "report"
    try:
        written = write_report(args.sweep_dirs, out_dir, momenta=args.momentum,
                               spread=args.spread, df=df, x=args.x)
    except NoNoiseScale as error:
        print(f"error: --x noise_scale: {error}", file=sys.stderr)
        return 2
    if not args.quiet:
        print_summary(df)
    figures = [p for name, p in written.items() if name.endswith(".png")]
    tables = [str(p) for name, p in written.items() if name.endswith(".csv")]  # optimizers.csv too
    print(f"wrote {', '.join(tables)} and {len(figures)} figures to {out_dir}")
    return 0
