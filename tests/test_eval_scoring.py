"""Scorers on hand-written model outputs, near-misses included; length strings."""

from __future__ import annotations

import pytest

from ctxext.errors import CtxextError
from ctxext.eval.lengths import parse_length, parse_lengths
from ctxext.eval.scoring import first_integer, score, string_match_all, string_match_part


@pytest.mark.parametrize(
    "generated,expected",
    [
        (" 48213. Remember it.", 100.0),
        ("48213", 100.0),
        (" The pass key is 48213.", 100.0),
        (" 4821", 0.0),  # a digit short
        (" 48214", 0.0),  # one digit off
        (" 482131", 0.0),  # a digit too many
        (" 12345 48213", 0.0),  # only the first integer counts
        (" forty-eight", 0.0),
        ("", 0.0),
    ],
)
def test_passkey_first_integer(generated, expected):
    assert score("first_integer", generated, ["48213"]) == expected


def test_first_integer():
    assert first_integer("abc 12 34") == 12
    assert first_integer("no digits") is None


def test_string_match_all_counts_each_reference():
    refs = ["1234567", "7654321", "1111111"]
    assert string_match_all(" 1234567, 7654321 and 1111111.", refs) == 100.0
    assert string_match_all(" 1234567 and 7654321.", refs) == pytest.approx(200 / 3)
    assert string_match_all(" 1234568, 7654320, 1111112", refs) == 0.0  # near-misses
    assert string_match_all(" 123456", ["1234567"]) == 0.0


def test_string_match_is_case_insensitive_and_ignores_control_characters():
    assert string_match_all("  HOT-COMESTIBLE\x00", ["hot-comestible"]) == 100.0
    assert string_match_all("abc\tdef", ["abc\ndef"]) == 100.0


def test_string_match_part_needs_any_reference():
    refs = ["Paris", "the capital of France"]
    assert string_match_part("It is paris.", refs) == 100.0
    assert string_match_part("It is Pari.", refs) == 0.0


@pytest.mark.parametrize("text,tokens", [("4k", 4096), ("16K", 16384), ("1.5k", 1536), ("1500", 1500), (" 8k ", 8192)])
def test_lengths(text, tokens):
    assert parse_length(text) == tokens


@pytest.mark.parametrize("text", ["4q", "k", "-4k", "0", "1.3", ""])
def test_bad_lengths(text):
    with pytest.raises(CtxextError, match="bad length"):
        parse_length(text)


def test_length_lists_are_sorted_and_deduplicated():
    assert parse_lengths("16k,4k,4096,8k") == [4096, 8192, 16384]


@pytest.mark.parametrize(
    "generated,references,score,kind",
    [
        (" 6706187.", ["6706187"], 100.0, "hit"),
        ("   ", ["6706187"], 0.0, "empty"),
        (" 123 and 456", ["123", "789"], 50.0, "partial"),
        (
            " What is the special magic number for apple mentioned in the provided text?",
            ["6706187"],
            0.0,
            "repeats the question",
        ),
        (" the cat sat on the mat the cat sat on the mat the cat sat on the mat", ["6706187"], 0.0, "loop"),
        (" 6706188.", ["6706187"], 0.0, "wrong value"),
        (" I do not know where that is.", ["6706187"], 0.0, "other text"),
    ],
)
def test_a_miss_is_sorted_by_its_answer(generated, references, score, kind):
    from ctxext.eval.misses import classify

    assert classify(generated, references, score) == kind


def test_miss_counts_count_only_the_misses():
    from ctxext.eval.misses import miss_counts

    records = [
        {"generated": " 1", "expected": ["1"], "score": 100.0},
        {"generated": " 22222", "expected": ["12345"], "score": 0.0},
        {"generated": "", "expected": ["12345"], "score": 0.0},
        {"generated": " 54321", "expected": ["12345"], "score": 0.0},
    ]
    assert miss_counts(records) == {"wrong value": 2, "empty": 1}
