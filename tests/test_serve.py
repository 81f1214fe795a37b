"""``ctxext serve``: the OpenAI-compatible server, asked through the real ``openai`` client on loopback.

The tiny byte-level Llama (``tiny_eval_dir``, native length 64) is served in this process (``serving``: the
server of ``ctxext.openai_server.launch`` in a thread) and its answers are compared with ``ctxext.extend`` and
``model.generate`` on the same tokens; the command line's refusals run through the fork server, and its Ctrl-C
through a real ``python -m ctxext.cli serve`` process. The real SmolLM2 at 16k is the ``slow`` test at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
import torch
from transformers import GPT2Config

import ctxext
from ctxext.openai_server.launch import ServeConfig, open_server

from support import bad_inputs
from support.cli_harness import OFFLINE, break_weights, expect_refusal
from support.method_cases import CASES
from support.models import NATIVE, byte_tokenizer

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
PROSE = "the sky is blue and the grass is green while a river runs down to the sea. "  # 75 byte tokens


@contextlib.contextmanager
def serving(model, timeout: float = 120, **settings):
    """A server for ``model`` on a free loopback port, in a thread, and an ``openai`` client of it."""
    server = open_server(ServeConfig(model=str(model), port=0, **settings))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=timeout)
    try:
        yield server, client
    finally:
        server.stop()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def reference(model_dir, prompt_ids: list[int], max_new_tokens: int, method=None, **extension) -> tuple[str, list]:
    """``ctxext.from_pretrained`` (+ ``extend``) + greedy ``generate``: the answer's text and its tokens."""
    model = ctxext.from_pretrained(model_dir).eval()
    if method is not None:
        ctxext.extend(model, method, **extension)
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids.shape[1] :].tolist()
    return byte_tokenizer().decode(new, skip_special_tokens=True), new


def byte_ids(text: str) -> list[int]:
    return byte_tokenizer()(text)["input_ids"]


@pytest.fixture(scope="module")
def yarn_server(tiny_eval_dir):
    """The tiny Llama served under yarn x2 (128 tokens), with one request allowed to wait."""
    with serving(tiny_eval_dir, method="yarn", factor=2.0, queue=1) as served:
        yield served


def test_models_names_the_model_and_its_target_length(yarn_server, tiny_eval_dir):
    server, client = yarn_server
    (model,) = client.models.list().data
    assert model.id == str(tiny_eval_dir) and model.owned_by == "ctxext"
    assert model.model_extra["max_model_len"] == 2 * NATIVE == server.engine.length


def test_a_greedy_completion_beyond_the_native_length_is_generate_under_the_method(yarn_server, tiny_eval_dir):
    server, client = yarn_server
    prompt = PROSE + "and"  # 79 tokens with BOS: beyond the native 64
    answer = client.completions.create(model=str(tiny_eval_dir), prompt=prompt, max_tokens=12, temperature=0)
    text, tokens = reference(tiny_eval_dir, byte_ids(prompt), 12, "yarn", factor=2.0)
    assert answer.choices[0].text == text
    assert answer.object == "text_completion" and answer.choices[0].finish_reason == "length"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (len(prompt) + 1, len(tokens))


def test_streaming_sends_the_same_answer_in_pieces(yarn_server, tiny_eval_dir):
    _, client = yarn_server
    asked = dict(model=str(tiny_eval_dir), prompt=PROSE, max_tokens=20, temperature=0)
    whole = client.completions.create(**asked)
    chunks = list(client.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len([t for t in texts if t]) > 1
    assert "".join(texts) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20


def test_a_stop_string_ends_the_answer_before_it(yarn_server, tiny_eval_dir):
    _, client = yarn_server
    asked = dict(model=str(tiny_eval_dir), prompt=PROSE, max_tokens=20, temperature=0)
    full = client.completions.create(**asked).choices[0].text
    stop = full[5:8]
    cut = full[: full.index(stop)]
    stopped = client.completions.create(**asked, stop=[stop, "never in it"])
    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == (cut, "stop")
    pieces = [c.choices[0] for c in client.completions.create(**asked, stop=stop, stream=True)]
    assert "".join(p.text for p in pieces) == cut and pieces[-1].finish_reason == "stop"


def test_sampling_follows_seed_temperature_and_top_p(yarn_server, tiny_eval_dir):
    _, client = yarn_server
    asked = dict(model=str(tiny_eval_dir), prompt=PROSE, max_tokens=24)

    def text(**settings) -> str:
        return client.completions.create(**asked, **settings).choices[0].text

    greedy = text(temperature=0)
    sampled = text(temperature=1.5, seed=7)
    assert sampled == text(temperature=1.5, seed=7) != greedy
    assert text(temperature=1.5, seed=8) != sampled
    assert text(temperature=1.5, top_p=1e-6, seed=9) == greedy  # only the most likely token is left to draw


def test_a_prompt_beyond_the_target_length_is_refused_naming_both_numbers(yarn_server, tiny_eval_dir):
    _, client = yarn_server
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=str(tiny_eval_dir), prompt="x" * 150, max_tokens=4)
    assert "151 tokens" in refused.value.message and "128 tokens" in refused.value.message
    assert refused.value.body["type"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"model": "m", "prompt": "a"', "malformed JSON body"),
        (b"[1, 2]", "body: Input should be a valid dictionary"),
        (b'{"model": "{model}", "prompt": "a", "temperature": 3}', "temperature: Input should be less than or equal"),
        (b'{"model": "{model}", "prompt": "a", "n": 2}', "n=2 is not supported"),
        (b'{"model": "{model}", "prompt": ["a", "b"]}', "one prompt per request, got 2"),
        (b'{"model": "{model}", "prompt": "a", "stop": ["", "x"]}', "stop takes up to 4 non-empty strings"),
    ],
)
def test_bad_request_bodies_are_400_with_openai_errors(yarn_server, tiny_eval_dir, body, message):
    server, _ = yarn_server
    body = body.replace(b"{model}", json.dumps(str(tiny_eval_dir))[1:-1].encode())
    request = urllib.request.Request(server.url + "/completions", body, {"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 400
    assert message in json.loads(refused.value.read())["error"]["message"]


def test_another_model_name_is_404(yarn_server):
    _, client = yarn_server
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.completions.create(model="gpt-4o", prompt="a", max_tokens=1)


def test_requests_beyond_the_queue_are_503_until_it_frees(tiny_eval_dir):
    """One generating, one waiting (--queue 1): a third request is refused at once; a stream whose client goes
    away stops its generation, and the one that waited runs."""
    with serving(tiny_eval_dir, method="yarn", target_length=8192, queue=1) as (server, client):
        asked = dict(model=str(tiny_eval_dir), prompt="a", temperature=0, stream=True)
        running = client.completions.create(**asked, max_tokens=8000)
        next(iter(running))  # it is generating
        waiting = client.completions.create(**asked, max_tokens=3)  # admitted: its headers came back
        with pytest.raises(openai.APIStatusError) as busy:
            client.completions.create(model=str(tiny_eval_dir), prompt="a", max_tokens=1)
        assert busy.value.status_code == 503 and "--queue 1" in busy.value.message
        running.close()
        assert "".join(c.choices[0].text for c in waiting) == reference(tiny_eval_dir, byte_ids("a"), 3)[0]
        deadline = time.monotonic() + 30
        while server.engine.admitted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.engine.admitted == 0
        assert client.completions.create(model=str(tiny_eval_dir), prompt="a", max_tokens=1).choices[0].text


@pytest.fixture(scope="module")
def chat_dir(tiny_eval_dir, tmp_path_factory):
    """The tiny Llama with a chat template in its tokenizer."""
    path = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_eval_dir, path)
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = TEMPLATE
    tokenizer.save_pretrained(path)
    return path


def test_chat_goes_through_the_tokenizers_chat_template(chat_dir):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why is the sky blue?"}]
    templated = "<|system|>be brief\n<|user|>why is the sky blue?\n<|assistant|>"
    with serving(chat_dir, method="self-extend", factor=2.0, params={"group_size": 3, "window": 12}) as (_, client):
        answer = client.chat.completions.create(model=str(chat_dir), messages=messages, max_tokens=10, temperature=0)
        chunks = list(
            client.chat.completions.create(
                model=str(chat_dir), messages=messages, max_tokens=10, temperature=0, stream=True
            )
        )
    ids = byte_tokenizer()(templated, add_special_tokens=False)["input_ids"]
    text, _ = reference(chat_dir, ids, 10, "self-extend", factor=2.0, group_size=3, window=12)
    assert answer.object == "chat.completion" and answer.usage.prompt_tokens == len(ids)
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content == text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text


def test_chat_without_a_template_is_400(yarn_server, tiny_eval_dir):
    _, client = yarn_server
    with pytest.raises(openai.BadRequestError, match="has no chat template; use /v1/completions"):
        client.chat.completions.create(model=str(tiny_eval_dir), messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("method", sorted(CASES))
def test_every_method_answers_as_extend_and_generate(tiny_eval_dir, method):
    case = CASES[method]
    prompt = PROSE + "and the"  # 82 tokens: beyond the native 64, within 3x and 4x
    with serving(tiny_eval_dir, method=method, factor=float(case.factor), params=case.params) as (_, client):
        answer = client.completions.create(model=str(tiny_eval_dir), prompt=prompt, max_tokens=6, temperature=0)
    text, _ = reference(tiny_eval_dir, byte_ids(prompt), 6, method, factor=case.factor, **case.params)
    assert answer.choices[0].text == text


def test_auto_serves_the_method_it_chose(tiny_eval_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / "no-tune-results"))
    prompt = PROSE + "and"
    with serving(tiny_eval_dir, method="auto", factor=2.0) as (server, client):
        answer = client.completions.create(model=str(tiny_eval_dir), prompt=prompt, max_tokens=6, temperature=0)
    chosen = (server.auto["chose"], server.auto["params"])
    assert chosen == ("rerope", {"log_scaling": True})  # the rule, with no tune result cached
    assert (
        answer.choices[0].text
        == reference(tiny_eval_dir, byte_ids(prompt), 6, "rerope", factor=2.0, log_scaling=True)[0]
    )


def test_a_patched_checkpoint_is_served_extended(tiny_eval_dir, tmp_path):
    patched = tmp_path / "patched"
    ctxext.patch_directory(tiny_eval_dir, "rerope", factor=2, output=patched, window=12)
    prompt = PROSE + "and"
    with serving(patched) as (server, client):
        answer = client.completions.create(model=str(patched), prompt=prompt, max_tokens=6, temperature=0)
        assert server.engine.length == 2 * NATIVE
    assert answer.choices[0].text == reference(patched, byte_ids(prompt), 6)[0]


# ---- the command line


@pytest.fixture(scope="module")
def serve_template(tiny_eval_dir, tmp_path_factory):
    """A workspace: ``model`` with corrupt weights (a check after the load would fail with the load's error) and
    the bad models of ``support/bad_inputs.py``."""
    root = tmp_path_factory.mktemp("serve-template") / "ws"
    root.mkdir()
    shutil.copytree(tiny_eval_dir, root / "model")
    break_weights(root / "model")
    gpt2 = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260, bos_token_id=1, eos_token_id=2)
    bad_inputs.plant_bad_models(root, byte_tokenizer(), gpt2, vocab_size=64)
    return root


@pytest.fixture
def busy_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


REFUSED = [
    *[(["serve", model, "--port", "0"], message) for model, message in bad_inputs.BAD_MODELS],
    (["serve", "{ws}/model", "--factor", "2"], "--factor / --target-length given without --method"),
    (["serve", "{ws}/model", "--window", "8"], "method parameters given without --method"),
    (["serve", "{ws}/model", "--method", "yarn"], "give exactly one of factor or target length"),
    (["serve", "{ws}/model", "--method", "nope", "--factor", "2"], "unknown method 'nope'"),
    (["serve", "{ws}/model", "--method", "yarn", "--factor", "2", "--window", "8"], "'yarn' has no parameter window"),
    (["serve", "{ws}/model", "--method", "dca", "--factor", "0.5"], "factor must be at least 1"),
    (["serve", "{ws}/model", "--port", "70000"], "--port 70000 is above"),
    (["serve", "{ws}/model", "--queue", "-1"], "--queue must be a whole number of at least 0"),
    (["serve", "{ws}/model", "--host", "no such host.invalid"], "--host no such host.invalid: not an address"),
    (["serve", "{ws}/model", "--dtype", "int8"], "invalid choice: 'int8'"),
    (["serve", "{ws}/model", "--device", "cuda:7"], "--device cuda:7"),
]


@pytest.mark.parametrize(
    "args, message", REFUSED, ids=[" ".join(args[2:]) if "{ws}/model" in args else args[1][5:] for args, _ in REFUSED]
)
def test_bad_input_is_one_line_before_the_model_loads(cli, serve_template, tmp_path, args, message):
    ws = tmp_path / "ws"
    shutil.copytree(serve_template, ws)
    expect_refusal(cli, ws, args, message)


def test_a_port_in_use_is_one_line_before_the_model_loads(cli, serve_template, tmp_path, busy_port):
    ws = tmp_path / "ws"
    shutil.copytree(serve_template, ws)
    args = ["serve", "{ws}/model", "--port", str(busy_port)]
    expect_refusal(cli, ws, args, f"cannot listen on 127.0.0.1:{busy_port}: the port is in use")


def test_ctrl_c_stops_the_server_mid_answer_with_one_line(tiny_eval_dir):
    command = [sys.executable, "-m", "ctxext.cli", "serve", str(tiny_eval_dir), "--port", "0"]
    command += ["--method", "yarn", "--target-length", "8192"]
    env = {**os.environ, **OFFLINE, "TQDM_DISABLE": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ready = process.stdout.readline()
        assert ready.startswith(f"serving '{tiny_eval_dir}' at http://127.0.0.1:"), process.stderr.read()
        url = ready.split(" at ")[1].split()[0]
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        answer = client.completions.create(model=str(tiny_eval_dir), prompt="a", max_tokens=8000, stream=True)
        next(iter(answer))  # generating
        process.send_signal(signal.SIGINT)
        rc = process.wait(timeout=30)
    finally:
        process.kill()
    err = process.stderr.read()
    assert rc == 130, err
    assert err == "ctxext: interrupted; nothing half-written was left behind\n"


# ---- the real checkpoint


@pytest.mark.real
@pytest.mark.slow
def test_smollm2_beyond_8k_answers_as_from_pretrained_extend_and_generate():
    """The SmolLM2 checkpoint (native 8192) under self-extend x2, asked a chat question after 10k+ tokens of prose:
    the server's greedy answer is ``from_pretrained`` + ``extend`` + ``generate`` on the chat template's tokens."""
    extension = dict(method="self-extend", target_length=16384, params={"group_size": 4, "window": 2048})
    haystack = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 500)[:-1]
    question = "The pass key is 72814. Remember it. " + haystack + " What is the pass key? The pass key is"
    messages = [{"role": "user", "content": question}]
    with serving("smollm2", timeout=3600, **extension) as (server, client):
        answer = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=12, temperature=0)
        tokenizer = server.engine.tokenizer
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(ids, add_special_tokens=False)["input_ids"]
    assert 8192 < answer.usage.prompt_tokens == len(ids) < 16384
    model = ctxext.from_pretrained("smollm2").eval()
    ctxext.extend(model, "self-extend", target_length=16384, group_size=4, window=2048)
    prompt = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=False)
    assert answer.choices[0].message.content == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
