"""SWAAConfig and recipe validation: every bad field is named in the error."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
import yaml
from conftest import VOCAB, tiny_model

from swaa_train.attention import apply_swaa
from swaa_train.recipe import apply_overrides, build_recipe, load_recipe, resolve_recipe_path, shipped_recipes
from swaa_train.swaa_config import SWAAConfig, normalize_model_swaa_config


def test_per_layer_resolution():
    cfg = SWAAConfig(sliding_window_size=64, keep_first=4, force_fa_decode=[0, 2], non_sliding_layers=[1])
    assert [cfg.layer_window(i) for i in range(4)] == [64, None, 64, 64]
    assert [cfg.layer_fa_decode(i) for i in range(4)] == [True, False, True, False]
    assert SWAAConfig().layer_window(0) is None
    assert SWAAConfig(sliding_window_size=8, force_fa_decode=True).layer_fa_decode(5)


def test_json_round_trip(tmp_path):
    cfg = SWAAConfig(sliding_window_size=2048, keep_first=100, force_fa_decode=True, non_sliding_layers=[5, 1, 1])
    path = cfg.save(tmp_path)
    data = json.loads(path.read_text())
    # The SWAA reference code's field names, nothing else.
    assert data == {
        "sliding_window_size": 2048,
        "keep_first": 100,
        "force_fa_decode": True,
        "non_sliding_layers": [1, 5],
    }
    assert SWAAConfig.load(tmp_path) == cfg


@pytest.mark.parametrize(
    "data, field",
    [
        ({"sliding_window_size": 0}, "sliding_window_size"),
        ({"sliding_window_size": -3}, "sliding_window_size"),
        ({"sliding_window_size": 2.5}, "sliding_window_size"),
        ({"keep_first": -1}, "keep_first"),
        ({"force_fa_decode": "yes"}, "force_fa_decode"),
        ({"force_fa_decode": [1, -2]}, "force_fa_decode"),
        ({"non_sliding_layers": [0, "x"]}, "non_sliding_layers"),
        ({"window": 128}, "window"),
    ],
)
def test_bad_swaa_field_is_named(data, field):
    with pytest.raises(ValueError, match=field):
        SWAAConfig.from_dict(data)


@pytest.fixture
def swaa_warnings(caplog):
    """Warnings of swaa_train.swaa_config, whatever the CLI did to the package logger's propagation."""
    logger = logging.getLogger("swaa_train.swaa_config")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="swaa_train.swaa_config")
    yield caplog
    logger.removeHandler(caplog.handler)


def test_layers_past_the_model_are_ignored_with_a_warning(tmp_path, swaa_warnings):
    # The reference's published settings: every other layer of its deepest model (1..47), run on 36 layers.
    layers = list(range(1, 48, 2))
    (tmp_path / "swaa_config.json").write_text(json.dumps({"sliding_window_size": 8, "non_sliding_layers": layers}))
    cfg = SWAAConfig.load(tmp_path, num_layers=36)
    assert cfg.non_sliding_layers == layers  # the file reads as it was written
    assert [cfg.layer_window(i) for i in range(36)] == [None if i % 2 else 8 for i in range(36)]
    (message,) = {r.getMessage() for r in swaa_warnings.records}
    assert "non_sliding_layers: layer index [37, 39, 41, 43, 45, 47]" in message and "36 layers; ignored" in message
    assert cfg.check_num_layers(40) == {"non_sliding_layers": [41, 43, 45, 47]}
    assert SWAAConfig(8, force_fa_decode=[0, 50]).check_num_layers(36) == {"force_fa_decode": [50]}


def test_layers_past_the_model_change_nothing_in_the_attention():
    ids = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(0))
    logits = []
    for layers in ([1], [1, 5, 7]):  # the tiny model has 3 layers
        model = apply_swaa(tiny_model("qwen3"), SWAAConfig(8, 2, False, layers))
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    full = tiny_model("qwen3")
    with torch.no_grad():
        assert not torch.allclose(full(input_ids=ids).logits, logits[0])  # the window does act


@dataclasses.dataclass
class ReferenceStyleConfig:
    """A settings object shaped like the SWAA reference code's config (fields and a dict() method)."""

    sliding_window_size: int | None = None
    keep_first: int = 0
    force_fa_decode: bool | list = False
    non_sliding_layers: list = dataclasses.field(default_factory=list)

    def dict(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


class AttributesOnly:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.mark.parametrize("make", [ReferenceStyleConfig, AttributesOnly, dict, SWAAConfig])
def test_settings_objects_are_read_by_field_name(make):
    values = dict(sliding_window_size=2048, keep_first=100, force_fa_decode=True, non_sliding_layers=[3, 1])
    assert SWAAConfig.from_dict(make(**values)) == SWAAConfig(2048, 100, True, [1, 3])
    with pytest.raises(ValueError, match="swaa config must be a mapping or an object"):
        SWAAConfig.from_dict(42)


def test_reference_config_object_on_model_config_becomes_json():
    model = tiny_model("qwen3")
    model.config.swaa_config = ReferenceStyleConfig(16, 2, True, [1, 3, 5])  # the reference's way
    with pytest.raises(TypeError, match="not JSON serializable"):
        model.config.to_json_string()
    swaa = normalize_model_swaa_config(model)
    assert swaa == SWAAConfig(16, 2, True, [1, 3, 5])
    assert json.loads(model.config.to_json_string())["swaa_config"] == swaa.to_dict()
    assert normalize_model_swaa_config(tiny_model("qwen3")) is None


def _raw():
    return {
        "model": {"name_or_path": "some/model"},
        "swaa": {"sliding_window_size": 16, "keep_first": 2},
        "data": {"path": "synthetic"},
        "training": {"output_dir": "out", "bf16": False, "use_cpu": True, "max_steps": 3},
    }


def test_recipe_sections_map_onto_dataclasses():
    recipe = build_recipe(_raw())
    assert recipe.model.name_or_path == "some/model"
    assert recipe.swaa.layer_window(0) == 16
    assert recipe.training.max_steps == 3  # TRL's own SFTConfig
    assert recipe.lora.r == 16 and recipe.lora.use_rslora


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("model", "nme_or_path", "x", r"section 'model': unknown key\(s\) \['nme_or_path'\]"),
        ("lora", "r", 0, "lora.r"),
        ("lora", "dropout", 1.5, "lora.dropout"),
        ("lora", "bias", "some", "lora.bias"),
        ("data", "format", "csv", "data.format"),
        ("data", "max_length", -1, "data.max_length"),
        ("data", "synthetic_words", [5], "data.synthetic_words"),
        ("model", "dtype", "int8", "model.dtype"),
        ("swaa", "keep_first", -4, "section 'swaa': keep_first"),
        ("training", "learning_rat", 1e-4, r"section 'training': unknown key\(s\) \['learning_rat'\]"),
    ],
)
def test_bad_recipe_field_is_named(section, key, value, message):
    raw = _raw()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ValueError, match=message):
        build_recipe(raw)


def test_unknown_section_and_missing_sections():
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['optim'\]"):
        build_recipe({**_raw(), "optim": {}})
    raw = _raw()
    del raw["data"]
    with pytest.raises(ValueError, match="section 'data' is required"):
        build_recipe(raw)


def test_overrides():
    raw = apply_overrides(_raw(), ["training.max_steps=7", "swaa.non_sliding_layers=[0, 2]", "lora.r=8"])
    recipe = build_recipe(raw)
    assert recipe.training.max_steps == 7 and recipe.swaa.non_sliding_layers == [0, 2] and recipe.lora.r == 8
    for bad, message in [
        ("training.max_steps", "section.field=value"),
        ("max_steps=3", "section.field=value"),
        ("optim.lr=1", "unknown section 'optim'"),
    ]:
        with pytest.raises(ValueError, match=message):
            apply_overrides(_raw(), [bad])


SHIPPED = ["demo", "qwen3_swa2k", "qwen3_swa2k_reference", "llama31_swa4k"]


def test_every_shipped_recipe_is_tested():
    assert sorted(shipped_recipes()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_parse(name):
    # bf16 cannot be validated without a GPU: switch it off as a CPU user would.
    recipe, raw = load_recipe(name, ["training.bf16=false", "training.use_cpu=true"])
    assert recipe.name == name
    assert raw["model"]["name_or_path"] == recipe.model.name_or_path
    if name == "qwen3_swa2k":
        assert recipe.model.name_or_path == "Qwen/Qwen3-4B-Instruct-2507"
        assert recipe.swaa == SWAAConfig(2048, 100, True, list(range(1, 36, 4)))
        assert (
            recipe.lora.r == 16
            and recipe.lora.use_rslora
            and recipe.lora.target_modules == ["q_proj", "k_proj", "v_proj"]
        )
        assert recipe.training.learning_rate == 1e-4 and recipe.training.packing
    if name == "qwen3_swa2k_reference":  # the values of the reference's SFT script and published adapter
        assert recipe.model.name_or_path == "Qwen/Qwen3-4B-Instruct-2507"
        assert recipe.swaa == SWAAConfig(2048, 100, True, list(range(1, 36, 2)))
        assert (recipe.lora.r, recipe.lora.alpha, recipe.lora.dropout, recipe.lora.use_rslora) == (16, 32, 0.1, True)
        assert (recipe.data.min_length, recipe.data.max_length, recipe.data.judge_filter) == (10, 34000, True)
        t = recipe.training
        assert not t.packing and (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (1, 8)
        assert (t.learning_rate, t.lr_scheduler_type.value, t.warmup_steps) == (1e-4, "linear", 0.05)
        assert (t.num_train_epochs, t.max_grad_norm, t.seed, t.max_length) == (1, 1.0, 0, 34000)
        assert t.train_sampling_strategy == "group_by_length"


def test_recipe_path_resolution(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    assert resolve_recipe_path(str(path)) == path
    with pytest.raises(ValueError, match="no such file.*known: .*demo"):
        resolve_recipe_path("does_not_exist")


def test_overrides_and_recipes_read_exponent_floats_as_numbers():
    """`1e-3` is a string to YAML 1.1 (PyYAML); an optimizer then fails deep inside the trainer."""
    raw = apply_overrides({}, ["training.learning_rate=1e-3", "training.weight_decay=2.5E+1", "model.name_or_path=1e"])
    assert raw["training"] == {"learning_rate": 1e-3, "weight_decay": 25.0}
    assert raw["model"]["name_or_path"] == "1e"


def test_yaml_12_scalars_keep_words_as_strings():
    from swaa_train.recipe import load_yaml

    assert load_yaml("a: no\nb: off\nc: yes\nd: on\ne: true\nf: False\ng: 2026-12-01\nh: 1e-4") == {
        "a": "no",
        "b": "off",
        "c": "yes",
        "d": "on",
        "e": True,
        "f": False,
        "g": "2026-12-01",
        "h": 1e-4,
    }
    # What broke before: `no` read as a boolean ("False is not a valid SaveStrategy").
    recipe = build_recipe(apply_overrides(_raw(), ["training.save_strategy=no", "training.eval_strategy=no"]))
    assert recipe.training.save_strategy == "no" and recipe.training.eval_strategy == "no"


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("export", "merge", "maybe", "export.merge must be true or false, got 'maybe'"),
        ("export", "model_card", 0, "export.model_card must be true or false, got 0"),
        ("model", "trust_remote_code", "yes", "model.trust_remote_code must be true or false"),
        ("memory", "liger_kernel", "sometimes", "memory.liger_kernel"),
        ("lora", "dropout", "abc", "lora.dropout must be a number, got 'abc'"),
        ("lora", "r", 8.5, "lora.r must be an integer, got 8.5"),
        ("training", "learning_rate", "abc", "training.learning_rate must be a number, got 'abc'"),
        ("training", "bf16", "no", "training.bf16 must be true or false or null, got 'no'"),
        ("training", "max_length", "long", "training.max_length must be an integer or null, got 'long'"),
        ("training", "max_steps", 0, "training.max_steps must be a positive number of steps, or -1"),
        ("training", "seed", True, "training.seed must be an integer, got True"),
        ("training", "hub_token", 12345, "training.hub_token must be a string or null, got <hidden>"),
        ("data", "max_samples", 0, "data.max_samples must be a positive int or null, got 0"),
        ("swaa", "keep_first", 16, "swaa.keep_first=16 must be smaller than swaa.sliding_window_size=16"),
    ],
)
def test_field_types_and_cross_field_checks_name_the_field(section, key, value, message):
    raw = _raw()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ValueError) as info:
        build_recipe(raw)
    assert message in str(info.value)


def test_typed_fields_still_take_what_they_declare():
    raw = apply_overrides(
        _raw(),
        ["training.learning_rate=1", "training.resume_from_checkpoint=true", "lora.dropout=0", "export.merge=false"],
    )
    recipe = build_recipe(raw)
    assert recipe.training.learning_rate == 1.0 and recipe.training.resume_from_checkpoint is True
    assert recipe.lora.dropout == 0 and recipe.export.merge is False


def test_max_steps_minus_one_needs_epochs():
    raw = _raw()
    raw["training"].update(max_steps=-1, num_train_epochs=0)
    with pytest.raises(ValueError, match="training.num_train_epochs must be positive when training.max_steps=-1"):
        build_recipe(raw)
    raw["training"]["num_train_epochs"] = 2
    assert build_recipe(raw).training.num_train_epochs == 2


def test_secrets_are_masked_in_mappings_and_text():
    from swaa_train.recipe import MASK, mask_secret_text, mask_secrets

    raw = {
        "training": {"hub_token": "hf_x", "pad_token": "<pad>", "seed": 0, "hub_model_id": "me/m"},
        "data": {"api_key": "k", "my_secret": ["s"], "db_password": "p", "keep_first": 4, "none_token": None},
    }
    masked = mask_secrets(raw)
    assert masked == {
        "training": {"hub_token": MASK, "pad_token": "<pad>", "seed": 0, "hub_model_id": "me/m"},
        "data": {"api_key": MASK, "my_secret": MASK, "db_password": MASK, "keep_first": 4, "none_token": None},
    }
    assert raw["training"]["hub_token"] == "hf_x"  # a copy
    text = 'training:\n  hub_token: hf_x\n  eos_token: <eos>\n{"api_key": "k1", "url": "http://h:1"}\nTOKEN=abc'
    assert mask_secret_text(text) == (
        f'training:\n  hub_token: {MASK}\n  eos_token: <eos>\n{{"api_key": {MASK}, "url": "http://h:1"}}\nTOKEN={MASK}'
    )


def test_broken_yaml_names_the_file_and_the_override(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  name_or_path: x\ndata: {path: [synthetic\n")
    with pytest.raises(ValueError, match=rf"^{path}: not valid YAML: .*\(line 4, column 1\)$"):
        load_recipe(str(path))
    with pytest.raises(ValueError, match=r"^override lora.target_modules=\.\.\.: the value is not valid YAML"):
        apply_overrides(_raw(), ["lora.target_modules=[q_proj, "])
