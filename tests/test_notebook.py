"""notebooks/reproduce_paper.ipynb runs headless, start to end, on a small synthetic table."""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from robusthp import report
from robusthp.results import write_json_atomic

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "reproduce_paper.ipynb"


def _write_sweep(root: Path) -> None:
    """Two (dataset, model) pairs, three regimes, two momenta, two batch sizes; one diverged."""
    lines = [("lr", 0.0), ("lr", 0.9), ("lr_bs", 0.0), ("lr_bs", 0.9), ("benchmark", 0.9)]
    for dataset in ("mnist", "fashion_mnist"):
        for regime, momentum in lines:
            for batch_size in (64, 512):
                doublings = math.log2(batch_size / 64)
                status = "diverged" if (regime, momentum, batch_size) == ("lr_bs", 0.9, 512) \
                    else "ok"
                metrics = {} if status != "ok" else {
                    "test_acc": 0.9 - 0.01 * doublings, "clean_acc": 0.9,
                    "fgsm_acc": 0.5 - 0.02 * doublings, "pgd_acc": 0.3,
                    "hessian_top_eig": 10 + doublings * (1 - momentum)}
                write_json_atomic(
                    root / f"{dataset}_{regime}_{momentum}_{batch_size}" / "results.json",
                    {"schema": 1, "status": status, "error": None,
                     "cell": {"dataset": dataset, "model": "stdcnn", "regime": regime,
                              "batch_size": batch_size, "momentum": momentum, "lr": 0.01,
                              "seed": 0, "epochs": 1},
                     "metrics": metrics, "wall_time_s": 1.0})


def test_notebook_executes_without_errors(tmp_path, monkeypatch):
    _write_sweep(tmp_path / "sweep")
    csv = tmp_path / "results.csv"
    report.collect([tmp_path / "sweep"]).to_csv(csv, columns=list(report.COLUMNS), index=False)
    monkeypatch.setenv("ROBUSTHP_REPORT_CSV", str(csv))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2 + 1 + 4  # Section 3, finding 4, Section 4 figures
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "20 runs" in text


@pytest.mark.parametrize("name", ["RESULTS_CSV", "ROBUSTHP_REPORT_CSV", "outputs/report/results.csv"])
def test_first_code_cell_sets_the_table_path(name):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert name in first_code.source


OPTIMIZERS_NOTEBOOK = NOTEBOOK.parent / "optimizers.ipynb"


def test_optimizers_notebook_draws_the_three_claims(tmp_path, monkeypatch):
    from test_report_optimizers import make_study  # 3 regimes x 3 seeds, one untrained, one failed

    make_study(tmp_path / "sweep")
    written = report.write_report([tmp_path / "sweep"], tmp_path / "report")
    monkeypatch.setenv("ROBUSTHP_REPORT_CSV", str(written["results.csv"]))

    nb = nbformat.read(OPTIMIZERS_NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(OPTIMIZERS_NOTEBOOK.parent)}}).execute()

    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # perturbations, bands, function measures of the one compared pair
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "gaussian_acc@0.01:" in text and "lipschitz_upper:" in text
