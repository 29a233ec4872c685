"""An OpenAI-compatible HTTP server over one built model: /v1/completions and /v1/chat/completions
(JSON or server-sent events), /v1/models, /health.

    python serve.py                                     # bundled SmolLM2-135M-Instruct on 127.0.0.1:8000
    python serve.py --model Qwen/Qwen2.5-0.5B-Instruct --batch_size 8 --port 8080

The model runs in one worker thread. Requests wait in one FIFO queue; the worker takes up to
--batch_size of them at a time and generates them as one padded batch, to the end of its longest
row (a request arriving meanwhile waits for the next batch). Tokens go from the worker to the
event loop as they are made, so a streamed reply and many idle connections cost the loop nothing.
"""

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import random
import socket
import threading
import time
import traceback
import uuid
from typing import Annotated, Any, Literal

import jinja2
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

import cli
import detokenize
import generate
import models
import run_llm
from utils import UserError, log, resolve_device

SERVER_FLAGS = ("host", "port", "served_model_name")
# Request fields this server does not implement, with the values that ask for nothing (accepted).
# Any other value is refused with 400: silently ignoring it would return something else than asked.
UNSUPPORTED = {
    "logprobs": (None, False), "top_logprobs": (None, 0), "echo": (None, False), "suffix": (None, ""),
    "best_of": (None, 1), "logit_bias": (None, {}), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
    "tools": (None, []), "response_format": (None, {"type": "text"}),
}


class APIError(Exception):
    """A request the server refuses: the HTTP status and OpenAI's error fields."""

    def __init__(self, status, message, param=None, code=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def error_response(status, message, param=None, code=None, kind="invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


# ---- requests

class Sampled(BaseModel):
    """The fields both endpoints share. Unknown fields are kept (``model_extra``) and checked
    against UNSUPPORTED."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None  # None: the one served model
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, lt=1 << 31)] | None = None  # vLLM's extra field; 0 or -1: off
    seed: Annotated[int, Field(ge=0, lt=1 << 63)] | None = None  # the graph holds it as int64
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    n: int | None = 1


class CompletionRequest(Sampled):
    prompt: str | list[str]
    max_tokens: Annotated[int, Field(ge=1)] | None = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: str
    content: str | list[TextPart] | None = None


class ChatRequest(Sampled):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


# ---- the worker

@dataclasses.dataclass(eq=False)
class Job:
    """One request in the worker: its prompt, limits and sampling, what it has produced, and the
    asyncio queue its events go to (("text", delta), then ("end", finish_reason) or ("error", message,
    HTTP status))."""

    ids: list[int]
    max_tokens: int
    sampling: generate.Sampling
    stop: tuple[str, ...]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    cancelled: bool = False  # the client left: stop the row
    tokens: int = 0
    finish: str | None = None
    held: str = ""  # decoded text not sent yet: it may be the start of a stop string
    detokenizer: Any = None

    def put(self, *event):
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop has closed: nobody is listening
            self.cancelled = True


def stop_split(text, stops, final):
    """(text that can be sent, text to hold back, whether a stop string was found): cut at the
    first stop string; otherwise hold back the longest end of ``text`` that starts a stop string."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return text[: min(found)], "", True
    keep = 0 if final else max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - keep], text[len(text) - keep:], False


class Engine:
    """The model's one worker thread and the FIFO queue of requests it serves."""

    def __init__(self, built, config):
        self.gen, self.tokenizer, self.max_len = built.gen, built.tokenizer, built.gen.max_len
        self.eos = frozenset() if config.ignore_eos else frozenset(built.eos_ids)
        self.chunk = config.prefill_chunk
        self.waiting = collections.deque()
        self.wake = threading.Condition()
        self.closing = False
        self.batches = self.requests = 0  # served so far (/health says)
        # The tokenizer is shared by the request threads (prompts) and the worker (text):
        # one user at a time.
        self.tokenizer_lock = threading.Lock()
        self.thread = threading.Thread(target=self._work, name="tllm-engine", daemon=True)
        self.thread.start()

    def encode(self, prompt_or_messages, chat_template):
        with self.tokenizer_lock:
            return run_llm.prompt_ids(self.tokenizer, prompt_or_messages, chat_template=chat_template)

    def submit(self, job):
        with self.wake:
            if self.closing:
                raise APIError(503, "the server is shutting down", kind="server_error")
            self.waiting.append(job)
            self.wake.notify()

    def stop(self):
        """End the running and waiting requests at the next step (with an error), so that their
        connections close now rather than at the end of a long generation. (From a signal
        handler: no lock taken.)"""
        self.closing = True

    def close(self):
        with self.wake:
            self.closing = True
            self.wake.notify()
        self.thread.join(timeout=5)

    def _take(self):
        """The next batch: the oldest waiting requests, at most the batch size, in order, as long
        as they fit the KV cache together (rows are left-padded to the longest prompt)."""
        with self.wake:
            while not self.waiting and not self.closing:
                self.wake.wait()
            if self.closing:
                return []
            jobs = []
            while self.waiting and len(jobs) < self.gen.batch_size:
                job = self.waiting[0]
                if job.cancelled:  # its client left while it waited
                    self.waiting.popleft()
                    continue
                longest = max(len(j.ids) for j in [*jobs, job])
                if jobs and longest + max(j.max_tokens for j in [*jobs, job]) > self.max_len:
                    break
                jobs.append(self.waiting.popleft())
            return jobs

    def _work(self):
        while not self.closing:
            jobs = self._take()
            if jobs:
                self._run(jobs)
        with self.wake:
            for job in self.waiting:
                job.finish = "error"
                job.put("error", "the server is shutting down", 503)

    def _run(self, jobs):
        def on_step(tokens):
            for job, token in zip(jobs, tokens):
                if token is not None and not job.finish and not job.cancelled:
                    self._advance(job, token)
            return [i for i, job in enumerate(jobs) if self.closing or job.cancelled or job.finish]

        self.batches, self.requests = self.batches + 1, self.requests + len(jobs)
        try:
            with self.tokenizer_lock:
                for job in jobs:
                    job.detokenizer = detokenize.Detokenizer(self.tokenizer, job.ids)
            generate.generate(self.gen, [job.ids for job in jobs], [job.max_tokens for job in jobs], self.eos,
                              [job.sampling for job in jobs], on_step=on_step, chunk=self.chunk)
        except Exception as e:  # one failed batch fails its requests, not the server
            traceback.print_exc()
            for job in jobs:
                if not job.finish:
                    job.finish = "error"
                    job.put("error", f"generation failed: {type(e).__name__}: {e}", 500)
            return
        for job in jobs:
            if self.closing and not job.finish:
                job.finish = "error"
                job.put("error", "the server is shutting down", 503)
            elif not job.finish and not job.cancelled:  # (a row ends early only at EOS or a stop string)
                self._end(job, "length")

    def _advance(self, job, token):
        job.tokens += 1
        if token in self.eos:
            return self._end(job, "stop")
        with self.tokenizer_lock:
            text = job.detokenizer.push(token)
        if self._send(job, text, final=False):
            return self._end(job, "stop", stopped=True)
        if job.tokens >= job.max_tokens:
            self._end(job, "length")

    def _send(self, job, text, final):
        """Send decoded text, up to a stop string if one appears; True when one did."""
        if not job.stop:
            sent, job.held, found = text, "", False
        else:
            sent, job.held, found = stop_split(job.held + text, job.stop, final)
        if sent:
            job.put("text", sent)
        return found

    def _end(self, job, reason, stopped=False):
        if not stopped:
            with self.tokenizer_lock:
                tail = job.detokenizer.flush()
            if self._send(job, tail, final=True):
                reason = "stop"
        job.finish = reason
        job.put("end", reason)


# ---- the HTTP side

def create_app(engine, name, config):
    """The FastAPI app serving ``engine`` as the model ``name``; ``config`` gives the default
    sampling and number of new tokens."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    app = FastAPI(title="tllm", lifespan=lifespan, openapi_url=None)
    created = int(time.time())
    defaults = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)

    @app.exception_handler(APIError)
    async def api_error(request, e):
        return error_response(e.status, e.message, e.param, e.code, e.kind)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e):  # FastAPI says 422; OpenAI's API says 400
        problems = e.errors()
        if problems and problems[0]["type"] == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {problems[0].get('ctx', {}).get('error', '')}")
        fields = [".".join(str(p) for p in problem["loc"][1:]) for problem in problems]
        message = "; ".join(f"{field}: {p['msg']}" if field else p["msg"] for field, p in zip(fields, problems))
        return error_response(400, message, fields[0] if fields and fields[0] else None)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        return error_response(e.status_code, str(e.detail), kind="invalid_request_error" if e.status_code < 500
                              else "server_error")

    @app.exception_handler(Exception)
    async def server_error(request, e):  # (Starlette then logs the traceback)
        return error_response(500, f"{type(e).__name__}: {e}", kind="server_error")

    @app.get("/health")
    async def health():
        if not engine.thread.is_alive():
            raise APIError(503, "the model's worker thread has stopped", kind="server_error")
        return {"status": "ok", "waiting": len(engine.waiting), "batches": engine.batches,
                "requests": engine.requests}

    def card():
        return {"id": name, "object": "model", "created": created, "owned_by": "tllm",
                "max_model_len": engine.max_len}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str):
        check_model(model)
        return card()

    def check_model(model):
        if model is not None and model != name:
            raise APIError(404, f"The model `{model}` does not exist; this server serves `{name}`.", "model",
                           "model_not_found")

    async def start(request, body, prompt, chat, max_tokens, param):
        """Check the request, tokenize its prompt and queue it; the Job."""
        check_model(body.model)
        if body.n not in (None, 1):
            raise APIError(400, "only n=1 is supported", "n")
        for field, value in (body.model_extra or {}).items():
            if field in UNSUPPORTED and value not in UNSUPPORTED[field]:
                raise APIError(400, f"{field} is not supported by this server", field)
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        if len(stop) > 4:
            raise APIError(400, "stop takes at most 4 strings", "stop")
        try:
            ids = await asyncio.to_thread(engine.encode, prompt, chat)
        except (UserError, ValueError, jinja2.TemplateError) as e:
            raise APIError(400, f"cannot encode the {param}: {e}", param) from None
        if not ids:
            raise APIError(400, f"the {param} is empty", param)
        room = engine.max_len - len(ids)
        wanted = max_tokens or min(config.num_tokens, room)
        if room < 1 or len(ids) + wanted > engine.max_len:
            raise APIError(400, f"This model's maximum context length is {engine.max_len} tokens. However, you "
                                f"requested {len(ids) + wanted} tokens ({len(ids)} in the {param}, {wanted} in the "
                                f"completion). Please reduce the length of the {param} or completion.",
                           param, "context_length_exceeded")
        sampling = generate.Sampling(
            temperature=defaults["temperature"] if body.temperature is None else body.temperature,
            top_k=defaults["top_k"] if body.top_k is None else max(body.top_k, 0),
            top_p=defaults["top_p"] if body.top_p is None else body.top_p,
            # no seed: a fresh one, so that two such requests differ
            seed=random.getrandbits(63) if body.seed is None else body.seed,
        )
        job = Job(ids, wanted, sampling, tuple(s for s in stop if s), asyncio.get_running_loop(), asyncio.Queue())
        engine.submit(job)
        request.state.tokens = 0
        return job

    async def events(request, job):
        """The job's events as they come. Leaving early (the client went away) stops its row."""
        try:
            while True:
                event = await job.events.get()
                request.state.tokens = job.tokens
                yield event
                if event[0] != "text":
                    return
        finally:
            if not job.finish:
                job.cancelled = True
                request.state.note = "client disconnected"

    async def watch(request, job):
        """A client that leaves before its whole reply is ready frees its row. (A streamed reply
        notices by itself: Starlette stops the stream.)"""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.events.put_nowait(("gone",))

    async def reply(request, job, chat):
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": name}
        texts, reason = [], None
        watcher = asyncio.create_task(watch(request, job))
        try:
            async with contextlib.aclosing(events(request, job)) as stream:
                async for event in stream:
                    if event[0] == "text":
                        texts.append(event[1])
                    elif event[0] == "error":
                        raise APIError(event[2], event[1], kind="server_error")
                    elif event[0] == "gone":
                        return Response(status_code=499)  # nginx's "client closed request": for the log only
                    else:
                        reason = event[1]
        finally:
            watcher.cancel()
        text = "".join(texts)
        answer = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        return JSONResponse({**head, "choices": [{"index": 0, **answer, "logprobs": None, "finish_reason": reason}],
                             "usage": usage(job)})

    def usage(job):
        return {"prompt_tokens": len(job.ids), "completion_tokens": job.tokens,
                "total_tokens": len(job.ids) + job.tokens}

    def stream(request, job, chat, include_usage):
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": name}

        def chunk(text=None, reason=None, role=False):
            if chat:
                delta = {"role": "assistant", "content": ""} if role else {} if text is None else {"content": text}
                choice = {"delta": delta}
            else:
                choice = {"text": text or ""}
            body = {**head, "choices": [{"index": 0, **choice, "logprobs": None, "finish_reason": reason}]}
            return f"data: {json.dumps(body)}\n\n"

        async def sse():
            if chat:
                yield chunk(role=True)
            async with contextlib.aclosing(events(request, job)) as stream:
                async for event in stream:
                    if event[0] == "text":
                        yield chunk(event[1])
                    elif event[0] == "end":
                        yield chunk(reason=event[1])
                    else:
                        error = {"message": event[1], "type": "server_error", "param": None, "code": None}
                        yield f"data: {json.dumps({'error': error})}\n\n"
            if include_usage and job.finish in ("stop", "length"):
                yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage(job)})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def respond(request, body, prompt, chat, max_tokens, param):
        job = await start(request, body, prompt, chat, max_tokens, param)
        if body.stream:
            return stream(request, job, chat, bool((body.stream_options or {}).get("include_usage")))
        return await reply(request, job, chat)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "prompt must be one string (or a list of one string)", "prompt")
            prompt = prompt[0]
        return await respond(request, body, prompt, False, body.max_tokens, "prompt")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        messages = []
        for message in body.messages:
            content = message.content
            if isinstance(content, list):
                content = "".join(part.text for part in content)
            messages.append({"role": message.role, "content": content or ""})
        return await respond(request, body, messages, True, body.max_completion_tokens or body.max_tokens, "messages")

    return app


def logged(app):
    """``app`` with one log line per HTTP request: method, path, status, new tokens, seconds."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await app(scope, receive, send)
        start, status = time.perf_counter(), [500]
        state = scope.setdefault("state", {})  # what the handler's request.state holds

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            note = f" ({state['note']})" if state.get("note") else ""
            log(f"{scope['method']} {scope['path']} {status[0]} {state.get('tokens', 0)} tokens "
                f"{time.perf_counter() - start:.3f} s{note}")

    return wrapped


def bind(host, port):
    """A socket bound to host:port, not yet listening: a taken port fails before the slow build,
    and until the model is ready connections are refused rather than left waiting."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


port_number = cli.number(int, lambda port: 0 <= port <= 65535, "in [0, 65535]")


def parse(argv=None):
    """The command line: (the resolved RunConfig, the server's own flags)."""
    parser = cli.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_model_args(parser)
    cli.add_build_args(parser)
    cli.add_generation_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=port_number, default=8000, help="port to listen on (0: any free one)")
    parser.add_argument("--served_model_name", help="the model's name in the API (default: --model as given, or "
                                                    "the bundled default's name)")
    args = parser.parse_args(argv)
    # Flags that mean something for one generation but nothing here: refused rather than ignored.
    if args.seed is not None:
        raise UserError("--seed has no effect on a server: a request brings its own seed or gets a fresh one")
    if args.no_chat_template:
        raise UserError("--no_chat_template has no effect on a server: /v1/completions takes text as is, "
                        "/v1/chat/completions always applies the template")
    server = argparse.Namespace(**{flag: getattr(args, flag) for flag in SERVER_FLAGS})
    run_args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in SERVER_FLAGS})
    run_args.device = str(resolve_device(run_args.device))  # before anything slow: no GPU fails at once
    model_config = models.load_config(run_args.model, run_args.random_weights)
    return cli.run_config(run_args, model_config, serving=True), server


@cli.cli_main
def main(argv: list[str] | None = None) -> None:
    config, server = parse(argv)
    sock = bind(server.host, server.port)
    built = run_llm.build(config)
    engine = Engine(built, config)
    name = server.served_model_name or config.model_name
    app = create_app(engine, name, config)
    http = uvicorn.Server(uvicorn.Config(logged(app), log_level="warning", access_log=False,
                                         timeout_graceful_shutdown=5))
    exit_handler = http.handle_exit

    def handle_exit(sig, frame):  # Ctrl-C or SIGTERM: end the requests in flight, then uvicorn stops
        engine.stop()
        exit_handler(sig, frame)

    http.handle_exit = handle_exit
    sock.listen(http.config.backlog)  # open now (uvicorn accepts from it in a moment), so the line is true
    host, port = sock.getsockname()[:2]
    log(f"serving {name} at http://{f'[{host}]' if ':' in host else host}:{port}/v1 (batch size "
        f"{built.gen.batch_size}, {engine.max_len} tokens of KV cache per request)")
    http.run(sockets=[sock])


if __name__ == "__main__":
    main()
