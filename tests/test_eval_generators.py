"""Passkey and RULER-style prompt generators: seeded, needles at their depth, within budget,
each prompt a question and an answer prefix."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest

from ctxext.eval import passkey, ruler
from ctxext.eval.haystack import NOISE
from ctxext.eval.samples import count_tokens
from ctxext.eval.tasks import make_sample

from support.models import byte_tokenizer

ALL_TASKS = ["passkey", *ruler.TASKS]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.mark.parametrize("task", ALL_TASKS)
def test_same_seed_same_prompt_other_seed_other_prompt(tokenizer, task):
    first = make_sample(task, tokenizer, 2048, 3, 7, [0.5])
    again = make_sample(task, tokenizer, 2048, 3, 7, [0.5])
    other = make_sample(task, tokenizer, 2048, 3, 8, [0.5])
    assert first == again
    assert other.prompt != first.prompt and other.references != first.references


@pytest.mark.parametrize("task", ALL_TASKS)
@pytest.mark.parametrize("length", [2048, 8192])
def test_prompt_and_answer_fit_the_token_budget_and_fill_it(tokenizer, task, length):
    sample = make_sample(task, tokenizer, length, 0, 0, [0.5])
    assert sample.n_tokens == count_tokens(tokenizer, sample.prompt)
    assert sample.n_tokens + sample.max_new_tokens <= length
    # one more haystack unit would not fit: the slack is at most one unit (a filler line, a sentence, ...)
    assert sample.n_tokens + sample.max_new_tokens > length - 400


def test_prompts_are_sized_with_the_given_tokenizer(tokenizer):
    from transformers import PreTrainedTokenizerFast

    class Doubling(PreTrainedTokenizerFast):  # every byte counts twice
        def __call__(self, text, **kwargs):
            ids = super().__call__(text, **kwargs)
            return {"input_ids": ids["input_ids"] * 2}

    doubling = Doubling(tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>")
    normal = make_sample("niah_single_1", tokenizer, 4096, 0, 0, [0.5])
    halved = make_sample("niah_single_1", doubling, 4096, 0, 0, [0.5])
    assert count_tokens(doubling, halved.prompt) + halved.max_new_tokens <= 4096
    assert len(halved.prompt) < 0.6 * len(normal.prompt)


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_passkey_sits_at_the_requested_depth(tokenizer, depth):
    sample = passkey.make_sample(tokenizer, 4096, 0, 0, [depth])
    key_line = passkey.KEY_LINE.format(key=sample.references[0])
    fillers_before = sample.prompt[: sample.prompt.index(key_line)].count(NOISE)
    assert sample.depth == depth
    assert fillers_before / sample.prompt.count(NOISE) == pytest.approx(depth, abs=0.02)


@pytest.mark.parametrize("task", ["niah_single_1", "niah_single_2", "niah_single_3"])
@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_single_needle_sits_at_the_requested_depth(tokenizer, task, depth):
    sample = ruler.make_sample(task, tokenizer, 4096, 0, 0, [depth])
    needle = next(
        line for line in re.findall(r"One of the special magic [^.]*\.", sample.prompt) if sample.references[0] in line
    )
    context_start = sample.prompt.index("afterwards.\n") + len("afterwards.\n")
    context_end = sample.prompt.rindex("\nWhat is the special magic")
    position = (sample.prompt.index(needle) - context_start) / (context_end - context_start - len(needle))
    assert position == pytest.approx(depth, abs=0.03)


def test_random_depths_are_seeded_and_spread(tokenizer):
    depths = [passkey.make_sample(tokenizer, 1024, i, 0, None).depth for i in range(20)]
    assert depths == [passkey.make_sample(tokenizer, 1024, i, 0, None).depth for i in range(20)]
    assert min(depths) < 0.25 and max(depths) > 0.75


def test_depth_grid_cycles_over_samples(tokenizer):
    grid = [0.0, 0.5, 1.0]
    assert [passkey.make_sample(tokenizer, 1024, i, 0, grid).depth for i in range(5)] == [0.0, 0.5, 1.0, 0.0, 0.5]


@pytest.mark.parametrize("task", list(ruler.NIAH_TASKS))
def test_niah_answers_are_in_the_prompt_with_their_query(tokenizer, task):
    spec = ruler.NIAH_TASKS[task]
    sample = ruler.make_sample(task, tokenizer, 4096, 1, 0)
    assert len(sample.references) == spec.num_needle_v * spec.num_needle_q
    for value in sample.references:
        needle = re.search(r"One of the special magic \w+ for (\S+) is: " + re.escape(value) + r"\.", sample.prompt)
        assert needle and needle.group(1) in sample.prompt.split("\n")[-1]


def test_variable_tracking_chain_leads_to_the_value(tokenizer):
    sample = ruler.make_sample("vt", tokenizer, 4096, 0, 0)
    question = sample.prompt.rsplit("Question:", 1)[1]
    value = re.search(r"assigned the value (\d+)", question).group(1)
    main = sample.prompt.rsplit("Memorize and track", 1)[1]
    first, *rest = sample.references
    assert f"VAR {first} = {value}" in main
    for previous, name in zip(sample.references, rest):
        assert f"VAR {name} = VAR {previous}" in main
    assert len(sample.references) == 5 and "5 variables are assgined" in question


@pytest.mark.parametrize("length,common,uncommon", [(2048, 6, 1), (8192, 30, 3)])
def test_common_words_have_ruler_frequencies(tokenizer, length, common, uncommon):
    sample = ruler.make_sample("cwe", tokenizer, length, 0, 0)
    main = sample.prompt.rsplit("Below is a numbered list", 1)[1]
    counts = Counter(re.findall(r"\d+\. (\S+)", main.split("\nQuestion:")[0]))
    assert {counts[w] for w in sample.references} == {common}
    assert {c for w, c in counts.items() if w not in sample.references} == {uncommon}


def test_frequent_words_answers_are_the_most_frequent_coded_words(tokenizer):
    sample = ruler.make_sample("fwe", tokenizer, 4096, 0, 0)
    text = sample.prompt.split("coded words. ", 1)[1].split("\nQuestion:")[0]
    ranked = [w for w, _ in Counter(text.split()).most_common(4)]
    assert ranked[0] == "..." and ranked[1:] == sample.references


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_prompt_is_its_question_then_its_answer_prefix(tokenizer, task):
    sample = make_sample(task, tokenizer, 2048, 0, 0, [0.5])
    assert sample.question + " " + sample.answer_prefix == sample.prompt
    assert sample.answer_prefix and sample.answer_prefix == sample.answer_prefix.strip()


@pytest.mark.parametrize(
    "task,digest",
    [
        ("passkey", "ded0c5ae169dd48a"),
        ("niah_multikey_3", "7c8c0cdc6f5a89dd"),
        ("vt", "d6aad34fa643d3d3"),
        ("fwe", "fe1e9bb122295faa"),
    ],
)
def test_prompts_are_those_published_results_were_measured_on(tokenizer, task, digest):
    # the tasks whose text depends on neither wonderwords' lists nor this Python's pydoc topics
    sample = make_sample(task, tokenizer, 2048, 1, 0, (0.0, 0.25, 0.5, 0.75, 1.0))
    assert hashlib.sha256(sample.prompt.encode()).hexdigest()[:16] == digest


def test_essay_tasks_are_marked_not_comparable(tokenizer):
    assert not ruler.make_sample("niah_single_2", tokenizer, 2048, 0, 0).meta["comparable_with_ruler"]
    assert ruler.make_sample("niah_single_1", tokenizer, 2048, 0, 0).meta["comparable_with_ruler"]


def test_too_short_length_is_a_clear_error(tokenizer):
    from ctxext.errors import CtxextError

    with pytest.raises(CtxextError, match="too short for vt"):
        make_sample("vt", tokenizer, 300, 0, 0, None)
