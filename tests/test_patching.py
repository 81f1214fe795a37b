"""The library calls behind ``ctxext patch`` / ``unpatch`` and the one atomic folder writer,
tested without argparse."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from transformers import AutoConfig

import ctxext
from ctxext.checkpoint.atomic import STAGING_MARK, atomic_write, staged
from ctxext.checkpoint.config_json import BACKUP

from support.models import make_model


def modes(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.name: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in sorted(directory.iterdir()) if p.is_file()
    }


def test_patch_directory_in_place_and_unpatch_give_the_original_back(tiny_dir):
    (tiny_dir / "config.json").chmod(0o644)
    before = modes(tiny_dir)
    result = ctxext.patch_directory(tiny_dir, "yarn", factor=4)
    assert result.path == tiny_dir and result.stock_loadable and result.diff is None
    assert result.record.method == "yarn" and result.record.target_length == 4 * result.record.original_length
    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.rope_parameters["rope_type"] == "yarn" and config.ctxext["method"] == "yarn"
    assert stat.S_IMODE((tiny_dir / BACKUP).stat().st_mode) == 0o644
    assert "restored" in ctxext.unpatch_directory(tiny_dir)
    assert modes(tiny_dir) == before  # bytes and modes


def test_patch_directory_dry_run_writes_nothing_and_returns_the_diff(tiny_dir):
    before = modes(tiny_dir)
    result = ctxext.patch_directory(tiny_dir, "pi", factor=2, dry_run=True)
    assert '"rope_type": "linear"' in result.diff and result.diff.startswith("--- config.json")
    assert modes(tiny_dir) == before


def test_patch_into_an_output_copy_leaves_the_source_alone(tiny_dir, tmp_path):
    before = modes(tiny_dir)
    result = ctxext.patch(tiny_dir, "dca", factor=2, output=tmp_path / "out")
    assert result.path == tmp_path / "out" and not result.stock_loadable
    assert json.loads((tmp_path / "out" / "config.json").read_text())["ctxext"]["method"] == "dca"
    assert modes(tiny_dir) == before
    assert not [p for p in tmp_path.iterdir() if STAGING_MARK in p.name]


def test_patch_refuses_an_output_inside_the_model_directory(tiny_dir):
    with pytest.raises(ctxext.CtxextError, match="inside the model directory"):
        ctxext.patch(tiny_dir, "yarn", factor=2, output=tiny_dir / "extended")
    assert not (tiny_dir / "extended").exists()


def test_replace_patches_the_original_again(tiny_dir):
    ctxext.patch_directory(tiny_dir, "yarn", factor=4)
    with pytest.raises(ctxext.CtxextError, match="already patched with 'yarn'"):
        ctxext.patch_directory(tiny_dir, "pi", factor=2)
    ctxext.patch_directory(tiny_dir, "pi", factor=2, replace=True)
    data = json.loads((tiny_dir / "config.json").read_text())
    assert data["ctxext"]["replaced"]["rope_parameters"].get("rope_type", "default") == "default"
    assert data["rope_parameters"]["rope_type"] == "linear"


def test_unpatch_of_an_unpatched_directory_is_refused(tiny_dir):
    with pytest.raises(ctxext.CtxextError, match="carries no ctxext patch"):
        ctxext.unpatch_directory(tiny_dir)


def test_a_gguf_needs_an_output_and_no_dry_run(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ctxext.CtxextError, match="new directory"):
        ctxext.patch(gguf, "yarn", factor=2)
    with pytest.raises(ctxext.CtxextError, match="dry run"):
        ctxext.patch(gguf, "yarn", factor=2, output=tmp_path / "out", dry_run=True)
    with pytest.raises(ctxext.CtxextError, match="GGUF"):
        ctxext.patch_directory(gguf, "yarn", factor=2)


def test_staged_folder_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with staged(target) as staging:
            (staging / "half.bin").write_bytes(b"x" * 10)
            raise KeyboardInterrupt  # as Ctrl-C (or SIGTERM under the CLI) would
    assert list(tmp_path.iterdir()) == []
    with staged(target) as staging:
        (staging / "whole.bin").write_bytes(b"y")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "whole.bin").read_bytes() == b"y"
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()


def _interrupt_right_after(function):
    """``function`` that does its work, then raises KeyboardInterrupt: a Ctrl-C the instant it returns."""

    def interrupted(*args, **kwargs):
        function(*args, **kwargs)
        raise KeyboardInterrupt

    return interrupted


def test_a_ctrl_c_right_after_a_temporary_is_created_leaves_nothing(tmp_path, monkeypatch):
    from ctxext.checkpoint import atomic

    monkeypatch.setattr(atomic.os, "mkdir", _interrupt_right_after(os.mkdir))
    with pytest.raises(KeyboardInterrupt):
        with staged(tmp_path / "out"):
            pass
    monkeypatch.undo()
    monkeypatch.setattr(atomic, "_new_temporary_file", _interrupt_right_after(atomic._new_temporary_file))
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "config.json", b"{}")
    with pytest.raises(KeyboardInterrupt):
        with atomic.new_file(tmp_path / "model.gguf"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_staged_replace_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "merged"
    target.mkdir()
    (target / "old.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with staged(target, replace=True) as staging:
            (staging / "new.bin").write_bytes(b"new")
            raise RuntimeError("disk full")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"] and (target / "old.bin").exists()
    with staged(target, replace=True) as staging:
        (staging / "new.bin").write_bytes(b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["merged"] and [p.name for p in target.iterdir()] == ["new.bin"]


def test_staged_merge_renames_each_item_into_an_existing_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with staged(out, merge=True) as staging:
        (staging / "adapter.bin").write_bytes(b"a")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.bin", "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "out"]


def test_atomic_write_keeps_a_files_mode_and_gives_new_files_the_usual_one(tmp_path):
    existing = tmp_path / "config.json"
    existing.write_text("{}")
    existing.chmod(0o640)
    atomic_write(existing, b'{"a": 1}')
    assert existing.read_bytes() == b'{"a": 1}' and stat.S_IMODE(existing.stat().st_mode) == 0o640
    fresh = tmp_path / "new.json"
    atomic_write(fresh, b"{}")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~_umask()
    copy = tmp_path / "copy.json"
    atomic_write(copy, b"{}", like=existing)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "copy.json", "new.json"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_second_writer_on_the_same_directory_is_refused(tiny_dir):
    from ctxext.checkpoint.atomic import exclusive

    before = modes(tiny_dir)
    with exclusive(tiny_dir):
        with pytest.raises(ctxext.CtxextError, match="another ctxext command is writing here"):
            ctxext.patch_directory(tiny_dir, "yarn", factor=2)
        assert modes(tiny_dir) == before
    ctxext.patch_directory(tiny_dir, "yarn", factor=2)  # free again once the first one is done
    assert sorted(p.name for p in tiny_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    "family, method, native_fields, written",
    [
        ("gpt_neox", "ntk", {"rotary_emb_base": 10000}, {"rotary_emb_base": 160000.0, "rope_theta": 160000.0}),
        ("llama", "longrope", {}, {"original_max_position_embeddings": 64}),
        ("phi3", "longrope", {}, {"original_max_position_embeddings": 64}),
    ],
    ids=["gpt-neox-base", "llama-longrope", "phi3-longrope"],
)
def test_the_fields_written_for_transformers4_come_off_with_the_patch(tmp_path, family, method, native_fields, written):
    """GPT-NeoX's rotary_emb_base, longrope's top-level native length, Phi-3's three-field rope_scaling: written
    for transformers 4.x (tests/test_transformers4.py), taken off by unpatch with and without the kept original."""
    directory = tmp_path / family
    make_model(family).save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **native_fields}, indent=2))
    original = (directory / "config.json").read_bytes()
    params = {"long_factor": 2.0} if method == "longrope" else {}
    for keep_backup in (True, False):
        ctxext.patch_directory(directory, method, factor=4, **params)
        patched = json.loads((directory / "config.json").read_text())
        assert {k: patched.get(k) for k in written} == written
        if family == "phi3":
            assert sorted(patched["rope_scaling"]) == ["long_factor", "short_factor", "type"]
        if not keep_backup:
            (directory / BACKUP).unlink()
        ctxext.unpatch_directory(directory)
        restored = (directory / "config.json").read_bytes()
        assert restored == original if keep_backup else json.loads(restored) == json.loads(original)
