"""Honest resume: a finished run is skipped only when it was made with the same config."""

import json
import logging
import os
import subprocess
import sys

from robusthp.config_store import UNNAMED_KEYS
from robusthp.results import config_diff, fingerprint, write_json_atomic
from robusthp.run import finished_run

CONFIG = {"batch_size": 32, "data": {"root": "/a", "train_subset": 100}, "regime": {"name": "lr", "lr": 0.01},
          "resume": True, "trainer": {"progress_bar": True, "threads": None}}


def _finished(tmp_path, config, **extra):
    record = {"status": "ok", "config": config, "fingerprint": fingerprint(config, UNNAMED_KEYS),
              "env": {"code_version": None}, **extra}
    write_json_atomic(tmp_path / "results.json", record)
    return record


def _with(config, key, value):
    out = json.loads(json.dumps(config))
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
        node = node[p]
    node[leaf] = value
    return out


def test_keys_that_cannot_change_results_leave_the_fingerprint_alone():
    stamp = fingerprint(CONFIG, UNNAMED_KEYS)
    for key, value in [("data.root", "/elsewhere"), ("resume", False), ("trainer.progress_bar", False),
                       ("trainer.threads", 1)]:
        assert fingerprint(_with(CONFIG, key, value), UNNAMED_KEYS) == stamp, key
    for key, value in [("batch_size", 64), ("data.train_subset", 200), ("regime.lr", 0.02)]:
        assert fingerprint(_with(CONFIG, key, value), UNNAMED_KEYS) != stamp, key
    assert config_diff(CONFIG, _with(CONFIG, "regime.lr", 0.02), UNNAMED_KEYS) == ["regime.lr"]
    assert config_diff(CONFIG, {**CONFIG, "epochs": 3}, UNNAMED_KEYS) == ["epochs"]  # a new key


def test_same_config_is_skipped_another_is_trained_again_and_kept(tmp_path, caplog):
    record = _finished(tmp_path, CONFIG)
    moved = _with(CONFIG, "data.root", "/other/machine")
    assert finished_run(tmp_path, moved, fingerprint(moved, UNNAMED_KEYS)) == record
    changed = _with(CONFIG, "regime.lr", 0.02)
    with caplog.at_level(logging.WARNING, logger="robusthp.run"):
        assert finished_run(tmp_path, changed, fingerprint(changed, UNNAMED_KEYS)) is None
    assert "regime.lr" in caplog.text and "another config" in caplog.text
    assert not (tmp_path / "results.json").exists()  # the old numbers are kept beside it:
    kept = json.loads((tmp_path / f"results.superseded-{record['fingerprint']}.json").read_text())
    assert kept == record


def test_a_record_without_fingerprint_is_judged_by_its_recorded_config(tmp_path):
    record = _finished(tmp_path, CONFIG)
    del record["fingerprint"]
    write_json_atomic(tmp_path / "results.json", record)
    assert finished_run(tmp_path, CONFIG, fingerprint(CONFIG, UNNAMED_KEYS)) == record


def test_another_code_version_only_warns(tmp_path, caplog):
    record = _finished(tmp_path, CONFIG, env={"code_version": "0000000"})
    with caplog.at_level(logging.WARNING, logger="robusthp.run"):
        assert finished_run(tmp_path, CONFIG, fingerprint(CONFIG, UNNAMED_KEYS)) == record
    assert "0000000" in caplog.text


def test_a_rerun_with_another_setting_trains_again(synthetic_root, tmp_path):
    """End to end: the same run dir, first one config, then another (a changed default would
    do the same): the second run trains instead of returning the first one's numbers."""
    env = dict(os.environ, ROBUSTHP_DATA_DIR=str(synthetic_root))
    base = [sys.executable, "-m", "robusthp.run", "eval=none", "epochs=1", "data.val_size=50",
            "trainer.progress_bar=false", f"hydra.run.dir={tmp_path}/run"]
    for extra in (["seed=1"], ["seed=1", "trainer.progress_bar=true"], ["seed=2"]):
        proc = subprocess.run([*base, *extra], capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        record = json.loads((tmp_path / "run" / "results.json").read_text())
        if extra == ["seed=1"]:
            first = record
        elif extra[-1] == "trainer.progress_bar=true":  # cannot change results: skipped
            assert record == first
        else:
            assert record["cell"]["seed"] == 2 and record["fingerprint"] != first["fingerprint"]
    superseded = list((tmp_path / "run").glob("results.superseded-*.json"))
    assert [json.loads(p.read_text())["cell"]["seed"] for p in superseded] == [1]


def test_a_switched_off_evaluation_is_not_part_of_the_run():
    # a run recorded before eval.perturbation existed, and one with it switched off: the same run
    old = {**CONFIG, "eval": {"adversarial": {"enabled": True, "eps": 0.3}}}
    new = {**CONFIG, "eval": {"adversarial": {"enabled": True, "eps": 0.3},
                              "perturbation": {"enabled": False, "bands": 10}}}
    assert fingerprint(old, UNNAMED_KEYS) == fingerprint(new, UNNAMED_KEYS)
    on = _with(new, "eval.perturbation.enabled", True)
    assert fingerprint(on, UNNAMED_KEYS) != fingerprint(old, UNNAMED_KEYS)
    off_eps = _with(_with(old, "eval.adversarial.enabled", False), "eval.adversarial.eps", 0.1)
    assert fingerprint(off_eps, UNNAMED_KEYS) == fingerprint(_with(old, "eval.adversarial.enabled", False),
                                                             UNNAMED_KEYS)


def test_a_record_is_judged_by_todays_rule_not_its_stored_stamp(tmp_path):
    old = {**CONFIG, "eval": {"adversarial": {"enabled": True}}}
    record = _finished(tmp_path, old)
    record["fingerprint"] = "written-by-an-older-rule"
    write_json_atomic(tmp_path / "results.json", record)
    new = {**CONFIG, "eval": {"adversarial": {"enabled": True}, "function": {"enabled": False}}}
    assert finished_run(tmp_path, new, fingerprint(new, UNNAMED_KEYS)) == record


def test_a_key_at_its_neutral_value_is_the_run_recorded_before_it_existed(tmp_path):
    # data.rotation came after runs were recorded; 0 (no rotation) is what those runs did
    new = _with(CONFIG, "data.rotation", 0.0)
    assert fingerprint(new, UNNAMED_KEYS) == fingerprint(CONFIG, UNNAMED_KEYS)
    _finished(tmp_path, CONFIG)
    assert finished_run(tmp_path, new, fingerprint(new, UNNAMED_KEYS)) is not None
    rotated = _with(CONFIG, "data.rotation", 30.0)
    assert fingerprint(rotated, UNNAMED_KEYS) != fingerprint(CONFIG, UNNAMED_KEYS)
    assert config_diff(CONFIG, rotated, UNNAMED_KEYS) == ["data.rotation"]
