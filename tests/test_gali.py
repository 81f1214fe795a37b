"""GALI specifics; the shared attention tests cover its table case (noise on) already.

The position construction against the reference's ``construct_new_pi`` (hand-written values and
the loop in ``attention_reference.gali_positions``), the dense reference without noise, with plain
fractional rotations and across several changes of G, the KV cache (token by token and in pieces
equal one pass, with and without noise), the noise (seeded, a pure function of the pair), and
the parameter errors.
"""

from __future__ import annotations

import pytest
import torch

import ctxext
from ctxext.errors import CtxextError
from ctxext.methods import gali
from ctxext.model.attention import bands
from ctxext.model.compat import cache_keyword, returned_cache

from support import attention_reference
from support.models import NATIVE, logits, make_model, tokens

WINDOW = dict(local_window=8)
QUIET = dict(WINDOW, noise=False)


def _extended(params: dict, family: str = "llama", seed: int = 0):
    return ctxext.extend(make_model(family, seed=seed), "gali", factor=3, **params)


def _reference(params: dict, family: str = "llama"):
    model = make_model(family)
    attention_reference.install(model, "gali", params)
    return model


@pytest.fixture(params=[16, bands.BLOCK], ids=["block16", "block-default"])
def block(request, monkeypatch):
    monkeypatch.setattr(bands, "BLOCK", request.param)
    return request.param


# (length T, original length L, local window w) -> positions, worked out by hand from construct_new_pi:
# G = ceil((T - w) / (L - w)); integer positions 0, 1, ... are split into G each until T positions fit
HAND_WORKED = [
    ((10, 8, 2), [0, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 7]),  # G 2: two positions split
    ((9, 8, 2), [0, 0.5, 1, 2, 3, 4, 5, 6, 7]),  # G 2: one position split
    ((8, 8, 2), list(range(8))),  # up to L nothing changes
    ((16, 8, 2), [0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3, 2, 7 / 3, 8 / 3, 3, 10 / 3, 11 / 3, 4, 5, 6, 7]),  # G 3
    ((15, 8, 1), [t / 2 for t in range(14)] + [7]),  # G 2 with w = 1: only the newest token stays exact
]


@pytest.mark.parametrize("shape, expected", HAND_WORKED, ids=[str(s) for s, _ in HAND_WORKED])
def test_positions_match_hand_worked_construct_new_pi(shape, expected):
    torch.testing.assert_close(gali.positions(*shape), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize(
    "length, original, window",
    [
        (4097, 4096, 128),
        (7096, 4096, 128),
        (8064, 4096, 128),
        (8065, 4096, 128),
        (16384, 4096, 128),
        (32768, 8192, 128),
        (65, 64, 8),
        (120, 64, 8),
        (121, 64, 8),
        (300, 64, 8),
        (1000, 64, 1),
    ],
)
def test_positions_reproduce_the_reference_loop(length, original, window):
    built = gali.positions(length, original, window)
    torch.testing.assert_close(built, attention_reference.gali_positions(length, original, window), rtol=0, atol=1e-12)
    assert built[-1] == original - 1 and bool((built[1:] > built[:-1]).all())
    assert bool((built[-window:] == torch.arange(original - window, original, dtype=torch.float64)).all())


def test_the_fewest_positions_are_split():
    """G is the smallest that fits T tokens with the window kept; then one split position fewer would not fit."""
    for length in range(65, 400):
        group, fractional = (int(x) for x in gali.interpolation(torch.tensor(length), NATIVE, 8))
        split = fractional - (length - NATIVE)  # k: integer positions split into G
        assert (NATIVE - 8) * group + 8 >= length > (NATIVE - 8) * (group - 1) + 8
        assert NATIVE + split * (group - 1) >= length > NATIVE + (split - 1) * (group - 1)


@pytest.mark.parametrize(
    "params",
    [
        QUIET,
        dict(QUIET, logit_interpolation=False),
        dict(local_window=1, noise=False),
        dict(local_window=20, std_base=2.0, noise_seed=5),
    ],
    ids=["no-noise", "plain-rotation", "window1", "noise-options"],
)
@pytest.mark.parametrize("family", ["llama", "gpt_neox", "phi3"])
def test_matches_dense_reference(params, family, block):
    if family != "llama" and params in (QUIET, dict(local_window=1, noise=False)):
        pytest.skip("the options, not the family, make these variants differ: llama is enough")
    ids = tokens(240, batch=2)  # G goes from 1 to 5 (window 8) along the sequence
    got = logits(_extended(params, family), ids)
    torch.testing.assert_close(got, logits(_reference(params, family), ids), atol=2e-4, rtol=1e-4)


def test_noise_in_chunks_of_scores_matches_dense_reference(monkeypatch, block):
    monkeypatch.setattr(gali, "SCORE_BUDGET", 64)
    ids = tokens(150, batch=2)
    torch.testing.assert_close(logits(_extended(WINDOW), ids), logits(_reference(WINDOW), ids), atol=2e-4, rtol=1e-4)


def test_logit_interpolation_differs_from_fractional_rotation():
    ids = tokens(150)
    interpolated = logits(_extended(QUIET), ids)
    rotated = logits(_extended(dict(QUIET, logit_interpolation=False)), ids)
    assert torch.equal(interpolated[:, :NATIVE], rotated[:, :NATIVE])
    assert not torch.allclose(interpolated[:, NATIVE:], rotated[:, NATIVE:])


def _step_logits(model, ids, pieces: list[int]) -> torch.Tensor:
    """Logits of ``ids`` fed in pieces of the given lengths through the KV cache."""
    cache, outputs, start = None, [], 0
    with torch.no_grad():
        for size in pieces:
            output = model(input_ids=ids[:, start : start + size], use_cache=True, **{cache_keyword(model): cache})
            cache = returned_cache(output)
            outputs.append(output.logits)
            start += size
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("params", [WINDOW, QUIET], ids=["noise", "no-noise"])
def test_the_cache_gives_the_logits_of_one_pass(params):
    """Positions are rebuilt for every length; fed token by token (G changes twice) or in pieces
    that cross L and the changes of G, every logit equals the one-pass logit."""
    model = _extended(params)
    ids = tokens(140)
    whole = logits(model, ids)
    token_by_token = _step_logits(model, ids, [40] + [1] * 100)
    in_pieces = _step_logits(model, ids, [50, 30, 1, 45, 14])
    torch.testing.assert_close(token_by_token, whole, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(in_pieces, whole, atol=2e-5, rtol=1e-5)


def test_left_padded_rows_without_noise_equal_rows_run_alone():
    model = _extended(QUIET)
    lengths = [150, 101, 37]
    rows = [tokens(n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    ids = torch.zeros(3, 150, dtype=torch.long)
    mask = torch.zeros(3, 150, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 150 - len(row) :], mask[i, 150 - len(row) :] = row, 1
    batched = logits(model, ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    for i, row in enumerate(rows):
        torch.testing.assert_close(batched[i, -len(row) :], logits(model, row[None])[0], atol=2e-5, rtol=1e-5)


def test_noise_is_seeded():
    ids = tokens(150)
    first = logits(_extended(dict(WINDOW, noise_seed=7)), ids)
    assert torch.equal(first, logits(_extended(dict(WINDOW, noise_seed=7)), ids))
    assert not torch.allclose(first[:, NATIVE:], logits(_extended(dict(WINDOW, noise_seed=8)), ids)[:, NATIVE:])
    quiet = logits(_extended(QUIET), ids)
    assert torch.equal(quiet, logits(_extended(QUIET), ids))
    assert torch.equal(quiet[:, :NATIVE], first[:, :NATIVE])  # no fractional key up to L tokens: no noise
    assert not torch.allclose(quiet[:, NATIVE:], first[:, NATIVE:])


def test_noise_is_a_standard_normal_of_the_pair_alone():
    queries, keys = torch.arange(500, 1500), torch.arange(1000)
    noise = gali.standard_normal(3, 2, 4, queries, keys)
    assert noise.shape == (4, 1000, 1000) and noise.dtype == torch.float32
    assert abs(float(noise.mean())) < 0.01 and abs(float(noise.std()) - 1) < 0.01
    assert abs(float((noise[..., 1:] * noise[..., :-1]).mean())) < 0.01  # neighbouring keys uncorrelated
    assert abs(float((noise[:, 1:] * noise[:, :-1]).mean())) < 0.01  # neighbouring queries uncorrelated
    assert abs(float((noise[1:] * noise[:-1]).mean())) < 0.01  # heads uncorrelated
    assert abs(float((noise[:, 1:, 1:] * noise[:, :-1, :-1]).mean())) < 0.01  # pairs one step apart in both
    assert abs(float((noise**4).mean()) - 3) < 0.05  # a normal's fourth moment, not just its first two
    part = gali.standard_normal(3, 2, 4, queries[100:200], keys[300:350])
    assert torch.equal(part, noise[:, 100:200, 300:350])
    assert not torch.equal(gali.standard_normal(3, 1, 4, queries, keys), noise)


def test_defaults_are_the_references():
    config = ctxext.get_method("gali").config_class()
    assert (config.local_window, config.logit_interpolation, config.noise, config.std_base, config.noise_seed) == (
        128,
        True,
        True,
        1.0,
        0,
    )
    assert config.log_scaling is False


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, r"local_window \(128\) must be below the original length \(64\)"),
        (dict(local_window=NATIVE), "must be below the original length"),
        (dict(local_window=0), "at least 1"),
        (dict(local_window=8, logit_interpolation=False), "with logit_interpolation=false set noise=false"),
        (dict(local_window=8, noise="yes"), "noise must be true or false"),
        (dict(local_window=8, logit_interpolation=1), "logit_interpolation must be true or false"),
        (dict(local_window=8, std_base=-1.0), "std_base must be at least 0"),
        (dict(local_window=8, noise_seed=-1), "noise_seed must be at least 0"),
        (dict(local_window=8, noise_seed=1.5), "whole number"),
    ],
)
def test_bad_parameters_get_clear_errors(params, message):
    model = make_model("llama")
    with pytest.raises(CtxextError, match=message):
        ctxext.extend(model, "gali", factor=2, **params)
    assert not ctxext.is_extended(model) and model.config._attn_implementation == "sdpa"


def test_cli_patch_takes_the_gali_flags(tiny_dir, capsys):
    from ctxext.cli import main

    assert (
        main(
            [
                "patch",
                "--method",
                "gali",
                "--factor",
                "3",
                "--local-window",
                "8",
                "--noise",
                "false",
                "--noise-seed",
                "4",
                str(tiny_dir),
            ]
        )
        == 0
    )
    capsys.readouterr()
    reloaded = ctxext.from_pretrained(tiny_dir)
    assert reloaded.config.ctxext["params"] == dict(
        QUIET, logit_interpolation=True, std_base=1.0, noise_seed=4, log_scaling=False
    )
    ids = tokens(150)
    torch.testing.assert_close(logits(reloaded, ids), logits(_extended(QUIET), ids), atol=1e-6, rtol=1e-6)
