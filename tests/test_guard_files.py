"""Nothing lost, nothing half-written: ``unpatch`` restores only a true original, files keep
their mode and owner, interrupted commands leave no staging behind and exit 130 with one
line, and directories are never edited by two commands at once. The CLI runs in
subprocesses; every user file is compared by sha256 and mode before and after."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctxext.checkpoint.atomic import STAGING_MARK
from ctxext.checkpoint.config_json import BACKUP
from ctxext.cli import main


def run_cli(*args) -> subprocess.CompletedProcess:
    """``ctxext ARGS`` in this process (the signal tests below use real subprocesses)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def tree(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``directory``: sha256 (files) and mode."""
    found = {}
    for path in sorted(directory.rglob("*")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        found[str(path.relative_to(directory))] = (digest, stat.S_IMODE(path.stat().st_mode))
    return found


def assert_one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ctxext: error:") and text in lines[0], result.stderr


@pytest.fixture
def patched_dir(tiny_dir):
    (tiny_dir / "config.json").chmod(0o644)
    assert run_cli("patch", "--method", "yarn", "--factor", "4", tiny_dir).returncode == 0
    return tiny_dir


# -- unpatch puts back only the true original ---------------------------------------------
BAD_BACKUPS = {
    "not JSON": (b"{ this is not json", "not valid JSON"),
    "a JSON list": (b"[1, 2, 3]\n", "not a JSON object"),
    "empty": (b"", "not valid JSON"),
    "a patched config": (None, "carries a ctxext record"),
    "another model's config": (None, "does not match the patch record"),
}


@pytest.mark.parametrize("case", sorted(BAD_BACKUPS))
def test_unpatch_refuses_a_backup_that_is_not_the_original(patched_dir, case):
    content, message = BAD_BACKUPS[case]
    backup = patched_dir / BACKUP
    if case == "a patched config":
        content = (patched_dir / "config.json").read_bytes()
    elif case == "another model's config":
        data = json.loads(backup.read_text())
        data["max_position_embeddings"] = 12345
        content = json.dumps(data).encode()
    backup.write_bytes(content)
    before = tree(patched_dir)
    assert_one_line_error(run_cli("unpatch", patched_dir), message)
    assert tree(patched_dir) == before


def test_unpatch_does_not_restore_a_stale_backup_over_a_config_the_user_replaced(patched_dir):
    original = json.loads((patched_dir / BACKUP).read_text())
    original["torch_dtype_note"] = "the user's own new config"
    (patched_dir / "config.json").write_text(json.dumps(original))
    before = tree(patched_dir)
    assert_one_line_error(run_cli("unpatch", patched_dir), "carries no ctxext patch")
    assert tree(patched_dir) == before


def test_a_replace_patch_without_the_backup_never_keeps_a_patched_config_as_the_original(patched_dir):
    original = json.loads((patched_dir / BACKUP).read_text())
    (patched_dir / BACKUP).unlink()
    assert run_cli("patch", "--method", "pi", "--factor", "2", "--replace", patched_dir).returncode == 0
    assert not (patched_dir / BACKUP).exists()
    result = run_cli("unpatch", patched_dir)
    assert result.returncode == 0 and "recorded original" in result.stdout
    restored = json.loads((patched_dir / "config.json").read_text())
    assert "ctxext" not in restored
    assert restored["max_position_embeddings"] == original["max_position_embeddings"]
    assert restored["rope_parameters"].get("rope_type", "default") == "default"


def test_unpatch_of_an_unpatched_directory_and_of_a_gguf_is_refused(tiny_dir, tmp_path):
    before = tree(tiny_dir)
    assert_one_line_error(run_cli("unpatch", tiny_dir), "carries no ctxext patch")
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    assert_one_line_error(run_cli("unpatch", gguf), "never patched in place")
    assert tree(tiny_dir) == before


# -- files keep their mode and owner --------------------------------------------------------
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o664])
def test_patch_then_unpatch_keeps_config_json_mode(tiny_dir, mode):
    (tiny_dir / "config.json").chmod(mode)
    before = tree(tiny_dir)
    assert run_cli("patch", "--method", "ntk", "--factor", "2", tiny_dir).returncode == 0
    assert stat.S_IMODE((tiny_dir / "config.json").stat().st_mode) == mode
    assert stat.S_IMODE((tiny_dir / BACKUP).stat().st_mode) == mode
    assert run_cli("unpatch", tiny_dir).returncode == 0
    assert tree(tiny_dir) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_patch_then_unpatch_keeps_config_json_owner(tiny_dir):
    config = tiny_dir / "config.json"
    os.chown(config, 65534, 65534)
    assert run_cli("patch", "--method", "pi", "--factor", "2", tiny_dir).returncode == 0
    assert (config.stat().st_uid, config.stat().st_gid) == (65534, 65534)
    assert run_cli("unpatch", tiny_dir).returncode == 0
    assert (config.stat().st_uid, config.stat().st_gid) == (65534, 65534)


# -- interrupted writes leave nothing behind ---------------------------------------------------
def _interrupt_when_staging_appears(args, watch: Path, sig: int) -> subprocess.CompletedProcess:
    # a shell's background job inherits SIGINT ignored (Python then never raises KeyboardInterrupt):
    # give the command the default disposition a terminal user's process has
    process = subprocess.Popen(
        [sys.executable, "-m", "ctxext.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if any(STAGING_MARK in name for name in os.listdir(watch)):
            process.send_signal(sig)
            break
        time.sleep(0.001)
    else:
        process.kill()
        pytest.fail("the command ended (or hung) before its staging folder appeared")
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_an_interrupted_patch_output_leaves_no_partial_copy(tiny_dir, tmp_path, sig):
    with open(tiny_dir / "big-weights.bin", "wb") as handle:  # makes the copy take a while
        handle.truncate(1 << 30)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    before = tree(tiny_dir)
    result = _interrupt_when_staging_appears(
        ["patch", "--method", "yarn", "--factor", "2", "--output", outputs / "extended", tiny_dir], outputs, sig
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines() == ["ctxext: interrupted; nothing half-written was left behind"]
    assert os.listdir(outputs) == []
    assert tree(tiny_dir) == before
    assert (
        run_cli("patch", "--method", "yarn", "--factor", "2", "--output", outputs / "extended", tiny_dir).returncode
        == 0
    )  # the rerun works and leaves only its output
    assert os.listdir(outputs) == ["extended"]


def test_output_inside_the_model_directory_is_refused(tiny_dir):
    before = tree(tiny_dir)
    assert_one_line_error(
        run_cli("patch", "--method", "yarn", "--factor", "2", "--output", tiny_dir / "ext", tiny_dir),
        "inside the model directory",
    )
    assert tree(tiny_dir) == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "dca"], "models only, not 'llama'"),
        (["--method", "yarn"], "needs --method dca"),
        (["--method", "auto"], "not auto"),
    ],
)
def test_engine_config_misuse_is_refused_in_one_line_and_changes_nothing(tiny_dir, extra, message):
    before = tree(tiny_dir)
    assert_one_line_error(run_cli("patch", *extra, "--factor", "2", "--engine-config", "sglang", tiny_dir), message)
    assert tree(tiny_dir) == before


# -- the backup proves it is the original -----------------------------------------------------
def test_patch_refuses_to_start_beside_a_backup_it_did_not_write(tiny_dir):
    (tiny_dir / BACKUP).write_text('{"my": "notes"}\n')
    before = tree(tiny_dir)
    assert_one_line_error(run_cli("patch", "--method", "yarn", "--factor", "2", tiny_dir), "ctxext did not write")
    assert tree(tiny_dir) == before


def test_unpatch_refuses_a_swapped_backup_whose_fields_agree(patched_dir):
    backup = patched_dir / BACKUP
    backup.write_text(json.dumps({**json.loads(backup.read_text()), "my": "notes"}))  # same lengths and base
    before = tree(patched_dir)
    assert_one_line_error(run_cli("unpatch", patched_dir), "its sha256 differs from the patch record's")
    assert tree(patched_dir) == before


def test_unpatch_refuses_to_drop_edits_made_after_the_patch(patched_dir):
    config = patched_dir / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "torch_dtype": "bfloat16", "my_field": 1}))
    before = tree(patched_dir)
    assert_one_line_error(run_cli("unpatch", patched_dir), "was edited after the patch (my_field, torch_dtype)")
    assert tree(patched_dir) == before


def test_the_record_carries_the_backups_sha256_and_the_keys_the_patch_added(patched_dir):
    record = json.loads((patched_dir / "config.json").read_text())["ctxext"]
    assert record["original_sha256"] == hashlib.sha256((patched_dir / BACKUP).read_bytes()).hexdigest()
    original = json.loads((patched_dir / BACKUP).read_text())
    assert set(record["added"]) == set(json.loads((patched_dir / "config.json").read_text())) - set(original) - {
        "ctxext"
    }


def test_unpatch_without_the_backup_removes_the_keys_the_patch_added(tiny_dir):
    config = tiny_dir / "config.json"
    original = json.loads(config.read_text())
    original.pop("rope_theta", None)  # a config with the base only inside rope_parameters
    config.write_text(json.dumps(original))
    assert run_cli("patch", "--method", "yarn", "--factor", "2", tiny_dir).returncode == 0
    assert "rope_theta" in json.loads(config.read_text())  # the patch's top-level copy for transformers 4.x
    (tiny_dir / BACKUP).unlink()
    assert run_cli("unpatch", tiny_dir).returncode == 0
    restored = json.loads(config.read_text())
    assert "rope_theta" not in restored and "rope_scaling" not in restored and "ctxext" not in restored


@pytest.mark.parametrize(
    "content",
    [b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 22, b"not a gguf file at all", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16],
)
def test_info_reads_a_damaged_gguf_with_ctxexts_own_reader(tmp_path, content):
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(content)
    before = tree(tmp_path)
    result = run_cli("info", gguf)
    assert_one_line_error(result, str(gguf))
    assert tree(tmp_path) == before
