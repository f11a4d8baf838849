import pytest
import torch

from robusthp.optim import REGIMES, build_optimizer, resolve_sgd


@pytest.mark.parametrize("batch_size,expected", [(32, 0.005), (128, 0.02), (512, 0.08), (4096, 0.64)])
def test_lr_bs_learning_rate_is_ratio_times_batch(batch_size, expected):
    # the paper: lr = 0.00015625 x batch size (0.005 at 32, 0.02 at 128, 0.64 at 4096)
    sgd = resolve_sgd("lr_bs", batch_size=batch_size, momentum=0.5)
    assert sgd.lr == pytest.approx(expected) and sgd.momentum == 0.5


@pytest.mark.parametrize("batch_size", [32, 1024])
def test_fixed_lr_does_not_depend_on_batch(batch_size):
    assert resolve_sgd("lr", batch_size=batch_size).lr == 0.01


def _lr_during_epochs(sgd, epochs):
    param = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_optimizer([param], sgd)
    seen = []
    for _ in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        if sched is not None:
            sched.step()
    return seen


def test_benchmark_halves_every_five_epochs():
    sgd = resolve_sgd("benchmark", batch_size=256)
    lrs = _lr_during_epochs(sgd, 11)
    for epoch, expected in [(0, 0.01), (4, 0.01), (5, 0.005), (10, 0.0025)]:
        assert lrs[epoch] == pytest.approx(expected)
    assert sgd.momentum == 0.9


def test_sgd_settings_are_explicit():
    opt, sched = build_optimizer([torch.nn.Parameter(torch.zeros(1))], resolve_sgd("lr", 64, 0.2))
    group = opt.param_groups[0]
    assert isinstance(opt, torch.optim.SGD) and sched is None
    assert (group["momentum"], group["weight_decay"], group["nesterov"], group["dampening"]) == (0.2, 0, False, 0)


def test_benchmark_rejects_other_momentum_but_accepts_its_own():
    with pytest.raises(ValueError, match="fixes momentum at 0.9"):
        resolve_sgd("benchmark", batch_size=32, momentum=0.5)
    assert resolve_sgd("benchmark", batch_size=32, momentum=0.9).momentum == 0.9


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"regime": "adam", "batch_size": 32}, "unknown regime 'adam'; choose one of: benchmark, lr, lr_bs"),
        ({"regime": "lr", "batch_size": 0}, "batch_size must be a positive integer"),
        ({"regime": "lr", "batch_size": 3.5}, "batch_size must be a positive integer"),
        ({"regime": "lr", "batch_size": 32, "momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"regime": "lr", "batch_size": 32, "momentum": -0.1}, r"momentum must be in \[0, 1\)"),
        ({"regime": "lr", "batch_size": 32, "lr": 0}, "lr must be a positive number"),
    ],
)
def test_bad_input_names_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_sgd(**kwargs)


def test_registry_holds_the_papers_three_regimes():
    assert set(REGIMES) >= {"lr", "lr_bs", "benchmark"}
