"""The stock-reload promise on the real transformers 4.x: what ``ctxext patch`` writes under transformers 5 is
loaded by stock ``AutoModelForCausalLM.from_pretrained`` in a venv with the newest transformers 4.x and no ctxext
(``make test-transformers4`` builds ``.venv-transformers4``), for every rope method on every tiny family.

A probe script (``transformers4/stock_probe.py``) prints each layer type's rope type, attention scaling and cos/sin
table at positions up to the target length, four times the native one; the same script in this venv with
``--ctxext`` gives the reference (``ctxext.from_pretrained``, transformers 5). Where ``ctxext.serving`` predicts
that transformers 4.x reproduces the extension, every table and scaling must match the reference; where it
predicts it does not (a rope type of ctxext's own), some must differ. Marked ``transformers4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ctxext
from ctxext.serving import engine_view

from support.cli_harness import OFFLINE
from support.method_cases import ROPE_METHODS
from support.models import FAMILIES, NATIVE, make_model, unsupported
from support.serving import FACTOR, PARAMS
from support.venv_probe import read_probe

pytestmark = pytest.mark.transformers4
ROOT = Path(__file__).resolve().parent.parent
PYTHON4 = ROOT / ".venv-transformers4" / "bin" / "python"
PROBE = Path(__file__).resolve().parent / "transformers4" / "stock_probe.py"
POSITIONS = [0, 1, 31, NATIVE - 1, NATIVE, 100, 200, NATIVE * FACTOR - 1]

# name -> (family, method, method parameters, original length): every rope method on every family that takes it,
# and on Llama the parameters away from their defaults and a native length below max_position_embeddings
CASES = {
    f"{family}-{method}": (family, method, PARAMS.get(method, {}), None)
    for family in FAMILIES
    for method in ROPE_METHODS
    if unsupported(family, method) is None
}
CASES.update(
    {
        "llama-yarn-params": ("llama", "yarn", {"beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.2}, None),
        "llama-yarn-original-32": ("llama", "yarn", {}, 32),
        "llama-pi-original-32": ("llama", "pi", {}, 32),
        "llama-ntk-original-32": ("llama", "ntk", {}, 32),
        "llama-llama3-params": ("llama", "llama3", {"low_freq_factor": 2.0, "high_freq_factor": 8.0}, None),
        "llama-dynamic-ntk-alpha-2": ("llama", "dynamic-ntk", {"alpha": 2.0}, None),
        "phi3-longrope-attention-factor": ("phi3", "longrope", {"long_factor": 2.0, "attention_factor": 1.1}, None),
        "llama-longrope-lists": (
            "llama",
            "longrope",
            {"long_factor": [1.0 + i / 2 for i in range(8)], "short_factor": 1.5, "attention_factor": 1.1},
            None,
        ),
    }
)


def _without_ctxext() -> dict[str, str]:
    """This process's environment less PYTHONPATH, which may point at ctxext's source."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _probe(python: Path, paths: list[Path], *flags: str) -> dict[str, dict]:
    env = {**os.environ, **OFFLINE} if flags else {**_without_ctxext(), **OFFLINE}
    return read_probe(python, PROBE, paths, json.dumps(POSITIONS), *flags, env=env)


@pytest.fixture(scope="module")
def readings(tmp_path_factory):
    """name -> (written config.json, what transformers 4.x built, what ctxext builds under transformers 5, what stock
    transformers 5 builds)."""
    if not PYTHON4.exists():
        pytest.skip(f"{PYTHON4} is missing: `make test-transformers4` builds it")
    root = tmp_path_factory.mktemp("transformers4")
    for family in FAMILIES:
        make_model(family).save_pretrained(root / family)
    paths = {}
    for name, (family, method, params, original) in CASES.items():
        paths[name] = root / name
        ctxext.patch_directory(
            root / family, method, factor=FACTOR, original_length=original, output=paths[name], **params
        )
    old = _probe(PYTHON4, list(paths.values()))
    new = _probe(Path(sys.executable), list(paths.values()), "--ctxext")
    stock = _probe(Path(sys.executable), list(paths.values()))
    return {
        name: (json.loads((path / "config.json").read_text()), old[str(path)], new[str(path)], stock[str(path)])
        for name, path in paths.items()
    }


def _same(old: dict, new: dict) -> bool:
    return (
        old["rope_type"] == new["rope_type"]
        and abs(old["attention_scaling"] - new["attention_scaling"]) < 1e-6
        and all(
            torch.allclose(torch.tensor(old[k]), torch.tensor(new[k]), atol=1e-5, rtol=1e-5) for k in ("cos", "sin")
        )
    )


def test_the_venv_holds_transformers_4_and_no_ctxext(readings):
    versions = {old["transformers"] for _, old, _, _ in readings.values() if old["loads"]}
    assert len(versions) == 1 and next(iter(versions)).startswith("4."), versions
    run = subprocess.run([str(PYTHON4), "-c", "import ctxext"], capture_output=True, env=_without_ctxext(), cwd="/")
    assert run.returncode != 0


@pytest.mark.parametrize("name", CASES)
def test_transformers4_reads_what_serving_predicts(readings, name):
    config, old, new, _ = readings[name]
    predicted = engine_view(config)["transformers-4"]
    assert old["loads"] == predicted.loads, old.get("error")
    assert new["loads"], new.get("error")
    if not old["loads"]:
        return
    assert set(old["rotary"]) == set(new["rotary"])
    full = old["rotary"]["full_attention"]
    assert full["rope_type"] == predicted.rope_type, (full["rope_type"], predicted)
    assert old["rope_scaling"].get("factor") == predicted.factor or predicted.factor is None
    same = {layer: _same(old["rotary"][layer], new["rotary"][layer]) for layer in new["rotary"]}
    assert all(same.values()) == predicted.extended, (same, predicted.note, old["warnings"])


@pytest.mark.parametrize("name", CASES)
def test_stock_transformers5_reads_the_same_as_ctxext(readings, name):
    """The fields written for transformers 4.x (rope_scaling replaces rope_parameters in 5.x) change nothing there."""
    config, _, new, stock = readings[name]
    if not engine_view(config)["transformers-5"].extended:
        assert not stock["loads"]
        return
    assert stock["loads"], stock.get("error")
    assert all(_same(stock["rotary"][layer], new["rotary"][layer]) for layer in new["rotary"])
