"""GGUF -> GGUF export: llama.cpp's rope metadata written, tensors byte for byte, refusals, atomic writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import ctxext
from ctxext.checkpoint.gguf import writer as gguf_writer
from ctxext.cli import main

gguf = pytest.importorskip("gguf")

NATIVE = 64
ROTARY = 16
ARCH = "llama"


def _key(name: str) -> str:
    return f"{ARCH}.{name}"


def write_tiny_gguf(path, *, alignment=None, big_endian=False, extra=None, extra_tensors=None):
    """A tiny llama-like GGUF: a few tensors (one Q8_0 when gguf can quantize), a string array, rope keys."""
    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(str(path), ARCH, endianess=endian)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    writer.add_name("tiny")
    writer.add_context_length(NATIVE)
    writer.add_embedding_length(32)
    writer.add_head_count(2)
    writer.add_rope_dimension_count(ROTARY)
    writer.add_rope_freq_base(10000.0)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "a", "bé", ""])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.0, 3.0, 4.0])
    for key, (kind, value) in (extra or {}).items():
        writer.add_key_value(key, value, kind)
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal((5, 32)).astype(np.float32))
    weight = rng.standard_normal((32, 64)).astype(np.float32)
    try:
        writer.add_tensor(
            "blk.0.attn_q.weight",
            gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
            raw_dtype=gguf.GGMLQuantizationType.Q8_0,
        )
    except (AttributeError, NotImplementedError):  # an older gguf without quantize()
        writer.add_tensor("blk.0.attn_q.weight", weight.astype(np.float16))
    writer.add_tensor("output_norm.weight", rng.standard_normal(32).astype(np.float16))
    for name, values in (extra_tensors or {}).items():
        writer.add_tensor(name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def metadata(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: (f.types, f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(reader) -> list:
    return [(t.name, t.tensor_type, t.shape.tolist(), t.data.tobytes()) for t in reader.tensors]


def changed(before: dict, after: dict) -> dict:
    """key -> new value for every key added or changed (removed keys -> None)."""
    diff = {k: v[1] for k, v in after.items() if before.get(k) != v}
    diff.update({k: None for k in before if k not in after})
    return diff


def f32(x: float) -> float:
    return float(np.float32(x))


def assert_same_tensors(a, b) -> gguf.GGUFReader:
    """Same tensor names, types, shapes and bytes, and data sections of the same size; returns b's reader."""
    readers = [r if isinstance(r, gguf.GGUFReader) else gguf.GGUFReader(r) for r in (a, b)]
    assert tensors(readers[0]) == tensors(readers[1])
    data_sizes = [len(r.data) - r.data_offset for r in readers]
    assert data_sizes[0] == data_sizes[1]
    return readers[1]


CASES = {
    "pi": (dict(factor=2), {_key("rope.scaling.type"): "linear", _key("rope.scaling.factor"): 2.0}),
    "yarn": (
        dict(factor=2),
        {
            _key("rope.scaling.type"): "yarn",
            _key("rope.scaling.factor"): 2.0,
            _key("rope.scaling.original_context_length"): NATIVE,
        },
    ),
    "yarn-params": (
        dict(target_length=4 * NATIVE, beta_fast=16.0, beta_slow=2.0, attention_factor=1.5),
        {
            _key("rope.scaling.type"): "yarn",
            _key("rope.scaling.factor"): 4.0,
            _key("rope.scaling.original_context_length"): NATIVE,
            _key("rope.scaling.yarn_beta_fast"): 16.0,
            _key("rope.scaling.yarn_beta_slow"): 2.0,
            _key("rope.scaling.attn_factor"): f32(1.5 / (1 + 0.1 * math.log(4))),
        },
    ),
    "ntk": (
        dict(factor=2),
        {_key("rope.scaling.type"): "none", _key("rope.freq_base"): f32(10000.0 * 2 ** (ROTARY / (ROTARY - 2)))},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_method_writes_llama_cpp_metadata_and_keeps_every_tensor(tiny_gguf, tmp_path, case):
    options, rope = CASES[case]
    method = case.split("-")[0]
    out = tmp_path / "out.gguf"
    result = ctxext.patch(tiny_gguf, method, output=out, **options)
    target = rope.get(_key("rope.scaling.factor"), 2.0) * NATIVE
    assert result.path == out and result.record.method == method and result.record.target_length == target
    assert result.serve_command.startswith(f"llama-server -m {out} -c {int(target)}")
    assert ("--yarn-beta-fast 16 --yarn-beta-slow 2" in result.serve_command) == (case == "yarn-params")
    assert result.stock_loadable == (method == "ntk")  # transformers reads freq_base, never rope.scaling.*

    before, after = metadata(tiny_gguf), metadata(out)
    diff = changed(before, after)
    record = json.loads(diff.pop("ctxext.record"))
    original = json.loads(diff.pop("ctxext.original_metadata"))
    assert diff == {_key("context_length"): int(target), **rope}
    assert record == result.record.to_dict()
    assert record["original_length"] == NATIVE and record["replaced"]["max_position_embeddings"] == NATIVE
    assert original[_key("context_length")] == {"type": int(gguf.GGUFValueType.UINT32), "value": NATIVE}
    assert all(original[k] is None for k in rope if k not in before)
    assert_same_tensors(tiny_gguf, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "tiny.gguf"]


@pytest.mark.parametrize("layout", [dict(alignment=64), dict(big_endian=True)])
def test_custom_alignment_and_big_endian_files_keep_their_layout(tmp_path, layout):
    source = write_tiny_gguf(tmp_path / "tiny.gguf", **layout)
    out = tmp_path / "out.gguf"
    ctxext.patch(source, "yarn", factor=2, output=out)
    reader = gguf.GGUFReader(out)
    assert reader.byte_order == gguf.GGUFReader(source).byte_order
    assert reader.alignment == (layout.get("alignment") or 32) and reader.data_offset % reader.alignment == 0
    assert metadata(out)[_key("rope.scaling.type")][1] == "yarn"
    assert metadata(out)[_key("context_length")][1] == 2 * NATIVE
    assert_same_tensors(source, out)


@pytest.mark.parametrize(
    "method, message",
    [
        ("dynamic-ntk", "no dynamic rope scaling"),
        ("dynamic-yarn", "no dynamic rope scaling"),
        ("longrope", r"extra rope-factor tensors \(rope_factors_long/short.weight\).*adds only llama3's"),
        ("dca", "changes attention itself"),
        ("string", "changes attention itself"),
        ("lm-infinite", "changes attention itself"),
        ("ms-poe", "changes attention itself"),
        ("rerope", "changes attention itself"),
        ("self-extend", r"llama-completion -m \S+tiny.gguf -c 128 --grp-attn-n 3 --grp-attn-w 15 .*not ctxext's 16"),
    ],
)
def test_what_gguf_metadata_cannot_express_is_refused_in_one_line_and_nothing_is_written(
    tiny_gguf, tmp_path, method, message
):
    with pytest.raises(ctxext.CtxextError, match=message) as error:
        ctxext.patch(tiny_gguf, method, output=tmp_path / "out.gguf", factor=2)
    assert "\n" not in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


def test_bad_options_existing_outputs_and_other_misuse_are_refused_before_writing(tiny_gguf, tmp_path):
    cases = [
        (dict(output=tmp_path / "out.gguf", factor=0.5), "factor"),
        (dict(output=tmp_path / "out.gguf", factor=2, beta_fast=0.5), "beta_slow < beta_fast"),
        (dict(output=tmp_path / "out.gguf", factor=2, low_freq_factor=2.0), "no parameter low_freq_factor"),
        (dict(output=tmp_path / "out.gguf", factor=2, rope_layer_types=["full_attention"]), "one rope setup"),
        (dict(output=tmp_path / "out.gguf", factor=2, dtype="bfloat16"), "keeps the file's tensors"),
        (dict(output=tmp_path / "tiny.gguf", factor=2), "already exists"),
        (dict(output=tmp_path / "missing" / "out.gguf", factor=2), "no such directory"),
    ]
    for options, message in cases:
        with pytest.raises(ctxext.CtxextError, match=message):
            ctxext.patch(tiny_gguf, "yarn", **options)
    (tmp_path / "taken.gguf").write_bytes(b"keep me")
    with pytest.raises(ctxext.CtxextError, match="already exists"):
        ctxext.patch(tiny_gguf, "yarn", output=tmp_path / "taken.gguf", factor=2)
    assert (tmp_path / "taken.gguf").read_bytes() == b"keep me"
    not_gguf = tmp_path / "broken.gguf"
    not_gguf.write_bytes(b"GGUF" + b"\0" * 40)
    with pytest.raises(ctxext.CtxextError, match="version 0"):
        ctxext.patch(not_gguf, "yarn", output=tmp_path / "out.gguf", factor=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf", "taken.gguf", "tiny.gguf"]


def test_a_gguf_with_native_scaling_or_a_ctxext_patch_needs_replace(tmp_path):
    scaled = write_tiny_gguf(
        tmp_path / "scaled.gguf",
        extra={
            _key("rope.scaling.type"): (gguf.GGUFValueType.STRING, "linear"),
            _key("rope.scaling.factor"): (gguf.GGUFValueType.FLOAT32, 4.0),
        },
    )
    with pytest.raises(ctxext.CtxextError, match="already uses 'linear' rope scaling.*--replace"):
        ctxext.patch(scaled, "yarn", output=tmp_path / "a.gguf", factor=2)
    ctxext.patch(scaled, "yarn", output=tmp_path / "a.gguf", factor=2, replace=True)
    assert metadata(tmp_path / "a.gguf")[_key("rope.scaling.type")][1] == "yarn"

    first = tmp_path / "ntk.gguf"
    ctxext.patch(tmp_path / "a.gguf", "ntk", output=first, factor=2, replace=True)
    with pytest.raises(ctxext.CtxextError, match="already patched with 'ntk' by ctxext"):
        ctxext.patch(first, "pi", output=tmp_path / "b.gguf", factor=4)
    again = tmp_path / "b.gguf"
    ctxext.patch(first, "pi", output=again, factor=3, replace=True)
    # the second patch starts from the metadata before the first: the native scaling file's
    before, after = metadata(scaled), metadata(again)
    diff = changed(before, after)
    assert {k: v for k, v in diff.items() if not k.startswith("ctxext.")} == {
        _key("context_length"): 3 * NATIVE,
        _key("rope.scaling.factor"): 3.0,
    }  # freq_base back, type linear
    original = json.loads(diff["ctxext.original_metadata"])
    assert original[_key("rope.scaling.type")] == {"type": int(gguf.GGUFValueType.STRING), "value": "linear"}
    assert original[_key("rope.freq_base")]["value"] == 10000.0
    assert json.loads(diff["ctxext.record"])["original_length"] == NATIVE
    assert_same_tensors(scaled, again)


def test_a_failure_while_writing_leaves_no_file(tiny_gguf, tmp_path, monkeypatch):
    real_write = gguf_writer._write

    def interrupted(layout, patch, out):
        real_write(layout, patch, out)  # the whole file, then Ctrl-C before it is renamed into place
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_writer, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ctxext.patch(tiny_gguf, "yarn", output=tmp_path / "out.gguf", factor=2)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]

    def broken(layout, patch, out):
        out.write(b"GGUF half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gguf_writer, "_write", broken)
    with pytest.raises(OSError):
        ctxext.patch(tiny_gguf, "yarn", output=tmp_path / "out.gguf", factor=2)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


def test_the_output_is_never_overwritten_if_it_appears_while_writing(tiny_gguf, tmp_path, monkeypatch):
    real_write = gguf_writer._write
    out = tmp_path / "out.gguf"

    def racing(layout, patch, handle):
        real_write(layout, patch, handle)
        out.write_bytes(b"someone else's")

    monkeypatch.setattr(gguf_writer, "_write", racing)
    with pytest.raises(ctxext.CtxextError, match="appeared while it was being written"):
        ctxext.patch(tiny_gguf, "yarn", output=out, factor=2)
    assert out.read_bytes() == b"someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf", "tiny.gguf"]


def llama3_factors(factor: float, low: float = 1.0, high: float = 4.0) -> np.ndarray:
    """Llama 3.1's per-pair divisors of the rope frequencies for the tiny GGUF, from the paper's formula."""
    inv_freq = 10000.0 ** -(np.arange(0, ROTARY, 2) / ROTARY)
    wavelength = 2 * math.pi / inv_freq
    smooth = (NATIVE / wavelength - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    return np.where(wavelength < NATIVE / high, 1.0, np.where(wavelength > NATIVE / low, factor, blended))


@pytest.mark.parametrize("layout", [{}, dict(alignment=64), dict(big_endian=True)])
def test_llama3_adds_rope_freqs_after_every_original_tensor_kept_byte_for_byte(tmp_path, layout):
    source = write_tiny_gguf(tmp_path / "tiny.gguf", **layout)
    out = tmp_path / "out.gguf"
    result = ctxext.patch(source, "llama3", factor=4, high_freq_factor=2.0, output=out)
    assert result.serve_command == f"llama-server -m {out} -c {4 * NATIVE}" and not result.stock_loadable

    before, after = metadata(source), metadata(out)
    diff = changed(before, after)
    record = json.loads(diff.pop("ctxext.record"))
    original = json.loads(diff.pop("ctxext.original_metadata"))
    assert diff == {
        _key("context_length"): 4 * NATIVE,
        _key("rope.scaling.type"): "none",
        "ctxext.added_tensors": '["rope_freqs.weight"]',
    }
    assert record == result.record.to_dict() and record["params"]["high_freq_factor"] == 2.0
    assert original == {
        _key("context_length"): {"type": int(gguf.GGUFValueType.UINT32), "value": NATIVE},
        _key("rope.scaling.type"): None,
    }

    original_reader, reader = gguf.GGUFReader(source), gguf.GGUFReader(out)
    assert reader.byte_order == original_reader.byte_order and reader.data_offset % reader.alignment == 0
    assert tensors(reader)[:-1] == tensors(original_reader)
    assert bytes(
        reader.data[reader.data_offset : len(original_reader.data) - original_reader.data_offset + reader.data_offset]
    ) == bytes(original_reader.data[original_reader.data_offset :])
    rope_freqs = reader.tensors[-1]
    assert (rope_freqs.name, rope_freqs.tensor_type, rope_freqs.shape.tolist()) == (
        "rope_freqs.weight",
        gguf.GGMLQuantizationType.F32,
        [ROTARY // 2],
    )
    assert rope_freqs.data_offset % reader.alignment == 0
    expected = llama3_factors(4.0, high=2.0)
    assert ((expected > 1.0) & (expected < 4.0)).any()  # a blended pair, not only kept and divided ones
    np.testing.assert_allclose(rope_freqs.data.astype(np.float64), expected, rtol=1e-6)


def test_a_replace_patch_drops_the_tensor_an_earlier_llama3_patch_added(tiny_gguf, tmp_path):
    llama3 = tmp_path / "llama3.gguf"
    ctxext.patch(tiny_gguf, "llama3", factor=4, output=llama3)
    with pytest.raises(ctxext.CtxextError, match="already patched with 'llama3' by ctxext"):
        ctxext.patch(llama3, "yarn", factor=2, output=tmp_path / "yarn.gguf")
    ctxext.patch(llama3, "yarn", factor=2, output=tmp_path / "yarn.gguf", replace=True)
    reader = assert_same_tensors(tiny_gguf, tmp_path / "yarn.gguf")
    assert "ctxext.added_tensors" not in reader.fields
    assert reader.fields[_key("rope.scaling.type")].contents() == "yarn"

    ctxext.patch(llama3, "llama3", factor=2, output=tmp_path / "again.gguf", replace=True)
    reader = gguf.GGUFReader(tmp_path / "again.gguf")
    assert [t.name for t in reader.tensors].count("rope_freqs.weight") == 1
    assert tensors(reader)[:-1] == tensors(gguf.GGUFReader(tiny_gguf))
    np.testing.assert_allclose(reader.tensors[-1].data.astype(np.float64), llama3_factors(2.0), rtol=1e-6)
    assert len(reader.data) == (tmp_path / "again.gguf").stat().st_size


@pytest.mark.parametrize("method, replace", [("llama3", False), ("llama3", True), ("yarn", True)])
def test_a_gguf_with_its_own_rope_freqs_is_refused(tmp_path, method, replace):
    source = write_tiny_gguf(
        tmp_path / "llama31.gguf", extra_tensors={"rope_freqs.weight": np.full(ROTARY // 2, 2.0, dtype=np.float32)}
    )
    with pytest.raises(
        ctxext.CtxextError, match=r"already has per-dimension rope factors \(rope_freqs.weight"
    ) as error:
        ctxext.patch(source, method, factor=2, output=tmp_path / "out.gguf", replace=replace)
    assert "\n" not in str(error.value)
    assert [p.name for p in tmp_path.iterdir()] == ["llama31.gguf"]


def test_dry_run_prints_the_metadata_diff_and_writes_nothing(tiny_gguf, tmp_path):
    result = ctxext.patch(tiny_gguf, "yarn", output=tmp_path / "out.gguf", factor=2, dry_run=True)
    assert f"-{ARCH}.context_length = {NATIVE}" in result.diff.splitlines()
    assert f"+{ARCH}.context_length = {2 * NATIVE}" in result.diff.splitlines()
    assert f'+{ARCH}.rope.scaling.type = "yarn"' in result.diff.splitlines()
    llama3 = ctxext.patch(tiny_gguf, "llama3", output=tmp_path / "out.gguf", factor=4, dry_run=True)
    assert llama3.diff.splitlines()[-1].startswith("+tensor rope_freqs.weight F32 [1.0, ")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.gguf"]


def test_routing_a_directory_to_a_gguf_output_is_refused(tiny_dir, tmp_path):
    with pytest.raises(ctxext.CtxextError, match="convert_hf_to_gguf"):
        ctxext.patch(tiny_dir, "yarn", output=tmp_path / "out.gguf", factor=2)
    assert not (tmp_path / "out.gguf").exists()


def test_cli_patch_to_gguf_prints_the_llama_server_command(tiny_gguf, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    assert main(["patch", "--method", "yarn", "--factor", "2", "--output", str(out), str(tiny_gguf)]) == 0
    printed = capsys.readouterr().out
    assert f"serve it with llama.cpp: llama-server -m {out} -c {2 * NATIVE}" in printed
    assert "transformers' GGUF loader ignores rope scaling metadata" in printed
    assert (
        main(["patch", "--method", "dca", "--factor", "2", "--output", str(tmp_path / "x.gguf"), str(tiny_gguf)]) == 2
    )
    error = capsys.readouterr().err
    assert error.startswith("ctxext: error: 'dca' changes attention itself") and error.count("\n") == 1


@pytest.mark.real
def test_smollm2_yarn_x2_to_gguf_keeps_every_tensor_and_transformers_reads_16k(tmp_path):
    from ctxext.checkpoint.default_model import default_model_path

    try:
        source = default_model_path()
    except ctxext.CtxextError as exc:
        pytest.skip(str(exc))
    from transformers import AutoConfig

    out = tmp_path / "smollm2-yarn2.gguf"
    result = ctxext.patch("smollm2", "yarn", factor=2, output=out)
    assert result.record.target_length == 16384
    fields = assert_same_tensors(source, out).fields
    assert fields["llama.rope.scaling.type"].contents() == "yarn"
    assert fields["llama.rope.scaling.original_context_length"].contents() == 8192
    assert AutoConfig.from_pretrained(out.parent, gguf_file=out.name).max_position_embeddings == 16384


def test_a_truncated_gguf_is_refused(tiny_gguf, tmp_path):
    short = tmp_path / "short.gguf"
    short.write_bytes(tiny_gguf.read_bytes()[:-10])
    with pytest.raises(ctxext.CtxextError, match="truncated GGUF file"):
        ctxext.patch(short, "yarn", output=tmp_path / "out.gguf", factor=2)
    assert not (tmp_path / "out.gguf").exists()


@pytest.mark.real
def test_from_pretrained_reapplies_the_extension_of_a_patched_gguf(tmp_path):
    """transformers reads a GGUF's context length and rope base but not its scaling: the record fills it in."""
    import torch

    from ctxext.checkpoint.default_model import default_model_path

    try:
        default_model_path()
    except ctxext.CtxextError as exc:
        pytest.skip(str(exc))
    out = tmp_path / "smollm2-ntk2.gguf"
    ctxext.patch("smollm2", "ntk", factor=2, output=out)
    patched = ctxext.from_pretrained(out, dtype=torch.float32).eval()
    expected = ctxext.extend(ctxext.from_pretrained("smollm2", dtype=torch.float32).eval(), "ntk", factor=2)
    assert patched.config.rope_parameters == expected.config.rope_parameters
    assert patched.config.max_position_embeddings == expected.config.max_position_embeddings == 16384
    ids = torch.arange(5, 69)[None]
    with torch.no_grad():
        torch.testing.assert_close(patched(ids).logits, expected(ids).logits)
    ctxext.restore(patched)
    assert patched.config.rope_parameters == ctxext.restore(expected).config.rope_parameters
