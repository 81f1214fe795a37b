"""Bad inputs that several commands refuse the same way, written once for their guard tests.

``BAD_MODELS``: model arguments (paths under a workspace ``{ws}``) that ``ctxext eval`` and
``ctxext finetune`` both refuse before the weights load, with the message each refusal holds.
A guard test adds the rows of its own command (``wrong_vocabulary`` builds the one whose message
names the vocabulary size) and builds the files the rows name with ``plant_bad_models``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BAD_MODELS = [
    ("{ws}/missing", "{ws}/missing: no such file or directory"),
    ("{ws}/noconfig", "{ws}/noconfig: no config.json in this directory"),
    ("{ws}/notes.txt", "{ws}/notes.txt: expected a model directory or a .gguf file"),
    ("{ws}/badconfig", "{ws}/badconfig/config.json: not valid JSON"),
    ("{ws}/fake.gguf", "{ws}/fake.gguf: cannot read the model's config"),
    ("{ws}/gpt2", "model type 'gpt2' has no rotary"),
    ("{ws}/notokenizer", "{ws}/notokenizer: cannot load its tokenizer"),
]


def wrong_vocabulary(vocab_size: int) -> tuple[str, str]:
    """The row of ``{ws}/othervocab``: a tokenizer with ids beyond the model's vocabulary of ``vocab_size``."""
    return (
        "{ws}/othervocab",
        f"beyond the model's vocabulary of {vocab_size}: the tokenizer does not belong to this model",
    )


def plant_bad_models(root: Path, tokenizer, gpt2, vocab_size: int) -> None:
    """The files the rows of ``BAD_MODELS`` and ``wrong_vocabulary(vocab_size)`` name, beside ``root / "model"``
    (a model directory with its tokenizer): a user file (``notes.txt``), a folder without config.json, a
    config that is not JSON, a model without tokenizer, a config of a smaller vocabulary, a GPT-2 (``gpt2``,
    a GPT2Config, with ``tokenizer``) and a file that only calls itself GGUF."""
    from transformers import GPT2LMHeadModel

    (root / "notes.txt").write_text("a user file")
    (root / "noconfig").mkdir()
    (root / "noconfig" / "weights.bin").write_bytes(b"\0" * 16)
    shutil.copytree(root / "model", root / "badconfig")
    (root / "badconfig" / "config.json").write_text("{not json")
    (root / "notokenizer").mkdir()
    shutil.copy(root / "model" / "config.json", root / "notokenizer")
    shutil.copy(root / "model" / "model.safetensors", root / "notokenizer")
    shutil.copytree(root / "model", root / "othervocab")  # a tokenizer whose ids the embedding does not have
    config = json.loads((root / "othervocab" / "config.json").read_text())
    (root / "othervocab" / "config.json").write_text(json.dumps({**config, "vocab_size": vocab_size}))
    GPT2LMHeadModel(gpt2).save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    (root / "fake.gguf").write_bytes(b"GGUF but not really")
