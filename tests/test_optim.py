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
        ({"regime": "adagrad", "batch_size": 32},
         "unknown regime 'adagrad'; choose one of: adam, benchmark, engm, lr, lr_bs, rmsprop, sgd_ma2023"),
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


# ---------------------------------------------------------------- Ma et al. 2023's regimes
# Their values (averyma/opt-robust src/utils_general.py get_optim, options/default.yaml):
# lr per dataset, Adam betas (0.9, 0.999), RMSProp alpha 0.99 and momentum 0, no weight
# decay; their SGD: momentum 0, lr x0.1 at 50% and 75% of training.


@pytest.mark.parametrize("regime,dataset,lr", [
    ("sgd_ma2023", "mnist", 0.1), ("sgd_ma2023", "fashion_mnist", 0.01), ("sgd_ma2023", "cifar10", 0.2),
    ("adam", "mnist", 5e-4), ("adam", "cifar10", 2e-4), ("rmsprop", "fashion_mnist", 5e-5),
    ("rmsprop", "cifar10", 5e-4),
])
def test_study_lr_is_the_datasets_and_does_not_depend_on_batch(regime, dataset, lr):
    for batch_size in (32, 512):
        assert resolve_sgd(regime, batch_size, dataset=dataset, epochs=8).lr == lr
    assert resolve_sgd(regime, 32, dataset=dataset, epochs=8, lr=0.3).lr == 0.3  # regime.lr=


def test_adam_and_rmsprop_are_built_with_the_studys_knobs():
    p = [torch.nn.Parameter(torch.zeros(1))]
    adam, sched = build_optimizer(p, resolve_sgd("adam", 64, dataset="mnist"))
    g = adam.param_groups[0]
    assert isinstance(adam, torch.optim.Adam) and sched is None
    assert (g["betas"], g["eps"], g["weight_decay"], g["amsgrad"]) == ((0.9, 0.999), 1e-8, 0, False)
    rms, _ = build_optimizer(p, resolve_sgd("rmsprop", 64, dataset="mnist", alpha=0.9, weight_decay=1e-4))
    g = rms.param_groups[0]
    assert isinstance(rms, torch.optim.RMSprop)
    assert (g["alpha"], g["momentum"], g["centered"], g["weight_decay"]) == (0.9, 0, False, 1e-4)


def test_adam_steps_like_torch_adam():
    torch.manual_seed(0)
    w0 = torch.randn(5)
    ours = torch.nn.Parameter(w0.clone())
    ref = torch.nn.Parameter(w0.clone())
    opt, _ = build_optimizer([ours], resolve_sgd("adam", 32, dataset="fashion_mnist"))
    ref_opt = torch.optim.Adam([ref], lr=5e-4)  # torch's defaults are the study's
    for _ in range(3):
        for p, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad()
            (p ** 2).sum().backward()
            o.step()
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("epochs,drops", [(8, (4, 6)), (6, (3, 4)), (100, (50, 75)), (1, (1,))])
def test_study_sgd_drops_lr_tenfold_at_half_and_three_quarters(epochs, drops):
    sgd = resolve_sgd("sgd_ma2023", 128, dataset="mnist", epochs=epochs)
    assert sgd.momentum == 0 and sgd.lr_drop_epochs == drops
    lrs = _lr_during_epochs(sgd, epochs + 1)
    expected = [0.1 * 0.1 ** sum(e >= d for d in drops) for e in range(epochs + 1)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("kwargs,match", [
    ({"regime": "adam", "momentum": 0.9}, r"regime 'adam' has no SGD momentum \(its regime.beta1, "
                                           r"regime.beta2 are not momentum\); got momentum=0.9"),
    ({"regime": "rmsprop", "momentum": 0.0}, r"its regime.alpha are not momentum"),
    ({"regime": "adam", "beta1": 1.0}, r"regime.beta1 must be a number in \[0, 1\), got 1.0"),
    ({"regime": "adam", "dataset": "svhn"}, "regime 'adam' has no default lr for dataset 'svhn'"),
    ({"regime": "rmsprop", "weight_decay": -1}, "regime.weight_decay must be a number >= 0"),
    ({"regime": "sgd_ma2023", "epochs": None}, "drops lr at fractions of training"),
])
def test_study_regimes_bad_input_names_the_value(kwargs, match):
    kwargs = {"batch_size": 32, "dataset": "mnist", "epochs": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        resolve_sgd(**kwargs)


def test_study_sgd_takes_a_momentum_override_as_the_paper_regimes_do():
    assert resolve_sgd("sgd_ma2023", 32, momentum=0.9, dataset="mnist", epochs=4).momentum == 0.9
