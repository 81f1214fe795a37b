"""RULER-style synthetic tasks with RULER's templates, needle formats and scoring.

Reproduced as upstream (templates, answer prefixes, needle and value types, counts): the
fully synthetic niah_single_1, niah_multikey_2, niah_multikey_3, vt, cwe and fwe. The
essay-haystack tasks (niah_single_2, niah_single_3, niah_multikey_1, niah_multivalue,
niah_multiquery) run on the offline prose of ``haystack.py`` instead of upstream's essays,
so their scores are not comparable with published RULER numbers. The QA tasks need
downloaded SQuAD / HotpotQA data and are left out.

Differences in how a prompt is laid out, all to make generation deterministic per sample
and sizing exact: each sample has its own seeded random stream; haystacks are sized by
bisection on the number of haystack units with the model's tokenizer (prompt tokens +
tokens to generate <= length); needle positions are drawn as fractions of the haystack
(upstream draws indexes), and a single-needle task puts its needle at the sample's grid
depth (or a random one) so that its results fill a depth x length heatmap.
"""

from __future__ import annotations

import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

from .haystack import NOISE, take_sentences
from .samples import Sample, count_tokens, largest_fitting, sample_rng
from .task import GENERATE, Task

NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
)
NIAH_ANSWER = " The special magic {type_needle_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
    "Question: Find all variables that are assigned the value {query} in the text above."
)
VT_ANSWER = (
    " Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables are "
    "assgined the value {query}, they are: "  # sic, upstream's spelling
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\n"
    "Question: What are the 10 most common words in the above list?"
)
CWE_ANSWER = " Answer: The top 10 words that appear most often in the list are:"
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three most frequently "
    "appeared coded words. {context}\nQuestion: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
FWE_ANSWER = " Answer: According to the coded text above, the three most frequently appeared words are:"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # upstream's 40 insertion depths (percent)


@lru_cache(maxsize=1)
def _wordlists() -> tuple[list[str], list[str], list[str]]:
    """Upstream's vocabularies (wonderwords): adjectives and nouns for the adjective-noun keys,
    and the shuffled common-words list."""
    import wonderwords

    categories = wonderwords.RandomWord()._categories
    adjectives, nouns = sorted(set(categories["adjectives"])), sorted(set(categories["nouns"]))
    common = sorted({w for kind in ("nouns", "adjectives", "verbs") for w in categories[kind]})
    random.Random(42).shuffle(common)
    return adjectives, nouns, common


def _random_value(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "words":  # uniform over upstream's adjective x noun list, without building it
        adjectives, nouns, _ = _wordlists()
        return f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@dataclass(frozen=True)
class NiahSpec:
    haystack: str  # "repeat", "needle" (distractor needles) or "essay"
    type_needle_k: str
    type_needle_v: str
    num_needle_k: int = 1
    num_needle_v: int = 1
    num_needle_q: int = 1


def _niah_builder(spec: NiahSpec, rng: random.Random, depth: float | None, seed_text: str) -> Callable[[int], str]:
    """A function from the haystack size to the full prompt; needles and query are fixed here."""
    num_k = max(spec.num_needle_k, spec.num_needle_q)
    keys, values, needles = [], [], []
    for _ in range(num_k):
        keys.append(_random_value(rng, spec.type_needle_k))
        values.append([_random_value(rng, spec.type_needle_v) for _ in range(spec.num_needle_v)])
        needles += [NEEDLE.format(type_needle_v=spec.type_needle_v, key=keys[-1], value=v) for v in values[-1]]
    rng.shuffle(needles)
    if depth is not None:
        fractions = [depth]
    elif spec.haystack == "essay":
        fractions = sorted(d / 100 for d in rng.sample(DEPTHS, len(needles)))
    else:
        fractions = sorted(rng.random() for _ in needles)
    query_indices = rng.sample(range(num_k), spec.num_needle_q)
    queries = [keys[i] for i in query_indices]
    query = ", ".join(queries[:-1]) + ", and " + queries[-1] if len(queries) > 1 else queries[0]
    template, answer, type_v = NIAH_TEMPLATE, NIAH_ANSWER, spec.type_needle_v
    if spec.num_needle_q * spec.num_needle_v == 1:
        template, answer, type_v = _singular(template), _singular(answer), type_v[:-1]
    answer = answer.format(type_needle_v=type_v, query=query)

    def build(n: int) -> str:
        if spec.haystack == "essay":
            units = take_sentences(n)
        elif spec.haystack == "repeat":
            units = [NOISE] * n
        else:
            distractors = random.Random(seed_text + "/distractors")
            units = [
                NEEDLE.format(
                    type_needle_v=spec.type_needle_v,
                    key=_random_value(distractors, spec.type_needle_k),
                    value=_random_value(distractors, spec.type_needle_v),
                )
                for _ in range(n)
            ]
        for offset, (fraction, needle) in enumerate(zip(fractions, needles)):
            units.insert(round(fraction * n) + offset, needle)
        context = (" " if spec.haystack == "essay" else "\n").join(units)
        return template.format(type_needle_v=type_v, context=context, query=query) + answer

    build.answers = [v for i in query_indices for v in values[i]]
    build.answer_prefix = answer.strip()
    return build


def _singular(text: str) -> str:
    """Upstream's rewording of a NIAH template for a single needle value."""
    return text.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer")


NIAH_TASKS = {
    "niah_single_1": NiahSpec("repeat", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", num_needle_k=4),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", num_needle_v=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", num_needle_q=4),
}


def _vt_chain(rng: random.Random, letters: int, num_hops: int = 4) -> tuple[list[str], list[str]]:
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    chain = [f"VAR {names[0]} = {rng.randint(10000, 99999)}"] + [
        f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)
    ]
    return names, chain


def _vt_value(chain: list[str]) -> str:
    return chain[0].split("=")[-1].strip()


def _vt_answer(names: list[str], chain: list[str]) -> str:
    return VT_ANSWER.format(num_v=len(names), query=_vt_value(chain))


def _vt_prompt(names: list[str], chain: list[str], fractions: list[float], n: int) -> str:
    sentences = [NOISE + "\n"] * n
    for j, (fraction, line) in enumerate(zip(fractions, chain)):
        sentences.insert(round(fraction * n) + j, line)
    context = " ".join(sentences).replace(". \n", ".\n")
    return VT_TEMPLATE.format(context=context, query=_vt_value(chain)) + _vt_answer(names, chain)


def _vt_builder(rng: random.Random, tokenizer, tokens_to_generate: int) -> Callable[[int], str]:
    """Variable tracking (1 chain, 4 hops) after upstream's one-shot example of about 500 tokens."""
    icl_names, icl_chain = _vt_chain(rng, letters=3)
    icl_fractions = sorted(rng.random() for _ in icl_chain)
    n_icl = largest_fitting(
        lambda n: _vt_prompt(icl_names, icl_chain, icl_fractions, n),
        lambda t: count_tokens(tokenizer, t) + tokens_to_generate <= 500,
    )
    example = _vt_prompt(icl_names, icl_chain, icl_fractions, n_icl) + " " + " ".join(icl_names) + "\n\n"
    for name in icl_names:  # upstream re-letters the example's answers
        example = example.replace(name, "".join(rng.choices(string.ascii_uppercase, k=len(name))))
    names, chain = _vt_chain(rng, letters=5)
    fractions = sorted(rng.random() for _ in chain)

    def build(n: int) -> str:
        return example + "\n\n" + _vt_prompt(names, chain, fractions, n)

    build.answers = names
    build.answer_prefix = _vt_answer(names, chain).strip()
    return build


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


def _cwe_words(rng: random.Random, num_words: int, common_repeats: int, uncommon_repeats: int) -> tuple[str, list[str]]:
    words = rng.sample(_wordlists()[2], num_words)
    word_list = words[:10] * common_repeats + words[10:] * uncommon_repeats
    rng.shuffle(word_list)
    return _numbered(word_list), words[:10]


def _cwe_builder(rng: random.Random, length: int) -> Callable[[int], str]:
    """Common words: 10 words x30 among others x3 (x6 / x1 below 4k), after a worked example."""
    short = length < 4096
    example_context, example_answer = _cwe_words(rng, 20 if short else 40, 3 if short else 10, 1 if short else 3)
    example = CWE_TEMPLATE.format(context=example_context) + CWE_ANSWER + " " + _numbered(example_answer)
    words = _wordlists()[2][:]
    rng.shuffle(words)
    order_seed = rng.random()

    def build(n: int) -> str:
        word_list = words[:10] * (6 if short else 30) + words[10 : 10 + n] * (1 if short else 3)
        random.Random(order_seed).shuffle(word_list)
        return example + "\n" + CWE_TEMPLATE.format(context=_numbered(word_list)) + CWE_ANSWER

    build.answers = words[:10]
    build.answer_prefix = CWE_ANSWER.strip()
    build.limit = len(words) - 10
    return build


def _zeta(alpha: float, terms: int = 10000) -> float:
    """Riemann zeta for alpha > 1 (partial sum plus Euler-Maclaurin tail)."""
    return sum(k**-alpha for k in range(1, terms)) + terms ** (1 - alpha) / (alpha - 1) + terms**-alpha / 2


def _fwe_builder(rng: random.Random, length: int, alpha: float = 2.0) -> Callable[[int], str]:
    """Frequent words: a zeta(alpha)-distributed coded text; the top word is '...' noise."""
    vocab_size = max(length // 50, 4)
    vocab: set[str] = set()
    while len(vocab) < vocab_size:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."
    order_seed = rng.random()
    norm = _zeta(alpha)

    def build(n: int) -> str:
        words = [w for k, w in enumerate(ranked, 1) for _ in range(int(n * k**-alpha / norm))]
        random.Random(order_seed).shuffle(words)
        return FWE_TEMPLATE.format(context=" ".join(words)) + FWE_ANSWER

    build.answers = ranked[1:4]
    build.answer_prefix = FWE_ANSWER.strip()
    return build


def _sample(
    task: str,
    build_for: Callable[..., Callable[[int], str]],
    tokenizer,
    length: int,
    index: int,
    seed: int,
    depths=None,
) -> Sample:
    """Sample ``index`` of ``task`` sized to ``length`` tokens. Single-needle NIAH tasks put the
    needle at ``depths[index % len(depths)]`` (a random depth when ``depths`` is None)."""
    info = TASKS[task]
    rng = sample_rng(seed, task, length, index)
    depth = (rng.random() if depths is None else float(depths[index % len(depths)])) if info.has_depths else None
    build = build_for(rng, tokenizer, length, depth, f"{seed}/{task}/{length}/{index}")
    budget = length - info.max_new_tokens
    try:
        n = largest_fitting(
            build, lambda text: count_tokens(tokenizer, text) <= budget, start=16, limit=getattr(build, "limit", None)
        )
    except ValueError:
        raise ValueError(f"length {length} is too short for {task}") from None
    prompt = build(n).rstrip()
    return Sample(
        task,
        length,
        index,
        prompt,
        list(build.answers),
        info.metric,
        info.max_new_tokens,
        count_tokens(tokenizer, prompt),
        depth,
        {"haystack_units": n, "comparable_with_ruler": info.comparable},
        answer_prefix=build.answer_prefix,
    )


def make_sample(task: str, tokenizer, length: int, index: int, seed: int, depths=None) -> Sample:
    """Sample ``index`` of the RULER-style ``task`` (see :func:`_sample`)."""
    return TASKS[task].make(tokenizer, length, index, seed, depths)


def _task(name: str, max_new_tokens: int, comparable: bool, has_depths: bool, build_for) -> Task:
    return Task(
        name,
        GENERATE,
        "ruler",
        max_new_tokens,
        "string_match_all",
        has_depths,
        comparable,
        partial(_sample, name, build_for),
    )


def _niah(spec: NiahSpec):
    return lambda rng, tokenizer, length, depth, seed_text: _niah_builder(spec, rng, depth, seed_text)


TASKS: dict[str, Task] = {
    name: _task(
        name,
        128,
        spec.haystack != "essay",
        spec.num_needle_k * spec.num_needle_v == 1 and spec.num_needle_q == 1 and spec.haystack != "needle",
        _niah(spec),
    )
    for name, spec in NIAH_TASKS.items()
}
TASKS["vt"] = _task(
    "vt",
    30,
    True,
    False,
    lambda rng, tokenizer, length, depth, seed_text: _vt_builder(rng, tokenizer, TASKS["vt"].max_new_tokens),
)
TASKS["cwe"] = _task(
    "cwe", 120, True, False, lambda rng, tokenizer, length, depth, seed_text: _cwe_builder(rng, length)
)
TASKS["fwe"] = _task("fwe", 50, True, False, lambda rng, tokenizer, length, depth, seed_text: _fwe_builder(rng, length))
SINGLE_NEEDLE = [name for name, task in TASKS.items() if task.has_depths]
