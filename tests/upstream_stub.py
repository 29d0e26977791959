"""A stub model server speaking the real OpenAI and Anthropic wire formats (SSE included).

The only stub the test-suite allows: it stands in for vLLM/Ollama/a hosted API.
Behaviour is chosen by the model name so tests need no side channel:

- ``stub-1``: answers at once; streams a few chunks.
- ``stub-counting``: like ``stub-1``, but its usage counts the prompt (characters ÷ 4) instead of a fixed 9.
- ``stub-slow-stream``: streams 10 chunks 0.2 s apart (relay/disconnect tests).
- ``stub-hang``: never answers (timeout tests).
- ``stub-500``: answers 500 with an OpenAI-shaped error.
- ``*-html-502``: answers 502 with an HTML page, as a reverse proxy in front of a model server does.
- ``*-text-503``: answers 503 with a plain-text body.
- ``stub-reasoning``: chat answers include ``reasoning_content`` (one sentence, in one delta).
- ``*-reasoning-steps``: a multi-step trace (``REASONING_STEPS``): chat answers carry it as
  ``reasoning_content``, streamed a few words per delta; Anthropic answers as a ``thinking`` block
  (index 0, with a ``signature``; streamed as ``thinking_delta`` pieces then a ``signature_delta``)
  before the text block.
- ``stub-length``: chat answers end with ``finish_reason: "length"``.
- ``stub-tools``: chat answers "Let me check." and calls the request's first tool once
  (``{"city": "Paris", "unit": "celsius"}``), streamed with the arguments in 4-character pieces;
  once the messages since the last assistant turn hold a ``role: tool`` result, it answers with
  text quoting that result (non-streaming).
- ``stub-tools-parallel``: calls the first tool twice (Paris, then Tokyo), no text, one call after the other.
- ``*-echo-401`` / ``*-echo-text-401``: answers 401 echoing the request's credentials (``Authorization`` and
  ``x-api-key``) and a few other key shapes, as JSON or as plain text (secret-masking tests).
- ``*-odd-CASE``: a malformed answer from ``ODD_CHUNKS`` (streamed: one good chunk, the odd one, then the
  rest of a normal stream), ``ODD_BODIES`` or ``ODD_MESSAGES`` (not streamed: the bytes as they are, status 200). Chat answers
  for OpenAI cases, Messages answers for ``claude-odd-…`` (Anthropic cases). ``*-odd-cut``: a stream whose body
  ends after its first chunk; ``stub-odd-no-done``: a finished stream without ``[DONE]``.

``POST /v1/responses`` (the OpenAI Responses API) answers ``"The answer is forty-two."`` as one ``message``
output item (usage: input 9 or ``stub-counting``'s count, output 6), streamed as ``response.created``,
``response.output_item.added``, ``response.content_part.added``, one ``response.output_text.delta`` per word,
the ``.done`` events and ``response.completed``. ``*-reasoning-steps`` puts a ``reasoning`` item with
``REASONING_STEPS`` as its summary first (streamed as ``response.reasoning_summary_text.delta`` pieces);
``stub-length`` ends ``incomplete`` (``max_output_tokens``); ``*-odd-CASE`` answers from ``ODD_RESPONSES``
(not streamed) or ``ODD_RESPONSE_EVENTS`` (streamed: the odd event after the first delta, then the rest), and
``*-odd-resp-cut`` streams a body that ends after the first delta.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import orjson
from aiohttp import web

ANSWER_WORDS = ["The", " answer", " is", " forty", "-two", "."]
HTML_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
            b"<hr><center>nginx/1.27.0</center>\r\n</body>\r\n</html>\r\n")
TEXT_503 = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
REASONING_STEPS = ("Let me work out 17 times 23 step by step. First, 17 times 20 is 340. Next, 17 times 3 is 51. "
                   "Adding them, 340 plus 51 is 391. So the answer is 391.")
THINKING_SIGNATURE = "EqQBCkgIARABGAIiQL2stub0signature0for0the0thinking0block"


def _chunk(**fields: Any) -> bytes:
    return orjson.dumps({"id": "chatcmpl-odd", "object": "chat.completion.chunk", "created": 0, "model": "odd", **fields})


# Streamed chat chunks that break the protocol, by case name (the ``data:`` payload as sent).
ODD_CHUNKS: dict[str, bytes] = {
    "content-int": _chunk(choices=[{"index": 0, "delta": {"content": 5}, "finish_reason": None}]),
    "finish-num": _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": 7}]),
    "delta-5": _chunk(choices=[{"index": 0, "delta": 5, "finish_reason": None}]),
    "usage-lots": _chunk(choices=[], usage="lots"),
    "choices-5": _chunk(choices=[5]),
    "choices-x": _chunk(choices="x"),
    "reasoning-num": _chunk(choices=[{"index": 0, "delta": {"reasoning_content": 3}, "finish_reason": None}]),
    "tool-function": _chunk(choices=[{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "function": 5}]}}]),
    "not-json": b'{"choices": [{"index": 0, "delta": {"content": "unfinished',
    "a-list": b"[1, 2]",
}
# Anthropic stream events that break the protocol (``claude-odd-CASE``).
ODD_EVENTS: dict[str, bytes] = {
    "delta-5": orjson.dumps({"type": "content_block_delta", "index": 0, "delta": 5}),
    "text-int": orjson.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}}),
    "usage-lots": orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": "lots"}),
}
# Whole Anthropic messages that are not valid (``claude-odd-msg-…``).
ODD_MESSAGES: dict[str, bytes] = {
    "msg-content-x": orjson.dumps({"type": "message", "role": "assistant", "content": "x"}),
    "msg-content-5": orjson.dumps({"type": "message", "role": "assistant", "content": [5]}),
    "msg-text-5": orjson.dumps({"type": "message", "role": "assistant", "content": [{"type": "text", "text": 5}]}),
    "msg-stop-5": orjson.dumps({"type": "message", "role": "assistant", "content": [], "stop_reason": 5}),
    "msg-usage-lots": orjson.dumps({"type": "message", "role": "assistant", "content": [], "usage": "lots"}),
}
# Responses API answers that are not valid (``…-odd-resp-…``, not streamed).
ODD_RESPONSES: dict[str, bytes] = {
    "resp-output-x": orjson.dumps({"id": "resp_odd", "object": "response", "status": "completed", "output": "x"}),
    "resp-text-5": orjson.dumps({"id": "resp_odd", "object": "response", "status": "completed", "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": 5}]}]}),
    "resp-usage-lots": orjson.dumps({"id": "resp_odd", "object": "response", "status": "completed", "output": [], "usage": "lots"}),
}
# Responses API stream events that break the protocol (``…-odd-resp-…`` with ``stream: true``).
ODD_RESPONSE_EVENTS: dict[str, bytes] = {
    "resp-delta-5": orjson.dumps({"type": "response.output_text.delta", "item_id": "msg_odd", "output_index": 0,
                                  "content_index": 0, "delta": 5}),
    "resp-not-json": b'{"type": "response.output_text.delta", "delta": "unfinished',
}
# Whole 200 bodies that are not a valid answer, by case name.
ODD_BODIES: dict[str, bytes] = {
    "body-text": b"hello, I am not JSON",
    "body-truncated": b'{"id": "chatcmpl-odd", "choices": [{"index": 0, "message": {"role": "assistant", "content": "The ans',
    "body-empty": b"",
    "body-list": b"[1, 2, 3]",
    "body-choices-x": orjson.dumps({"id": "x", "choices": "x"}),
    "body-content-int": orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": 5}}]}),
    "body-tool-function": orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": 5}]},
        "finish_reason": "tool_calls"}]}),
    "body-usage-lots": orjson.dumps({"id": "x", "choices": [], "usage": "lots"}),
    "body-choices-5": orjson.dumps({"id": "x", "choices": [5]}),
    "body-message-5": orjson.dumps({"id": "x", "choices": [{"index": 0, "message": 5}]}),
    "body-finish-num": orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                                            "finish_reason": 7}]}),
    "body-reasoning-num": orjson.dumps({"id": "x", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                                                                                       "reasoning_content": 3}}]}),
    "body-tokens-negative": orjson.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": -5, "completion_tokens": 1}}),
}


def _pieces(text: str, words: int = 3) -> list[str]:
    """``text`` in pieces of a few words, as a model streams it."""
    split = text.split(" ")
    return [" ".join(split[i:i + words]) + (" " if i + words < len(split) else "") for i in range(0, len(split), words)]


class _Reply(Exception):
    """Short-circuits a handler with a ready response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__("reply")
        self.response = response


@web.middleware
async def _replies(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except _Reply as reply:
        return reply.response


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prompt_tokens(body: dict[str, Any]) -> int:
    """9, as a tiny prompt costs; ``stub-counting`` reports its messages' characters ÷ 4, as a real model would."""
    if body.get("model") != "stub-counting":
        return 9
    return max(1, sum(len(str(m.get("content") or "")) for m in body.get("messages") or []) // 4)


class UpstreamStub:
    """Runs in its own thread and event loop; records what it saw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.cancelled = 0
        self.stream_chunks_sent = 0
        self.model_lists = 0  # GET /models answered (health probes and model listings)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> UpstreamStub:
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        async def _stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(middlewares=[_replies])
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/responses", self.responses)
        app.router.add_post("/v1/messages", self.messages)
        app.router.add_post("/v1/messages/count_tokens", self.count_tokens)
        app.router.add_get("/v1/models", self.models)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    # -- helpers ------------------------------------------------------------------
    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = orjson.loads(await request.read())
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        model = body.get("model", "")
        if model == "stub-hang":
            await asyncio.sleep(3600)
        if model == "stub-500":
            raise _Reply(web.json_response({"error": {"message": "upstream exploded", "type": "server_error", "code": None}}, status=500))
        if model.endswith("-html-502"):
            raise _Reply(web.Response(status=502, body=HTML_502, content_type="text/html"))
        if model.endswith("-echo-401") or model.endswith("-echo-text-401"):
            sent = f"{request.headers.get('Authorization', '')} {request.headers.get('x-api-key', '')}"
            message = (f"Incorrect API key provided: {sent}. Other keys seen: sk-ant-api03-{'a' * 20} "
                       f"sk-proj-{'b' * 20} AKIA{'C' * 16}")
            if model.endswith("-echo-401"):
                raise _Reply(web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": "invalid_api_key"}},
                                               status=401))
            raise _Reply(web.Response(status=401, text=message, content_type="text/plain"))
        if model.endswith("-text-503"):
            raise _Reply(web.Response(status=503, text=TEXT_503, content_type="text/plain"))
        return body

    async def models(self, request: web.Request) -> web.Response:
        self.model_lists += 1
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "stub"}
                for m in ("stub-1", "stub-slow-stream", "stub-hang", "stub-500", "stub-reasoning")]
        return web.json_response({"object": "list", "data": data})

    async def _sse(self, request: web.Request, events: list[bytes], delay: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            for event in events:
                await response.write(event)
                self.stream_chunks_sent += 1
                if delay:
                    await asyncio.sleep(delay)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        await response.write_eof()
        return response

    # -- OpenAI ------------------------------------------------------------------------
    @staticmethod
    def _tool_result(body: dict[str, Any]) -> str | None:
        """The content of the last ``role: tool`` message since the last assistant turn, if any."""
        result = None
        for message in body.get("messages") or []:
            if message.get("role") == "assistant":
                result = None
            elif message.get("role") == "tool":
                result = str(message.get("content"))
        return result

    @staticmethod
    def _tool_calls(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
        """The text and tool calls a ``stub-tools*`` model answers with, or None when it answers with text."""
        model = body["model"]
        if not model.startswith("stub-tools") or not body.get("tools"):
            return None
        if UpstreamStub._tool_result(body) is not None:
            return None
        name = body["tools"][0]["function"]["name"]
        cities = ["Paris", "Tokyo"] if model == "stub-tools-parallel" else ["Paris"]
        calls = [{"id": f"call_stub{i:04d}{city.lower()}", "type": "function",
                  "function": {"name": name, "arguments": orjson.dumps({"city": city, "unit": "celsius"}).decode()}}
                 for i, city in enumerate(cities)]
        return ("" if model == "stub-tools-parallel" else "Let me check."), calls

    async def _chat_with_tools(self, request: web.Request, body: dict[str, Any], text: str, calls: list[dict[str, Any]]) -> web.StreamResponse:
        model, created = body["model"], int(time.time())
        completion_tokens = 7 * len(calls) + (3 if text else 0)
        usage = {"prompt_tokens": 9, "completion_tokens": completion_tokens, "total_tokens": 9 + completion_tokens}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text or None, "tool_calls": calls, "refusal": None}
            return web.json_response({
                "id": "chatcmpl-stub", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": None}], "usage": usage,
            })
        base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        chunks = [chunk({"role": "assistant", "content": "" if text else None, "refusal": None})]
        words = text.split(" ") if text else []
        chunks += [chunk({"content": piece}) for piece in words[:1] + [" " + word for word in words[1:]]]
        for index, call in enumerate(calls):  # as OpenAI streams them: id, type and name first, then argument pieces
            chunks.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            arguments = call["function"]["arguments"]
            for start in range(0, len(arguments), 4):
                chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[start:start + 4]}}]}))
        chunks.append(chunk({}, "tool_calls"))
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks.append({**base, "choices": [], "usage": usage})
        events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
        return await self._sse(request, events, 0.0)

    async def _odd(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A malformed answer (``*-odd-CASE``): see ``ODD_CHUNKS``, ``ODD_EVENTS`` and ``ODD_BODIES``."""
        case = body["model"].split("-odd-", 1)[1]
        if case in ODD_BODIES or case in ODD_MESSAGES:
            return web.Response(status=200, body=ODD_BODIES[case] if case in ODD_BODIES else ODD_MESSAGES[case], content_type="application/json")
        if body["model"].startswith("claude-"):
            def ev(data: bytes) -> bytes:
                return b"event: " + (orjson.loads(data).get("type", "x") if data.startswith(b"{") else "x").encode() + b"\ndata: " + data + b"\n\n"
            start = orjson.dumps({"type": "message_start", "message": {"id": "msg_odd", "type": "message", "role": "assistant",
                                  "model": body["model"], "content": [], "usage": {"input_tokens": 3, "output_tokens": 0}}})
            block = orjson.dumps({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            good = orjson.dumps({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})
            tail = [orjson.dumps({"type": "content_block_stop", "index": 0}),
                    orjson.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
                    orjson.dumps({"type": "message_stop"})]
            if case == "cut":  # the body ends in the middle of the answer
                return await self._sse(request, [ev(e) for e in (start, block, good)], 0.0)
            return await self._sse(request, [ev(e) for e in (start, block, good, ODD_EVENTS[case], *tail)], 0.0)
        good = _chunk(choices=[{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}])
        end = _chunk(choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if case == "cut":  # the body ends in the middle of the answer: no finish reason, no [DONE]
            return await self._sse(request, [b"data: " + good + b"\n\n"], 0.0)
        if case == "no-done":  # finished, but without the [DONE] line: a whole answer all the same
            return await self._sse(request, [b"data: " + c + b"\n\n" for c in (good, end)], 0.0)
        return await self._sse(request, [b"data: " + c + b"\n\n" for c in (good, ODD_CHUNKS[case], end)] + [b"data: [DONE]\n\n"], 0.0)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body["model"]
        if "-odd-" in model:
            return await self._odd(request, body)
        tool_answer = self._tool_calls(body)
        if tool_answer is not None:
            return await self._chat_with_tools(request, body, *tool_answer)
        result = self._tool_result(body) if model.startswith("stub-tools") and not body.get("stream") else None
        if result is not None:
            message = {"role": "assistant", "content": f"The tool said: {result}"}
            return web.json_response({
                "id": "chatcmpl-stub", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
            })
        reasoning = "First, think: 6 times 7 is 42." if model == "stub-reasoning" else None
        if model.endswith("reasoning-steps"):
            reasoning = REASONING_STEPS
        words = ANSWER_WORDS * 2 if model == "stub-slow-stream" else ANSWER_WORDS
        finish = "length" if model == "stub-length" else "stop"
        created = int(time.time())
        if body.get("stream"):
            chunks = []
            base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": model}
            chunks.append({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            for piece in (_pieces(reasoning) if model.endswith("reasoning-steps") else [reasoning]) if reasoning else []:
                chunks.append({**base, "choices": [{"index": 0, "delta": {"reasoning_content": piece}, "finish_reason": None}]})
            for word in words:
                chunks.append({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
            chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                prompt = _prompt_tokens(body)
                chunks.append({**base, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": len(words), "total_tokens": prompt + len(words)}})
            events = [b"data: " + orjson.dumps(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]
            return await self._sse(request, events, 0.2 if model == "stub-slow-stream" else 0.0)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(words)}
        if reasoning:
            message["reasoning_content"] = reasoning
        n = min(max(body["n"], 1), 8) if isinstance(body.get("n"), int) else 1  # a fuzzer's n=10**18 must not stall the stub
        return web.json_response({
            "id": "chatcmpl-stub", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": i, "message": message, "finish_reason": finish, "logprobs": None} for i in range(n)],
            "usage": {"prompt_tokens": _prompt_tokens(body), "completion_tokens": len(words) * n,
                      "total_tokens": _prompt_tokens(body) + len(words) * n},
        })

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        text = "".join(ANSWER_WORDS)
        if body.get("stream"):
            base = {"id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body["model"]}
            events = [b"data: " + orjson.dumps({**base, "choices": [{"index": 0, "text": w, "finish_reason": None, "logprobs": None}]}) + b"\n\n" for w in ANSWER_WORDS]
            events.append(b"data: [DONE]\n\n")
            return await self._sse(request, events, 0.0)
        return web.json_response({
            "id": "cmpl-stub", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        })

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({
            "object": "list", "model": body["model"],
            "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(inputs))],
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        })

    # -- OpenAI Responses API -----------------------------------------------------------------
    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = str(body.get("model"))
        odd = model.split("-odd-", 1)[1] if "-odd-" in model else None
        if odd in ODD_RESPONSES and not body.get("stream"):
            return web.Response(status=200, body=ODD_RESPONSES[odd], content_type="application/json")
        created = int(time.time())
        reasoning = REASONING_STEPS if model.endswith("reasoning-steps") else None
        incomplete = model == "stub-length"
        prompt = 9 if model != "stub-counting" else max(1, len(orjson.dumps(body.get("input"))) // 4)
        usage = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": len(ANSWER_WORDS),
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + len(ANSWER_WORDS)}
        text = "".join(ANSWER_WORDS)
        message = {"id": "msg_stub", "type": "message", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}
        reasoning_item = {"id": "rs_stub", "type": "reasoning", "summary": [{"type": "summary_text", "text": reasoning}]}

        def response(status: str, output: list[dict[str, Any]], with_usage: bool) -> dict[str, Any]:
            return {"id": "resp_stub", "object": "response", "created_at": created, "model": model, "status": status,
                    "error": None, "incomplete_details": {"reason": "max_output_tokens"} if incomplete and status != "in_progress" else None,
                    "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
                    "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                    "usage": usage if with_usage else None}

        output = ([reasoning_item] if reasoning else []) + [message]
        final = "incomplete" if incomplete else "completed"
        if not body.get("stream"):
            return web.json_response(response(final, output, True))
        seq = iter(range(10_000))

        def ev(kind: str, **fields: Any) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, "sequence_number": next(seq), **fields}) + b"\n\n"

        events = [ev("response.created", response=response("in_progress", [], False))]
        index = 0
        if reasoning:
            events.append(ev("response.output_item.added", output_index=0, item={**reasoning_item, "summary": []}))
            events.append(ev("response.reasoning_summary_part.added", item_id="rs_stub", output_index=0, summary_index=0,
                             part={"type": "summary_text", "text": ""}))
            events += [ev("response.reasoning_summary_text.delta", item_id="rs_stub", output_index=0, summary_index=0, delta=piece)
                       for piece in _pieces(reasoning)]
            events.append(ev("response.reasoning_summary_text.done", item_id="rs_stub", output_index=0, summary_index=0, text=reasoning))
            events.append(ev("response.reasoning_summary_part.done", item_id="rs_stub", output_index=0, summary_index=0,
                             part={"type": "summary_text", "text": reasoning}))
            events.append(ev("response.output_item.done", output_index=0, item=reasoning_item))
            index = 1
        events.append(ev("response.output_item.added", output_index=index,
                         item={**message, "status": "in_progress", "content": []}))
        events.append(ev("response.content_part.added", item_id="msg_stub", output_index=index, content_index=0,
                         part={"type": "output_text", "text": "", "annotations": []}))
        deltas = [ev("response.output_text.delta", item_id="msg_stub", output_index=index, content_index=0, delta=word, logprobs=[])
                  for word in ANSWER_WORDS]
        if odd == "resp-cut":
            return await self._sse(request, [*events, deltas[0]], 0.0)
        if odd in ODD_RESPONSE_EVENTS:
            deltas.insert(1, b"event: response.output_text.delta\ndata: " + ODD_RESPONSE_EVENTS[odd] + b"\n\n")
        events += deltas
        events.append(ev("response.output_text.done", item_id="msg_stub", output_index=index, content_index=0, text=text, logprobs=[]))
        events.append(ev("response.content_part.done", item_id="msg_stub", output_index=index, content_index=0,
                         part=message["content"][0]))
        events.append(ev("response.output_item.done", output_index=index, item=message))
        events.append(ev("response." + final, response=response(final, output, True)))
        return await self._sse(request, events, 0.2 if model == "stub-slow-stream" else 0.0)

    # -- Anthropic --------------------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        model = body["model"]
        if "-odd-" in model:
            return await self._odd(request, body)
        text = "".join(ANSWER_WORDS)
        thinking = REASONING_STEPS if model.endswith("reasoning-steps") else None
        if body.get("stream"):
            def ev(name: str, data: dict[str, Any]) -> bytes:
                return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

            events = [ev("message_start", {"type": "message_start", "message": {
                "id": "msg_stub", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 0}}})]
            index = 0
            if thinking:
                events.append(ev("content_block_start", {"type": "content_block_start", "index": 0,
                                                         "content_block": {"type": "thinking", "thinking": "", "signature": ""}}))
                for piece in _pieces(thinking):
                    events.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                             "delta": {"type": "thinking_delta", "thinking": piece}}))
                events.append(ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE}}))
                events.append(ev("content_block_stop", {"type": "content_block_stop", "index": 0}))
                index = 1
            events.append(ev("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}))
            for word in ANSWER_WORDS:
                events.append(ev("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}}))
            events.append(ev("content_block_stop", {"type": "content_block_stop", "index": index}))
            events.append(ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": {"output_tokens": 6}}))
            events.append(ev("message_stop", {"type": "message_stop"}))
            return await self._sse(request, events, 0.0)
        return web.json_response({
            "id": "msg_stub", "type": "message", "role": "assistant", "model": model,
            "content": ([{"type": "thinking", "thinking": thinking, "signature": THINKING_SIGNATURE}] if thinking else [])
                       + [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 9, "output_tokens": 6},
        })

    async def count_tokens(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response({"input_tokens": 12})
