"""One validator for model configs: every entry point refuses a config.json field ctxext reads that is missing
or out of range with one line naming the file, the field and the value, before any model work, and leaves
every file as it was; a model object's config is checked the same way by ``extend()``, a GGUF's as mapped, and
a config ctxext is about to write must build in stock transformers."""

from __future__ import annotations

import copy
import json
import re
import shutil

import pytest
import torch

import ctxext
from ctxext.core.config_check import check_config_fields, check_loadable, check_model_config
from ctxext.errors import CtxextError

from support.cli_harness import expect_refusal
from support.models import make_model


def _set(field, value):
    def edit(config):
        config[field] = value
        if field == "rope_theta" and isinstance(config.get("rope_parameters"), dict):
            config["rope_parameters"]["rope_theta"] = value

    return edit


def _drop(field):
    return lambda config: config.pop(field)


HIDDEN_NOT_MULTIPLE = "The hidden size (66) is not a multiple of the number of attention heads (4)"  # Llama's own rule

# (name, edit of a tiny Llama's config.json, what the one error line says)
BAD_CONFIGS = [
    ("theta-nan", _set("rope_theta", float("nan")), "rope_theta = nan: must be a finite positive number"),
    ("theta-inf", _set("rope_theta", float("inf")), "rope_theta = inf: must be a finite positive number"),
    ("theta-negative", _set("rope_theta", -10000.0), "rope_theta = -10000.0: must be a finite positive number"),
    ("theta-string", _set("rope_theta", "1e4"), "rope_theta = '1e4': must be a finite positive number"),
    ("heads-zero", _set("num_attention_heads", 0), "num_attention_heads = 0: must be a positive whole number"),
    ("head-dim-zero", _set("head_dim", 0), "head_dim = 0: must be a positive whole number"),
    ("kv-heads-not-dividing", _set("num_key_value_heads", 3), "num_key_value_heads = 3: must divide"),
    ("hidden-not-multiple", _set("hidden_size", 66), "transformers refuses this config: " + HIDDEN_NOT_MULTIPLE),
    ("length-string", _set("max_position_embeddings", "8192"), "max_position_embeddings = '8192': must be a positive"),
    ("length-bool", _set("max_position_embeddings", True), "max_position_embeddings = True: must be a positive"),
    ("length-missing", _drop("max_position_embeddings"), "no max_position_embeddings: ctxext reads"),
    ("layers-negative", _set("num_hidden_layers", -2), "num_hidden_layers = -2: must be a positive whole number"),
    ("type-unknown", _set("model_type", "nosuchmodel"), "model_type = 'nosuchmodel': this transformers knows no"),
    ("type-missing", _drop("model_type"), "no model_type"),
    ("type-number", _set("model_type", 7), "model_type = 7: must name the model's architecture"),
    ("rope-section-list", _set("rope_parameters", [1, 2]), "rope_parameters = [1, 2]: must be a JSON object"),
    (
        "rope-factor-zero",
        _set("rope_scaling", {"rope_type": "linear", "factor": 0}),
        "rope_scaling.factor = 0: must be a finite positive number",
    ),
    ("rotary-fraction", _set("partial_rotary_factor", 1.5), "partial_rotary_factor = 1.5: must be a fraction"),
]


@pytest.fixture(scope="module")
def config_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("configs")
    make_model("llama").save_pretrained(root / "model")
    return root


@pytest.fixture
def bad_dir(config_template, tmp_path, request):
    """A workspace holding ``model``: the tiny Llama with the row's edit made to its config.json."""
    _, edit, _ = request.param
    root = tmp_path / "ws"
    shutil.copytree(config_template, root)
    path = root / "model" / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    (root / "data.txt").write_text("Some training text for finetune. " * 200)
    return root


ENTRY_POINTS = {
    "patch": ["patch", "--method", "yarn", "--factor", "2", "{ws}/model"],
    "patch-output": ["patch", "--method", "self-extend", "--factor", "2", "{ws}/model", "--output", "{ws}/out"],
    "info": ["info", "{ws}/model"],
    "eval": ["eval", "{ws}/model", "--tasks", "passkey", "--lengths", "300", "--samples", "1", "--out", "{ws}/out"],
    "tune": ["tune", "{ws}/model", "--target-length", "512", "--samples", "1", "--out", "{ws}/out"],
    "finetune": ["finetune", "{ws}/model", "--factor", "2", "--data", "{ws}/data.txt", "--steps", "1"]
    + ["--out", "{ws}/out"],
}


@pytest.mark.parametrize("bad_dir", BAD_CONFIGS, ids=[row[0] for row in BAD_CONFIGS], indirect=True)
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_config_refused_at_every_entry_point(cli, bad_dir, entry, request):
    message = request.node.callspec.params["bad_dir"][2]
    expect_refusal(cli, bad_dir, ENTRY_POINTS[entry], f"{{ws}}/model/config.json: {message}")


@pytest.mark.parametrize("bad_dir", BAD_CONFIGS[:3], ids=[row[0] for row in BAD_CONFIGS[:3]], indirect=True)
def test_bad_config_refused_by_from_pretrained(bad_dir):
    with pytest.raises(CtxextError, match="config.json: rope_theta"):
        ctxext.from_pretrained(bad_dir / "model")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rope_theta", float("nan"), "rope_parameters.rope_theta = nan"),
        ("max_position_embeddings", 0, "max_position_embeddings = 0"),
        ("num_attention_heads", 0, "num_attention_heads = 0"),
    ],
)
def test_extend_refuses_a_model_whose_config_is_out_of_range(field, value, message):
    model = make_model("llama")
    if field == "rope_theta":
        model.config.rope_parameters["rope_theta"] = value
    else:
        setattr(model.config, field, value)
    before = copy.deepcopy(model.config.to_dict())
    with pytest.raises(CtxextError, match=f"the model's config: {message}"):
        ctxext.extend(model, "yarn", factor=2)
    assert model.config.to_dict() == before  # nothing applied


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: ctxext.extend(None, "yarn", factor=2), "ctxext.extend needs a loaded transformers model"),
        (lambda: ctxext.extend("model", "auto", factor=2), "got str"),
        (lambda: ctxext.restore(3), "ctxext.restore needs a loaded transformers model (a torch module"),
        (lambda: ctxext.is_extended(None), "ctxext.is_extended needs"),
        (
            lambda: ctxext.extend(torch.nn.DataParallel(make_model("llama")), "yarn", factor=2),
            "got DataParallel; pass the model it wraps (its .module)",
        ),
        (
            lambda: ctxext.patch(b"model", "yarn", factor=2),
            "a model path must be text (str or pathlib.Path), got bytes",
        ),
        (lambda: ctxext.from_pretrained(None), "a model path must be text"),
        (lambda: ctxext.unpatch_directory(7), "a model path must be text"),
    ],
    ids=["extend-none", "extend-text", "restore-int", "is-extended-none", "wrapped", "bytes-path", "none-path", "int"],
)
def test_the_python_api_refuses_what_is_no_model_in_one_error(call, message):
    with pytest.raises(CtxextError, match=re.escape(message)):
        call()


def test_a_gguf_config_is_checked_as_transformers_maps_it(family):
    """GGUF metadata reaches ctxext as the config transformers builds from it: the same check, the file named."""
    config = make_model(family).config
    check_model_config(config, "model.gguf")  # every tiny family passes
    config.get_text_config(decoder=True).max_position_embeddings = -1
    with pytest.raises(CtxextError, match=r"^model\.gguf: max_position_embeddings = -1: must be a positive"):
        check_model_config(config, "model.gguf")


def test_gpt2_style_names_are_checked_through_the_class_aliases():
    """GPT-2 keeps the native length as n_positions: the check reads it there (and names it so)."""
    check_config_fields({"model_type": "gpt2", "n_positions": 1024, "n_head": 12, "n_embd": 768}, "gpt2.json")
    with pytest.raises(CtxextError, match="n_positions = 0"):
        check_config_fields({"model_type": "gpt2", "n_positions": 0}, "gpt2.json")


def test_a_config_transformers_cannot_build_is_never_written():
    config = make_model("llama").config.to_dict()
    check_loadable(config, "config.json")
    with pytest.raises(CtxextError, match=r"config\.json: nothing written, the patched config would not load in"):
        check_loadable({**config, "vocab_size": "big"}, "config.json")


def test_remote_code_configs_skip_the_model_type_lookup():
    config = {**make_model("llama").config.to_dict(), "model_type": "my_arch", "auto_map": {"AutoConfig": "a.B"}}
    check_loadable(config, "config.json")
    with pytest.raises(CtxextError, match="rope_theta = 0"):
        check_config_fields({**config, "rope_theta": 0}, "config.json")


# Families that refuse one of the two: Gemma 3's per-layer-type rope takes no attention-level method (plan.py),
# transformers' Phi-3 config takes no rope type but longrope.
FAMILY_METHODS = {"gemma3_text": ("yarn",), "phi3": ("self-extend",)}


def test_every_patched_config_of_the_tiny_families_builds_in_transformers(family, tmp_path):
    """The write-time check passes for real patches of every family, and what it let through loads in stock
    transformers with the patch's rope type."""
    from transformers import AutoConfig

    make_model(family).save_pretrained(tmp_path / "m")
    for method in FAMILY_METHODS.get(family, ("yarn", "self-extend")):
        ctxext.patch(tmp_path / "m", method, factor=2, replace=True)
        config = AutoConfig.from_pretrained(tmp_path / "m").get_text_config(decoder=True)
        rope = config.rope_parameters
        types = {part["rope_type"] for part in rope.values()} if "full_attention" in rope else {rope["rope_type"]}
        assert ("yarn" in types) == (method == "yarn"), types
