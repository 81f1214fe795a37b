"""``ctxext finetune`` refuses bad input with one line, before the model loads, files untouched.

As in ``test_guard_eval.py`` (with the same fork server and checks, ``support/cli_harness.py``), every
bad input runs the command line in its own process, in a workspace of user files compared before
and after, on a model directory whose weights file is corrupt: a check that ran after the load
would fail with the load's error instead. Nothing may be created either: no --out folder, no
staging folder beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch
from transformers import GPT2Config

import ctxext
from ctxext.checkpoint.atomic import lock_directory

from support import bad_inputs
from support.cli_harness import break_weights, expect_refusal, with_flags
from support.models import WORDS, make_model, word_tokenizer

pytest.importorskip("peft")

CORPUS = " ".join(WORDS * 40)  # 680 words, one token each


@pytest.fixture(scope="session")
def finetune_template(tmp_path_factory):
    """User files: a tiny model with corrupt weights (``model``), the same with good weights (``good``),
    broken variants, training data of every kind, folders that are not fine-tune runs."""
    root = tmp_path_factory.mktemp("finetune-template") / "ws"
    root.mkdir()
    make_model("llama").save_pretrained(root / "good")
    word_tokenizer().save_pretrained(root / "good")
    shutil.copytree(root / "good", root / "model")
    break_weights(root / "model")
    (root / "corpus.txt").write_text(CORPUS)
    (root / "corpus.jsonl").write_text("\n".join(json.dumps({"text": " ".join(WORDS * 10)}) for _ in range(4)) + "\n")
    (root / "short.txt").write_text(" ".join(WORDS))
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n\t\n")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 50)
    (root / "latin1.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    (root / "bad.jsonl").write_text('{"text": "the sky"}\nnot json\n')
    (root / "notext.jsonl").write_text('{"body": "the sky is blue"}\n')
    (root / "nonstring.jsonl").write_text('{"text": 5}\n{"text": null}\n')
    (root / "not-a-dataset").mkdir()
    (root / "not-a-dataset" / "file.txt").write_text("text")
    user = root / "user"
    (user / "sub").mkdir(parents=True)
    (user / "adapter_config.json").write_text('{"mine": true}\n')
    (user / "notes.md").write_text("# notes\n")
    os.chmod(user / "notes.md", 0o600)
    (user / "sub" / "keep.txt").write_text("keep me")
    (root / "readonly").mkdir()
    gpt2 = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, bos_token_id=0, eos_token_id=0)
    bad_inputs.plant_bad_models(root, word_tokenizer(), gpt2, vocab_size=8)
    ctxext.patch_directory(root / "good", "pi", factor=2, output=root / "patched")
    break_weights(root / "patched")
    return root


@pytest.fixture
def ws(finetune_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(finetune_template, root, symlinks=True)
    os.chmod(root / "readonly", 0o555)
    yield root
    os.chmod(root / "readonly", 0o755)


def finetune_args(*extra, model="{ws}/model", data="{ws}/corpus.txt", out="{ws}/out"):
    """Valid flags (target 256 tokens, windows of 32, held-out 64) unless ``extra`` changes them."""
    return [
        "finetune",
        model,
        "--factor",
        "4",
        "--data",
        data,
        "--steps",
        "2",
        "--seq-len",
        "32",
        "--eval-length",
        "64",
        "--out",
        out,
        *extra,
    ]


BAD_EXTENSION = [
    (["--factor", "1"], "factor must be greater than 1"),
    (["--factor", "0.5"], "factor must be greater than 1"),
    (["--factor", "nan"], "factor must be a finite number"),
    (["--factor", "x"], "argument --factor: invalid float value: 'x'"),
    (["--target-length", "64"], "argument --target-length: not allowed with argument --factor"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--method", "longrope"], "longrope needs long_factor"),
    (["--original-length", "0"], "original length must be a positive integer, got 0"),
    (["--original-length", "-5"], "original length must be a positive integer, got -5"),
    (["--seq-len", "512"], "seq-len 512 is above the target length 256"),
    (["--seq-len", "0"], "seq_len must be a positive integer, got 0"),
    (["--eval-length", "0"], "eval_length must be a whole number of at least 1, got 0"),
    (["--eval-length", "-5"], "eval_length must be a whole number of at least 1, got -5"),
]


@pytest.mark.parametrize("extra,message", BAD_EXTENSION)
def test_bad_extension_or_lengths_are_refused_before_the_model_loads(cli, ws, extra, message):
    expect_refusal(cli, ws, finetune_args(*extra), message)


BAD_TARGETS = [
    ("64", "target length 64 must be above the original length 64"),
    ("32", "target length 32 must be above the original length 64"),
    ("100", "seq-len 128 is above the target length 100"),
]


@pytest.mark.parametrize("target,message", BAD_TARGETS)
def test_bad_target_length_is_refused_before_the_model_loads(cli, ws, target, message):
    args = finetune_args("--target-length", target, "--seq-len", "128")
    args.pop(args.index("--factor") + 1)
    args.remove("--factor")
    expect_refusal(cli, ws, args, message)


BAD_DATA = [
    ("{ws}/missing.txt", [], "data {ws}/missing.txt: no such file or directory"),
    ("{ws}/empty.txt", [], "data {ws}/empty.txt: no text in it"),
    ("{ws}/blank.txt", [], "data {ws}/blank.txt: no text in it"),
    ("{ws}/latin1.txt", [], "data {ws}/latin1.txt: not UTF-8 text"),
    ("{ws}/latin1.jsonl", [], "data {ws}/latin1.jsonl: not UTF-8 text"),
    ("{ws}/bad.jsonl", [], "data {ws}/bad.jsonl:2: expected a JSON object with a 'text' field"),
    ("{ws}/notext.jsonl", [], "data {ws}/notext.jsonl:1: expected a JSON object with a 'text' field"),
    ("{ws}/nonstring.jsonl", [], "data {ws}/nonstring.jsonl: no text in it"),
    ("{ws}/not-a-dataset", [], "data {ws}/not-a-dataset: not a dataset saved with save_to_disk"),
    ("{ws}/short.txt", [], "the data has 17 tokens, too few for seq-len 32 plus a held-out evaluation window of 64"),
    ("{ws}/corpus.txt", ["--eval-length", "1000"], "the data has 680 tokens, too few for seq-len 32 plus a held-out"),
    ("{ws}/short.txt", ["--no-eval"], "the training data has 17 tokens, fewer than seq-len 32 + 1"),
    (
        "{ws}/corpus.jsonl",
        ["--seq-len", "256", "--eval-length", "512"],
        "the data has 683 tokens, too few for seq-len 256",
    ),
]


@pytest.mark.parametrize("data,extra,message", BAD_DATA)
def test_bad_training_data_is_refused_before_the_model_loads(cli, ws, data, extra, message):
    if data.endswith("not-a-dataset"):
        pytest.importorskip("datasets")
    expect_refusal(cli, ws, finetune_args(*extra, data=data), message)


BAD_TRAINING = [
    (["--steps", "0"], "steps must be a positive integer, got 0"),
    (["--steps", "-1"], "steps must be a positive integer, got -1"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--lr", "0"], "lr must be positive, got 0.0"),
    (["--lr=-1e-3"], "lr must be positive, got -0.001"),
    (["--lr", "nan"], "lr must be positive, got nan"),
    (["--warmup-steps", "-1"], "warmup_steps must be >= 0"),
    (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    (["--grad-accum", "0"], "grad_accum must be a positive integer, got 0"),
    (["--lora-r", "0"], "lora_r must be a positive integer, got 0"),
    (["--save-every", "-1"], "save_every must be a whole number of at least 0, got -1"),
    (["--recipe", "pose"], "unknown recipe 'pose' (valid: longlora-lite, pi-lora, pose-lora)"),
    (["--precision", "fp16"], "argument --precision: invalid choice: 'fp16'"),
    (["--seed", "x"], "argument --seed: invalid int value: 'x'"),
]


@pytest.mark.parametrize("extra,message", BAD_TRAINING)
def test_bad_training_settings_are_refused_before_the_model_loads(cli, ws, extra, message):
    expect_refusal(cli, ws, finetune_args(*extra), message)


BAD_OUT = [
    ("{ws}/user", [], "{ws}/user: output already exists and is not an empty directory"),
    ("{ws}/model", [], "{ws}/model: output already exists and is not an empty directory"),
    (".", [], ".: output already exists and is not an empty directory"),
    ("{ws}/notes.txt", [], "{ws}/notes.txt: output already exists and is not an empty directory"),
    ("{ws}/missing/out", [], "{ws}/missing: no such directory for the output"),
    ("{ws}/readonly/out", [], "{ws}/readonly: directory is read-only"),
    ("{ws}/user", ["--resume"], "{ws}/user: no checkpoint to resume from"),
    ("{ws}/missing", ["--resume"], "{ws}/missing: no checkpoint to resume from"),
]


@pytest.mark.parametrize("out,extra,message", BAD_OUT)
def test_out_that_is_not_a_new_folder_or_a_run_is_refused(cli, ws, out, extra, message):
    expect_refusal(cli, ws, finetune_args(*extra, out=out), message)


BAD_MODELS = [
    *bad_inputs.BAD_MODELS,
    bad_inputs.wrong_vocabulary(8),
    ("{ws}/patched", "model is already extended with 'pi'; pass replace=True (--replace)"),
]


@pytest.mark.parametrize("model,message", BAD_MODELS)
def test_bad_model_is_refused_before_its_weights_load(cli, ws, model, message):
    expect_refusal(cli, ws, finetune_args(model=model), message)


# -- --resume: a checkpoint made with other settings, or no steps left ----------------------------

RUN_ARGS = [
    "finetune",
    "model",
    "--factor",
    "4",
    "--data",
    "corpus.txt",
    "--steps",
    "2",
    "--seq-len",
    "32",
    "--eval-length",
    "64",
    "--save-every",
    "2",
    "--out",
    "run",
]


@pytest.fixture(scope="session")
def run_template(cli, finetune_template, tmp_path_factory):
    """A finished fine-tune with a checkpoint at step 2 (relative paths), whose model weights were corrupted
    afterwards: a resume that loaded the model would fail."""
    root = tmp_path_factory.mktemp("finetune-run") / "ws"
    root.mkdir()
    shutil.copytree(finetune_template / "good", root / "model")
    shutil.copy(finetune_template / "corpus.txt", root)
    (root / "other.txt").write_text(" ".join(WORDS * 30))
    result = cli.run(*RUN_ARGS, cwd=root)
    assert result.rc == 0, result.stderr
    assert (root / "run" / "checkpoints" / "step-00000002" / "settings.json").is_file()
    break_weights(root / "model")
    return root


@pytest.fixture
def run_ws(run_template, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(run_template, root)
    return root


def resume_args(**changes) -> list[str]:
    return with_flags([*RUN_ARGS, "--resume"], **{"steps": "4", **changes})


OTHER_SETTINGS = [
    ({"lr": "1e-3"}, "it was made with other settings (recipe.lr 0.0002 -> 0.001)"),
    ({"seed": "1"}, "it was made with other settings (seed 0 -> 1)"),
    ({"factor": "2"}, "it was made with other settings (extension.factor 4.0 -> 2.0"),
    ({"precision": "fp32"}, "it was made with other settings (precision 'auto' -> 'fp32')"),
    ({"eval_length": "32"}, "it was made with other settings (eval_length 64 -> 32)"),
    ({"data": "other.txt"}, "it was made with other settings (data_tokens 680 -> 510)"),
    ({"lora_r": "4"}, "it was made with other settings (recipe.lora_r 8 -> 4)"),
    ({"recipe": "pi-lora"}, "it was made with other settings (extension.method 'yarn' -> 'pi'"),
    ({"steps": "2"}, "the last checkpoint is at step 2; ask for more steps than that to resume"),
]


@pytest.mark.parametrize("changes,message", OTHER_SETTINGS)
def test_resume_with_other_settings_is_refused_before_the_model_loads(cli, run_ws, changes, message):
    expect_refusal(cli, run_ws, resume_args(**changes), message)


def test_a_damaged_checkpoint_is_refused_with_one_line(cli, run_ws):
    (run_ws / "run" / "checkpoints" / "step-00000002" / "settings.json").write_text("{")
    expect_refusal(cli, run_ws, resume_args(), "step-00000002: its settings.json is unreadable")


def test_resume_with_the_same_settings_continues(cli, run_ws, finetune_template):
    shutil.copy(finetune_template / "good" / "model.safetensors", run_ws / "model")  # good weights again
    result = cli.run(*resume_args(), cwd=run_ws)
    assert result.rc == 0, result.stderr
    assert sorted(p.name for p in (run_ws / "run" / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def test_an_out_another_finetune_is_writing_is_refused(cli, ws):
    """Two finetunes into one --out at once: the second is refused before its model loads (corrupt weights
    here), and the first's folder is left as it was."""
    (ws / "out").mkdir()
    held = lock_directory(ws / "out")
    try:
        expect_refusal(cli, ws, finetune_args(), "{ws}/out: another ctxext command is writing here")
    finally:
        os.close(held)


def test_a_model_that_fails_to_load_leaves_nothing_behind(cli, ws):
    """The control of every test above: valid flags on the corrupt weights get the load's own one-line error,
    so the refusals above happened before the load; and nothing is created, not even the --out folder."""
    result = expect_refusal(cli, ws, finetune_args(), "{ws}/model: cannot load the model")
    assert "header" in result.stderr  # safetensors' own complaint about the corrupt file


# -- the Python API: the same checks before a model is loaded or touched ---------------------------


@pytest.mark.parametrize(
    "device,message",
    [
        ("cuda", "--device cuda: no cuda device is available"),
        ("gpu", "--device 'gpu': not a torch device"),
        ("meta", "--device meta holds no data"),
    ],
)
def test_finetune_api_bad_device_is_refused_before_the_model_loads(
    finetune_template, tmp_path, monkeypatch, device, message
):
    from ctxext.recipes import train

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setattr(train, "load_weights", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ctxext.CtxextError, match=message):
        train.finetune(
            str(finetune_template / "good"),
            finetune_template / "corpus.txt",
            tmp_path / "out",
            factor=4,
            steps=1,
            seq_len=32,
            eval_length=64,
            device=device,
            progress=False,
        )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data,kwargs,message",
    [
        (torch.rand(500), {}, "token ids must be a tensor of whole numbers, got torch.float32"),
        (torch.full((500,), -1), {}, "token ids must not be negative, got -1"),
        (torch.arange(500) % 200, {}, "the training data has token id 199, beyond the model's vocabulary of 128"),
        (torch.arange(90) % 50, {}, "the data has 90 tokens, too few for seq-len 32 plus a held-out evaluation window"),
        ("{corpus}", {}, "reading text data needs a tokenizer"),
        (torch.arange(500) % 50, {"keep_checkpoints": 0}, "keep_checkpoints must be a whole number of at least 1"),
        (torch.arange(500) % 50, {"seed": 1.5}, "seed must be a whole number, got 1.5"),
        (torch.arange(500) % 50, {"factor": 2}, "seq-len 256 is above the target length 128"),
    ],
)
def test_finetune_api_leaves_a_loaded_model_untouched_when_it_refuses(
    finetune_template, tmp_path, data, kwargs, message
):
    """A loaded model is extended only after every check passed: a refusal leaves it as it was."""
    from ctxext.recipes import finetune

    model = make_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    data = str(finetune_template / "corpus.txt") if data == "{corpus}" else data
    options = {"factor": 4, "steps": 1, "seq_len": 32, "eval_length": 64, "progress": False, **kwargs}
    if "factor" in kwargs:
        options["seq_len"] = 256
    with pytest.raises(ctxext.CtxextError, match=re.escape(message)):
        finetune(model, data, tmp_path / "out", **options)
    assert not ctxext.is_extended(model) and model.config.to_dict() == config
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not (tmp_path / "out").exists()


def test_the_bad_inputs_are_distinct():
    total = (
        len(BAD_EXTENSION)
        + len(BAD_TARGETS)
        + len(BAD_DATA)
        + len(BAD_TRAINING)
        + len(BAD_OUT)
        + len(BAD_MODELS)
        + len(OTHER_SETTINGS)
        + 1
        + 3
        + 8
    )  # + damaged checkpoint, API devices, API data
    cases = [tuple(e) for e, _ in BAD_EXTENSION + BAD_TRAINING] + [(d, *e) for d, e, _ in BAD_DATA]
    cases += [(o, *e) for o, e, _ in BAD_OUT]
    assert len(set(cases)) == len(cases)
    assert total >= 75
