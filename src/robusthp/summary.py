"""Print one run's results as a small table with rich (a dependency, imported on first print)."""

from __future__ import annotations

from pathlib import Path

_ORDER = ("test_acc", "val_acc", "train_loss", "clean_acc", "fgsm_acc", "pgd_acc", "hessian_top_eig")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def print_record(record: dict, out_dir: str | Path) -> None:
    from rich.console import Console
    from rich.table import Table

    cell = record.get("cell", {})
    title = " ".join(f"{k}={cell[k]}" for k in ("dataset", "model", "regime", "batch_size", "momentum", "lr") if k in cell)
    table = Table(title=f"robusthp: {title}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = record.get("metrics", {})
    keys = [k for k in _ORDER if k in metrics] + sorted(k for k in metrics if k not in _ORDER)
    table.add_row("status", str(record.get("status")))
    if record.get("error"):
        table.add_row("error", record["error"])
    for key in keys:
        if not isinstance(metrics[key], (list, dict)):
            table.add_row(key, _fmt(metrics[key]))
    table.add_row("steps", _fmt(record.get("steps")))
    for key, seconds in record.get("timings_s", {}).items():
        table.add_row(f"time {key} (s)", _fmt(seconds))
    table.add_row("results", str(Path(out_dir) / "results.json"))
    Console().print(table)
