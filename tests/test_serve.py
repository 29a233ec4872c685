"""serve.py as its clients see it: one real server process on 127.0.0.1 for the whole file (a tiny
random-weight Llama with the bundled SmolLM2 tokenizer, eager on the CPU, batches of 4), driven
by the official openai client (raw httpx where the client cannot send the request): both
endpoints streamed and not, seeds, stop strings, errors, 32 concurrent clients, a client that
leaves mid-stream."""

import concurrent.futures
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

import models

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30  # seconds, for any one request
START_TIMEOUT = 120


class Server:
    def __init__(self, url, model, log_path):
        self.url, self.model, self.log_path = url, model, log_path

    def client(self):
        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=TIMEOUT)

    def log(self):
        return self.log_path.read_text()


def wait_until_serving(process, log_path):
    """The server's /v1 URL once its line is logged and /health answers; fails with the log if
    the process ends or takes too long."""
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve.py exited with {process.returncode}:\n{log_path.read_text()}")
        found = url or re.search(r"serving .* at (http://127\.0\.0\.1:\d+/v1)", log_path.read_text())
        if found:
            url = found if isinstance(found, str) else found.group(1)
            try:
                if httpx.get(url.removesuffix("/v1") + "/health", timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    pytest.fail(f"serve.py was not serving after {START_TIMEOUT} s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def server(tiny_chat_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("serve")
    log_path = work / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TLLM_BUILD_CACHE": str(work / "builds")}
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a core per worker, as conftest.py gives the tests
        env["OMP_NUM_THREADS"] = "1"
    # tiny_chat_dir holds the SmolLM2 tokenizer too; --tokenizer names it as a user would
    command = [sys.executable, str(ROOT / "serve.py"), "--model", str(tiny_chat_dir), "--tokenizer",
               str(models.smollm2_dir()), "--backend", "eager", "--device", "cpu", "--batch_size", "4", "--port", "0"]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        yield Server(wait_until_serving(process, log_path), str(tiny_chat_dir), log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def complete(client, model, prompt, **kwargs):
    """A non-streamed completion's (text, finish reason, usage)."""
    reply = client.completions.create(model=model, prompt=prompt, **kwargs)
    assert reply.object == "text_completion" and len(reply.choices) == 1
    return reply.choices[0].text, reply.choices[0].finish_reason, reply.usage


def still_serving(server):
    text, reason, usage = complete(server.client(), server.model, "Still there?", max_tokens=2, temperature=0)
    assert reason in ("stop", "length") and usage.completion_tokens >= 1


def test_health_and_models(server):
    health = httpx.get(server.url.removesuffix("/v1") + "/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    listed = server.client().models.list().data
    assert [m.id for m in listed] == [server.model]  # its name as --model gave it
    assert listed[0].max_model_len == 4096  # the serving default (the model has more positions)
    assert server.client().models.retrieve(server.model).id == server.model


def test_completion_streamed_equals_whole(server):
    client = server.client()
    text, reason, usage = complete(client, server.model, "The capital of France is", max_tokens=12, temperature=0)
    assert text and reason in ("stop", "length")
    assert usage.prompt_tokens > 0 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reason == "stop" or usage.completion_tokens == 12
    chunks = list(client.completions.create(model=server.model, prompt="The capital of France is", max_tokens=12,
                                            temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reason
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens and not chunks[-1].choices
    # a list of one prompt is the same request
    assert complete(client, server.model, ["The capital of France is"], max_tokens=12, temperature=0)[0] == text


def test_chat_streamed_equals_whole(server):
    client = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(model=server.model, messages=messages, max_completion_tokens=10,
                                           temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    text, reason = reply.choices[0].message.content, reply.choices[0].finish_reason
    assert text and reason in ("stop", "length") and reply.usage.completion_tokens <= 10
    chunks = list(client.chat.completions.create(model=server.model, messages=messages, max_tokens=10, temperature=0,
                                                 stream=True))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == reason
    # content as a list of text parts is the same message
    parts = [messages[0], {"role": "user", "content": [{"type": "text", "text": "Name a "},
                                                        {"type": "text", "text": "colour."}]}]
    again = client.chat.completions.create(model=server.model, messages=parts, max_tokens=10, temperature=0)
    assert again.choices[0].message.content == text


def test_seed_repeats_a_sample(server):
    client = server.client()
    prompt = "Once upon a time"

    def sample(**kwargs):
        return complete(client, server.model, prompt, max_tokens=8, temperature=1.0, **kwargs)[0]

    first = sample(seed=1234)
    assert sample(seed=1234) == first
    assert sample(seed=4321) != first
    assert sample() != sample()  # no seed: a fresh one each time
    # top_k (vLLM's extra field) and top_p keep a seeded sample repeatable
    narrow = sample(seed=1234, top_p=0.9, extra_body={"top_k": 5})
    assert sample(seed=1234, top_p=0.9, extra_body={"top_k": 5}) == narrow


def test_stop_strings(server):
    client = server.client()
    whole, _, _ = complete(client, server.model, "Count with me:", max_tokens=16, temperature=0)
    stop = whole[len(whole) // 2 : len(whole) // 2 + 3]
    assert stop.strip(), whole
    cut = whole[: whole.index(stop)]
    text, reason, _ = complete(client, server.model, "Count with me:", max_tokens=16, temperature=0,
                               stop=[stop, "\x00"])
    assert (text, reason) == (cut, "stop")
    chunks = list(client.completions.create(model=server.model, prompt="Count with me:", max_tokens=16, temperature=0,
                                            stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut and chunks[-1].choices[0].finish_reason == "stop"


def test_bad_requests_get_openai_errors(server):
    client, base = server.client(), server.url
    post = httpx.Client(base_url=base, timeout=TIMEOUT)

    def error_of(response, status):
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        return error

    error_of(post.post("/chat/completions", content=b'{"model": "x", "messages": [',
                       headers={"Content-Type": "application/json"}), 400)
    assert error_of(post.post("/chat/completions", json={"model": server.model}), 400)["param"] == "messages"
    error_of(post.post("/completions", json={"prompt": "a", "max_tokens": 0}), 400)
    error_of(post.post("/completions", json={"prompt": ["a", "b"]}), 400)
    error_of(post.post("/completions", json={"prompt": [1, 2, 3]}), 400)
    error_of(post.post("/completions", json={"prompt": "a", "temperature": -1}), 400)
    error_of(post.post("/completions", json={"prompt": "a", "logprobs": 2}), 400)
    # (past the graph's int64 inputs: refused alone, not failing the batch it would join)
    error_of(post.post("/completions", json={"prompt": "a", "top_k": 1 << 70}), 400)
    error_of(post.post("/completions", json={"prompt": "a", "seed": -1}), 400)
    error_of(post.get("/nowhere"), 404)
    still_serving(server)

    with pytest.raises(openai.NotFoundError) as e:
        complete(client, "no-such-model", "Hello", max_tokens=2)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, server.model, "Hello", max_tokens=5000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "word " * 5000}])
    assert e.value.code == "context_length_exceeded" and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, server.model, "Hello", max_tokens=2, n=2)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError):
        list(client.completions.create(model=server.model, prompt="Hello", max_tokens=5000, stream=True))
    still_serving(server)


def test_concurrent_clients_get_their_own_answers(server):
    """32 clients, 3 requests each, each asking for its own greedy completion: every answer
    arrives whole and equals what the same request got alone."""
    prompts = [f"Request {i}: " + "tell me more " * (i % 5) for i in range(96)]
    client = server.client()
    expected = [complete(client, server.model, p, max_tokens=4, temperature=0)[0] for p in prompts]
    assert len(set(expected)) > 48  # answers that differ, so that a mix-up shows
    before = httpx.get(server.url.removesuffix("/v1") + "/health", timeout=TIMEOUT).json()

    def user(first):
        own = server.client()
        got = []
        for i in range(first, 96, 32):
            text, reason, usage = complete(own, server.model, prompts[i], max_tokens=4, temperature=0)
            assert reason in ("stop", "length") and usage.completion_tokens <= 4
            got.append((i, text))
        return got

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        answers = [a for got in pool.map(user, range(32), timeout=60) for a in got]
    assert sorted(i for i, _ in answers) == list(range(96))
    assert all(text == expected[i] for i, text in answers)
    after = httpx.get(server.url.removesuffix("/v1") + "/health", timeout=TIMEOUT).json()
    assert after["requests"] - before["requests"] == 96
    assert after["batches"] - before["batches"] < 96 * 0.75  # waiting requests ran together


def served_at_once_then_logged(server, marker):
    """After a client left a 1000-token request: the next request is answered within 3 s (1000
    tokens take the CPU well over that, so it did not wait for them), and the server logs a line
    holding ``marker``, which is returned."""
    start = time.monotonic()
    still_serving(server)
    assert time.monotonic() - start < 3
    deadline = time.monotonic() + 5
    while marker not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    return next(line for line in server.log().splitlines() if marker in line)


def test_client_leaving_mid_stream_frees_its_row(server):
    client = server.client()
    stream = client.completions.create(model=server.model, prompt="A long story:", max_tokens=1000,
                                       temperature=0, stream=True)
    for _, _ in zip(range(2), stream):
        pass
    stream.close()
    line = served_at_once_then_logged(server, "(client disconnected)")
    assert int(re.search(r" (\d+) tokens", line).group(1)) < 1000


def test_client_leaving_before_a_whole_reply_frees_its_row(server):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/completions", json={"prompt": "A long story:", "max_tokens": 1000}, timeout=0.5)
    line = served_at_once_then_logged(server, " 499 ")
    assert re.search(r"POST /v1/completions 499 \d+ tokens .* \(client disconnected\)", line)
