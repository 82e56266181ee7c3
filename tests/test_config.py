"""Recipe validation: every error names the file and the dotted path."""

import pytest
import yaml

from ganforge import config
from ganforge.errors import ConfigError

BASE = {"name": "t", "model": {"type": "dcgan", "resolution": 16}}


def load(tmp_path, raw, overrides=()):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return config.load_recipe(p, list(overrides))


def test_defaults_and_types(tmp_path):
    r = load(tmp_path, BASE)
    assert r.train.batch_size == 64 and r.loss == {"type": "nonsaturating"}
    assert r.train.g_opt.betas == (0.5, 0.999)


def test_float_written_without_dot_is_accepted(tmp_path):
    # PyYAML reads 2e-4 as a string; users write it that way all the time.
    r = load(tmp_path, {**BASE, "train": {"g_opt": {"lr": "2e-4"}}})
    assert r.train.g_opt.lr == pytest.approx(2e-4)


@pytest.mark.parametrize("raw, pattern", [
    ({**BASE, "trian": {}}, r"r\.yaml: trian: unknown key \(did you mean 'train'\?\)"),
    ({**BASE, "train": {"bach_size": 3}}, r"train\.bach_size: unknown key \(did you mean 'batch_size'\?\)"),
    ({**BASE, "train": {"batch_size": "big"}}, r"train\.batch_size: expected int, got 'big'"),
    ({**BASE, "train": {"batch_size": 0}}, r"train\.batch_size: must be > 0"),
    ({**BASE, "train": {"mixed_precision": "fp8"}}, r"train\.mixed_precision: expected one of"),
    ({**BASE, "train": {"g_opt": {"betas": [0.5]}}}, r"train\.g_opt\.betas: expected 2 values"),
    ({**BASE, "log": {"wandb": "yes"}}, r"log\.wandb: expected true/false"),
    ({**BASE, "model": {"type": "dcgann"}}, r"model\.type: unknown architecture plugin 'dcgann'.*'dcgan'"),
    ({**BASE, "model": {"type": "dcgan", "widht": 3}}, r"model\.widht: unknown option for architecture 'dcgan'"),
    ({**BASE, "model": {"type": "dcgan", "g_width": 1.5}}, r"model\.g_width: expected int, got 1\.5"),
    ({**BASE, "loss": {"type": "nonsaturating", "label_smoothing": "x"}}, r"loss\.label_smoothing: expected float"),
    ({**BASE, "data": {"source": {"resolution": 3}}}, r"data\.source: expected a mapping with a 'type' key"),
    ({"name": "t"}, r"model: required key is missing"),
    ({**BASE, "name": "a/b"}, r"name: 'a/b' must be"),
])
def test_errors_name_the_dotted_path(tmp_path, raw, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load(tmp_path, raw)
    assert "\n" not in str(e.value)


def test_overrides(tmp_path):
    r = load(tmp_path, BASE, ["train.batch_size=8", "loss.type=nonsaturating", "model.g_width=4",
                              "train.d_opt.betas=[0.0, 0.99]"])
    assert r.train.batch_size == 8 and r.model["g_width"] == 4 and r.train.d_opt.betas == (0.0, 0.99)
    with pytest.raises(ConfigError, match=r"train\.batch_sise: unknown key"):
        load(tmp_path, BASE, ["train.batch_sise=8"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load(tmp_path, BASE, ["train.batch_size"])
    with pytest.raises(ConfigError, match=r"regularizers\.1: no such item \(the list has 1\)"):
        load(tmp_path, {**BASE, "regularizers": [{"type": "r1"}]}, ["regularizers.1.gamma=3"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: recipe file not found"):
        config.load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {type: dcgan\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML \(line \d+, column \d+\)"):
        config.load_recipe(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: a recipe must be a YAML mapping"):
        config.load_recipe(lst)


def test_dump_round_trips(tmp_path):
    r = load(tmp_path, BASE, ["train.kimg=3"])
    again = config.validate(yaml.safe_load(config.dump(r)))
    assert again == r


def test_changing_a_plugin_type_drops_the_previous_types_options(tmp_path):
    raw = {**BASE, "data": {"source": {"type": "digits", "resolution": 32}},
           "loss": {"type": "nonsaturating", "label_smoothing": 0.1},
           "regularizers": [{"type": "r1", "gamma": 2.0, "interval": 4}]}
    # the issue's command: digits' resolution must not reach the webdataset plugin
    r = load(tmp_path, raw, ["data.source.type=webdataset", "data.source.urls=a-{000000..000003}.tar"])
    assert r.data.source == {"type": "webdataset", "urls": "a-{000000..000003}.tar"}
    # keys given on the same command line stay, before or after the type; list items by index too
    r = load(tmp_path, raw, ["loss.drift=0.001", "loss.type=wgan_gp", "loss.gp_weight=5",
                             "regularizers.0.interval=8", "regularizers.0.type=path_length"])
    assert r.loss == {"type": "wgan_gp", "drift": 0.001, "gp_weight": 5.0}
    assert r.regularizers == [{"type": "path_length", "interval": 8}]
    with pytest.raises(ConfigError, match=r"loss\.label_smoothing: unknown option for loss 'wgan_gp'"):
        load(tmp_path, raw, ["loss.label_smoothing=0.2", "loss.type=wgan_gp"])  # then it is the user's own key
    # the same type keeps the block; a whole block given replaces it as before
    assert load(tmp_path, raw, ["loss.type=nonsaturating"]).loss == {"type": "nonsaturating", "label_smoothing": 0.1}
    assert load(tmp_path, raw, ["loss={type: hinge}"]).loss == {"type": "hinge"}
    # not plugin blocks: a schedule curve's keys mean the same for every type
    r = load(tmp_path, {**raw, "schedule": {"lr": {"type": "linear", "end": 0.5}}}, ["schedule.lr.type=cosine"])
    assert r.schedule.lr.end == 0.5


def test_overrides_address_scheduled_values_by_their_paths():
    """Keys of schedule.values are paths with dots and brackets; an override reaches a curve and its fields."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "r3gan.yaml"
    r = config.load_recipe(recipe, ["schedule.values.regularizers[0].gamma={type: linear, start: 1.0, end: 0.1}",
                                    "schedule.values.regularizers[1].gamma.end=0.02",
                                    "schedule.values.g_opt.beta2.start=0.8", "schedule.values.ema_kimg.end=5"])
    v = r.schedule.values
    assert (v["regularizers[0].gamma"].type, v["regularizers[0].gamma"].end) == ("linear", 0.1)
    assert (v["regularizers[1].gamma"].start, v["regularizers[1].gamma"].end) == (0.5, 0.02)  # other fields kept
    assert v["g_opt.beta2"].start == 0.8 and v["ema_kimg"].end == 5
    assert "regularizers[0]" not in v and "g_opt" not in v
