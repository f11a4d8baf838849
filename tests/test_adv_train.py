"""Adversarial training (``adv_train=pgd|fgsm``): how the config resolves, the module's steps
against hand loops over the public attacks, resume state, fingerprints, and that it buys
robustness on a task where natural training does not."""

import copy
import functools
import io
import logging

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robusthp.attacks import fgsm, pgd
from robusthp.config import ConfigError, settings_from_config
from robusthp.config_store import UNNAMED_KEYS
from robusthp.experiment import adv_train_pixel_alpha, adv_train_pixel_eps
from robusthp.lit_module import ClassifierModule
from robusthp.results import fingerprint
from robusthp.run import check_group_choices
from robusthp.settings import AdvTrainSettings, resolve_sgd

MNIST_EPS, CIFAR10_EPS = 0.3, 0.02  # the paper's budgets (Kamath et al., Yao et al.)
MNIST_STD = 0.3081  # MNIST's pixel std, the usual normalization
MADRY = 2.5  # PGD's step: 2.5 eps / steps (Madry et al.)

logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::PendingDeprecationWarning")


# ---------------------------------------------------------------------------- config


@functools.cache
def _compose(*overrides: str):  # ~0.3-0.6 s each: every composed config is shared
    with initialize_config_module("robusthp.conf", version_base="1.3"):
        return compose("config", overrides=list(overrides))


@functools.cache
def _settings(*overrides: str):
    return settings_from_config(_compose(*overrides))


@pytest.mark.parametrize(("dataset", "eps"), [("mnist", MNIST_EPS), ("cifar10", CIFAR10_EPS)])
def test_pgd_takes_madrys_attack_at_the_evaluations_budget(dataset, eps):
    at = _settings("adv_train=pgd", f"dataset={dataset}").adv_train
    assert (at.method, at.enabled, at.steps, at.random_start) == ("pgd", True, 40, True)
    assert at.eps == pytest.approx(eps) and at.eps_space == "pixel"
    assert at.alpha == pytest.approx(MADRY * eps / 40)
    assert (at.last_epochs, at.bn_mode) == (None, "eval")


def test_pgd_takes_the_first_evaluation_budget_and_reading_of_a_list():
    at = _settings("adv_train=pgd", "eval.adversarial.eps=[0.2,0.1]",
                   "eval.adversarial.eps_space=[normalized,pixel]").adv_train
    assert at.eps == pytest.approx(0.2) and at.eps_space == "normalized"
    assert at.alpha == pytest.approx(MADRY * 0.2 / 40)
    # a disabled evaluation still sets the budget (its keys are read from the config)
    assert _settings("adv_train=pgd", "eval=none").adv_train.eps == pytest.approx(MNIST_EPS)


def test_fgsm_is_one_step_of_eps_without_random_start():
    at = _settings("adv_train=fgsm").adv_train
    assert (at.method, at.steps, at.random_start) == ("fgsm", 1, False)
    assert at.eps == pytest.approx(MNIST_EPS) and at.alpha == pytest.approx(MNIST_EPS)


def test_explicit_keys_win_and_alpha_follows_them():
    at = _settings("adv_train=pgd", "adv_train.eps=0.1", "adv_train.steps=7").adv_train
    assert (at.eps, at.steps) == (pytest.approx(0.1), 7)
    assert at.alpha == pytest.approx(MADRY * 0.1 / 7)
    at = _settings("adv_train=pgd", "adv_train.alpha=0.01", "adv_train.random_start=false").adv_train
    assert at.alpha == pytest.approx(0.01) and at.random_start is False


def test_the_presets_lines_train_as_their_comments_say():
    full = _settings("experiment=adv_training_mnist", "at_line=pgd_sgd").adv_train
    assert (full.method, full.eps, full.steps, full.alpha) == ("pgd", 0.3, 40, pytest.approx(0.01))
    cpu = _settings("experiment=adv_training_mnist_cpu", "at_line=pgd_engm")
    assert (cpu.adv_train.method, cpu.sgd.regime) == ("pgd", "engm")
    assert (cpu.adv_train.eps, cpu.adv_train.steps) == (pytest.approx(0.1), 7)
    assert cpu.adv_train.alpha == pytest.approx(MADRY * 0.1 / 7)
    assert _settings("experiment=adv_training_mnist", "at_line=natural").adv_train == AdvTrainSettings()


@pytest.mark.parametrize(("overrides", "key"), [
    (("adv_train=fgsm", "adv_train.steps=5"), "adv_train.steps"),
    (("adv_train=pgd", "adv_train.bn_mode=foo"), "adv_train.bn_mode"),
    (("adv_train=pgd", "adv_train.eps=[0.1,0.2]"), "adv_train.eps"),
    (("adv_train=pgd", "adv_train.last_epochs=0"), "adv_train.last_epochs"),
])
def test_bad_keys_raise_one_line_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as err:
        settings_from_config(_compose(*overrides))
    message = str(err.value)
    assert key in message and "\n" not in message


NATURAL_WITH_KEYS = ("adv_train.eps=0.1", "adv_train.steps=7", "adv_train.bn_mode=train")


def test_natural_training_is_the_default_and_reads_no_adv_train_key():
    settings = _settings()
    assert settings.adv_train == AdvTrainSettings() and not settings.adv_train.enabled
    assert settings.cell()["adv_train"] == "none"
    assert _settings(*NATURAL_WITH_KEYS).adv_train == AdvTrainSettings()


def test_at_line_sets_regime_and_method_and_the_cell_records_it():
    settings = _settings("at_line=pgd_engm")
    assert (settings.sgd.regime, settings.sgd.optimizer, settings.adv_train.method) == ("engm", "engm", "pgd")
    assert settings.cell()["adv_train"] == "pgd"
    assert _settings("at_line=pgd_sgd").sgd.regime == "lr"
    assert _settings("adv_train=fgsm").cell()["adv_train"] == "fgsm"


def test_robust_validation_defaults_to_the_training_attacks_budget():
    rv = _settings("eval.robust_val.enabled=true", "adv_train=pgd", "adv_train.eps=0.05",
                   "adv_train.eps_space=normalized").robust_val
    assert (rv.eps, rv.eps_space) == (pytest.approx(0.05), "normalized")
    natural = _settings("eval.robust_val.enabled=true", "eval.adversarial.eps=[0.2,0.1]").robust_val
    assert (natural.eps, natural.eps_space) == (pytest.approx(0.2), "pixel")
    own = _settings("eval.robust_val.enabled=true", "eval.robust_val.eps=0.07", "adv_train=pgd").robust_val
    assert own.eps == pytest.approx(0.07)


@pytest.mark.parametrize("key", ["adv_train.alpha=0.1", "adv_train.random_start=true"])
def test_fgsm_refuses_the_pgd_keys_it_would_ignore(key):
    with pytest.raises(ConfigError, match=key.split("=")[0]):
        settings_from_config(_compose("adv_train=fgsm", key))


def test_an_unknown_method_exits_2_listing_the_methods(capsys):
    with pytest.raises(SystemExit) as exit_:
        check_group_choices(["adv_train=bogus"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "bogus" in err and "fgsm, none, pgd" in err


# ---------------------------------------------------------------------------- pixel budget


def test_the_pixel_budget_is_eps_or_eps_times_the_std_per_channel():
    assert adv_train_pixel_eps(_settings("adv_train=pgd", "adv_train.eps=0.2")) == (pytest.approx(0.2),)
    normalized = adv_train_pixel_eps(_settings("adv_train=pgd", "adv_train.eps=0.2",
                                               "adv_train.eps_space=normalized"))
    assert normalized == (pytest.approx(0.2 * MNIST_STD),)
    # the evaluation's reading is inherited: eps 0.3 normalized
    inherited = adv_train_pixel_eps(_settings("adv_train=fgsm", "eval.adversarial.eps_space=normalized"))
    assert inherited == (pytest.approx(MNIST_EPS * MNIST_STD),)
    assert adv_train_pixel_eps(_settings()) is None


def test_the_pixel_budget_of_a_colour_dataset_has_one_value_per_channel():
    from robusthp.catalog import get_spec

    settings = _settings("dataset=cifar10", "adv_train=pgd", "adv_train.eps_space=normalized")
    std = get_spec("cifar10").std
    assert len(std) == 3 and len(set(std)) > 1
    assert adv_train_pixel_eps(settings) == pytest.approx(tuple(CIFAR10_EPS * s for s in std))


def test_a_normalized_budget_steps_by_the_evaluations_rule_in_pixels():
    """eps 0.3 normalized on MNIST is 0.3 x 0.3081 pixels; PGD's default step is 2.5 x that / steps
    (as eval.adversarial and eval.robust_val take it), not 2.5 x 0.3 / steps pixels."""
    settings = _settings("adv_train=pgd", "adv_train.eps_space=normalized", "adv_train.steps=4")
    pixel_eps = MNIST_EPS * MNIST_STD
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    module = ClassifierModule(model, settings.sgd, adv_train=settings.adv_train,
                              adv_eps=adv_train_pixel_eps(settings),
                              adv_alpha=adv_train_pixel_alpha(settings), seed=settings.train.seed)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    expected = pgd(model, x, y, eps=pixel_eps, alpha=MADRY * pixel_eps / 4, steps=4, random_start=True,
                   generator=torch.Generator().manual_seed(settings.train.seed))
    torch.testing.assert_close(module.train_inputs(x, y), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- the module's steps


LR, MOMENTUM, EPS, BATCH = 0.1, 0.5, 0.1, 16


def _net(bn: bool = False, seed: int = 0) -> nn.Module:
    """(N, 1, 4, 4) pixels -> 3 logits; a conv (and BatchNorm) then a linear layer."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3, padding=1), *([nn.BatchNorm2d(3)] if bn else []), nn.ReLU(),
              nn.Flatten(), nn.Linear(3 * 4 * 4, 3)]
    return nn.Sequential(*layers)


def _data(n: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loader(x, y, batch_size=BATCH):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _sgd(regime="lr", **keys):
    if regime == "lr":
        keys.setdefault("lr", LR)
    return resolve_sgd(regime, batch_size=BATCH, momentum=MOMENTUM, **keys)


def _module(model, at: AdvTrainSettings | None, regime="lr", seed=7, **keys) -> ClassifierModule:
    return ClassifierModule(model, _sgd(regime, **keys), adv_train=at,
                            adv_eps=EPS if at is not None else None, seed=seed)


def _fit(module, loader, epochs=1, callbacks=()):
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(module, train_dataloaders=loader)
    return module


def _hand_train(model, loader, crafts):
    """One epoch per entry of ``crafts`` (``None``: natural; else ``(model, x, y) -> x_adv``):
    torch SGD on CE(model(inputs), y), batch by batch."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()
    for craft in crafts:
        for x, y in loader:
            inputs = x if craft is None else craft(model, x, y)
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), y).backward()
            optimizer.step()
    return model


def _assert_same_weights(a: nn.Module, b: nn.Module, atol=1e-6):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=atol, msg=name)


def _differ(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.allclose(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _fgsm(model, x, y):
    return fgsm(model, x, y, eps=EPS)


def test_fgsm_training_takes_the_steps_of_a_hand_loop_over_fgsm():
    x, y = _data()
    at = AdvTrainSettings(method="fgsm").resolved(EPS, "pixel")
    module = _fit(_module(_net(), at), _loader(x, y))
    hand = _hand_train(_net(), _loader(x, y), [_fgsm])
    _assert_same_weights(module.model, hand)
    assert _differ(hand, _hand_train(_net(), _loader(x, y), [None]))  # adversarial != natural


def test_pgd_training_draws_its_random_starts_from_one_generator_seeded_with_the_seed():
    x, y = _data()
    steps = 3
    at = AdvTrainSettings(method="pgd", steps=steps).resolved(EPS, "pixel")
    assert at.random_start
    module = _fit(_module(_net(), at, seed=7), _loader(x, y), epochs=2)
    generator = torch.Generator().manual_seed(7)  # one for the whole run, both epochs

    def craft(model, x, y):
        return pgd(model, x, y, eps=EPS, alpha=MADRY * EPS / steps, steps=steps, random_start=True,
                   generator=generator)

    _assert_same_weights(module.model, _hand_train(_net(), _loader(x, y), [craft, craft]))
    other_seed = _fit(_module(_net(), at, seed=8), _loader(x, y), epochs=2)
    assert _differ(module.model, other_seed.model)


def test_last_epochs_trains_naturally_first_then_adversarially():
    x, y = _data()
    at = AdvTrainSettings(method="fgsm", last_epochs=1).resolved(EPS, "pixel")
    module = _fit(_module(_net(), at), _loader(x, y), epochs=3)
    _assert_same_weights(module.model, _hand_train(_net(), _loader(x, y), [None, None, _fgsm]))


def _bn(model) -> nn.BatchNorm2d:
    return next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _bn_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in _bn(model).named_buffers()}


def test_bn_mode_train_crafts_on_batch_statistics_and_only_the_step_updates_the_running_ones():
    x, y = _data(BATCH)  # one batch: one SGD step
    at = AdvTrainSettings(method="fgsm", bn_mode="train").resolved(EPS, "pixel")
    module = _fit(_module(_net(bn=True), at), _loader(x, y))

    def craft(model, x, y, restore=True):
        saved = _bn_buffers(model)
        adv = fgsm(model, x, y, eps=EPS, keep_mode=True)  # train mode: updates the running stats
        if restore:
            for name, value in saved.items():
                getattr(_bn(model), name).copy_(value)
        return adv

    hand = _hand_train(_net(bn=True), _loader(x, y), [craft])
    _assert_same_weights(module.model, hand)  # the weights and every BatchNorm buffer
    assert int(_bn(module.model).num_batches_tracked) == 1
    unrestored = _hand_train(_net(bn=True), _loader(x, y), [functools.partial(craft, restore=False)])
    assert not torch.allclose(_bn(unrestored).running_mean, _bn(module.model).running_mean)
    eval_crafted = _fit(_module(_net(bn=True), AdvTrainSettings(method="fgsm").resolved(EPS, "pixel")),
                        _loader(x, y))
    assert _differ(module.model, eval_crafted.model)  # the two modes attack different functions


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_crafting_leaves_flags_and_running_statistics_as_they_were(bn_mode):
    x, y = _data(BATCH)
    model = _net(bn=True)
    model.train()
    model[0].eval()  # a mixed model: each flag must come back as it was
    flags = [m.training for m in model.modules()]
    buffers = _bn_buffers(model)
    module = _module(model, AdvTrainSettings(method="fgsm", bn_mode=bn_mode).resolved(EPS, "pixel"))
    adv = module.train_inputs(x, y)
    assert [m.training for m in model.modules()] == flags
    for name, value in _bn_buffers(model).items():
        torch.testing.assert_close(value, buffers[name], rtol=0, atol=0, msg=name)
    assert all(p.grad is None for p in model.parameters())
    twin = copy.deepcopy(model)
    expected = fgsm(twin, x, y, eps=EPS, keep_mode=bn_mode == "train")
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    other = fgsm(copy.deepcopy(model), x, y, eps=EPS, keep_mode=bn_mode != "train")
    assert not torch.equal(adv, other)  # batch vs running statistics: other examples


class _CallsTrainInputs(pl.Callback):
    """What ``GradientStatistics`` does: craft the training inputs of a fixed batch."""

    def __init__(self, x, y):
        self.x, self.y, self.crafted = x, y, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.crafted.append(pl_module.train_inputs(self.x, self.y))


def test_train_inputs_leaves_the_training_stream_alone():
    x, y = _data()
    at = AdvTrainSettings(method="pgd", steps=3).resolved(EPS, "pixel")
    plain = _fit(_module(_net(), at), _loader(x, y), epochs=2)
    probe = _CallsTrainInputs(x[:8], y[:8])
    probed = _fit(_module(_net(), at), _loader(x, y), epochs=2, callbacks=[probe])
    _assert_same_weights(plain.model, probed.model, atol=0)
    assert len(probe.crafted) == 2 and not torch.equal(probe.crafted[0], x[:8])
    assert (probe.crafted[0] - x[:8]).abs().max() <= EPS + 1e-6


# ---------------------------------------------------------------------------- resuming


def _engm_module(model, state=None):
    at = AdvTrainSettings(method="pgd", steps=2).resolved(EPS, "pixel")
    module = _module(model, at, regime="engm", seed=3, mode="cheap", refit_every=2)
    if state is not None:
        module.model.load_state_dict(state)
    return module


def _round_trip(checkpoint: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_a_checkpoint_restores_the_random_starts_and_engms_fit():
    x, y = _data()
    loader = _loader(x, y)
    first = _fit(_engm_module(_net()), loader)  # 3 steps: ENGM's cheap fit made at step 0 and 2
    rng = torch.get_rng_state()
    saved = {}
    first.on_save_checkpoint(saved)
    saved = _round_trip(saved)
    assert "adv_train" in saved["rng_states"] and saved["engm"]["calls"] == 3
    weights = copy.deepcopy(first.model.state_dict())

    def resumed(checkpoint):
        module = _engm_module(_net(seed=1), weights)
        module.on_load_checkpoint(checkpoint)
        return _fit(module, loader)

    full = resumed(saved)
    without_generator = resumed({**saved, "rng_states": {"cpu": saved["rng_states"]["cpu"]}})
    without_engm = resumed({k: v for k, v in saved.items() if k != "engm"})
    torch.set_rng_state(rng)
    _fit(first, loader)  # the unbroken run's next epoch
    _assert_same_weights(first.model, full.model, atol=0)
    assert first._engm.state_dict() == full._engm.state_dict()
    assert _differ(first.model, without_generator.model)  # each part of the state matters
    assert _differ(first.model, without_engm.model)


# ---------------------------------------------------------------------------- fingerprints


def _config(*overrides: str) -> dict:
    return OmegaConf.to_container(_compose(*overrides), resolve=True)


def test_natural_training_fingerprints_as_a_config_recorded_before_adv_train_existed():
    natural = _config()
    assert natural["adv_train"]["method"] == "none"
    before = {k: v for k, v in natural.items() if k != "adv_train"}
    stamp = fingerprint(before, UNNAMED_KEYS)
    assert fingerprint(natural, UNNAMED_KEYS) == stamp
    other_keys = _config(*NATURAL_WITH_KEYS)
    assert fingerprint(other_keys, UNNAMED_KEYS) == stamp
    assert fingerprint(_config("adv_train=pgd"), UNNAMED_KEYS) != stamp
    assert fingerprint(_config("adv_train=fgsm"), UNNAMED_KEYS) != fingerprint(_config("adv_train=pgd"),
                                                                                UNNAMED_KEYS)


# ---------------------------------------------------------------------------- robustness


D, ETA, P_ROBUST, SCALE = 100, 0.3, 0.9, 1 / 12  # Tsipras et al.'s task in [0, 1] pixels


def _tsipras(n: int, seed: int):
    """Tsipras et al. 2019 (arXiv 1805.12152): y = ±1, a robust feature z0 = y w.p. p (else
    -y) and D non-robust features z_i ~ N(eta y, 1); pixels 0.5 + SCALE z, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    sign = 2.0 * labels - 1
    robust = torch.where(torch.rand(n, generator=g) < P_ROBUST, sign, -sign)
    weak = ETA * sign[:, None] + torch.randn(n, D, generator=g)
    return (0.5 + SCALE * torch.cat([robust[:, None], weak], 1)).clamp(0, 1), labels


class _Standardize(nn.Module):
    def forward(self, u):
        return (u - 0.5) / SCALE


def _train_linear(adversarial: bool, eps: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(_Standardize(), nn.Linear(D + 1, 2))
    at = AdvTrainSettings(method="pgd", steps=5).resolved(eps, "pixel") if adversarial else None
    module = ClassifierModule(model, resolve_sgd("lr", batch_size=50, momentum=0.9, lr=0.003), adv_train=at,
                              adv_eps=eps if adversarial else None, seed=0)
    x, y = _tsipras(1000, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=50, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    return _fit(module, loader, epochs=5).model.eval()


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_pgd_training_buys_robustness_that_natural_training_lacks():
    eps = 2 * ETA * SCALE  # 2 eta in feature units: flips every non-robust feature's mean
    x, y = _tsipras(1000, seed=1)
    natural, robust = _train_linear(False, eps), _train_linear(True, eps)
    robust_acc = {name: _accuracy(m, pgd(m, x, y, eps=eps, steps=10), y)
                  for name, m in (("natural", natural), ("robust", robust))}
    assert _accuracy(natural, x, y) > 0.95  # the weak features together predict y well
    assert robust_acc["natural"] < 0.1
    assert robust_acc["robust"] > robust_acc["natural"] + 0.2
    assert robust_acc["robust"] <= P_ROBUST + 0.05  # no better than the robust feature allows
