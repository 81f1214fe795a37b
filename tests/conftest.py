"""The fixtures shared by the test modules; the helpers they use live in ``support/`` (see README.md).

``family`` runs a test once per tiny model family; ``tiny_dir`` is a saved tiny Llama,
``tiny_eval_dir`` (session) the same with a byte-level tokenizer for end-to-end eval runs;
``cli`` (session) is the fork server that runs ``ctxext`` commands; ``block`` runs a test at two
block sizes of the blockwise attention kernels.
"""

from __future__ import annotations

import pytest

from ctxext.model.attention import bands

from support.cli_harness import CliServer
from support.models import FAMILIES, make_model, save_tiny_eval_checkpoint


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_dir(tmp_path):
    """A saved tiny Llama checkpoint directory."""
    model = make_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_eval_dir(tmp_path_factory):
    """A tiny Llama checkpoint with a byte-level tokenizer, saved together (for end-to-end eval runs)."""
    return save_tiny_eval_checkpoint(tmp_path_factory.mktemp("tiny-eval") / "tiny-llama")


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """The session's fork server: ``cli.run(*args, cwd=...)`` runs ``ctxext ARGS`` as ``python -m`` does."""
    server = CliServer(tmp_path_factory.mktemp("cli-server"))
    yield server
    server.close()


@pytest.fixture(params=[16, bands.BLOCK], ids=["block16", "block-default"])
def block(request, monkeypatch):
    """The blockwise kernels' block size: 16 (every code path runs on the tiny models) and the default."""
    monkeypatch.setattr(bands, "BLOCK", request.param)
    return request.param
