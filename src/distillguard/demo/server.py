"""`distillguard demo-model`: the demo model behind the OpenAI and Anthropic wire formats.

Served with ``aiohttp.web``: this server is a stand-in for vLLM or a hosted API,
not part of the hot path, so clarity beats the last microsecond. Each request
is sampled in full (a few milliseconds) and then written out, token by token
when streaming, as the real APIs do: ``reasoning_content`` deltas before the
answer for OpenAI clients, a ``thinking`` block for Anthropic clients.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import time
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from distillguard.demo.model import DemoModel, Generation

__all__ = ["DEFAULT_MODELS", "build_app", "demo_model_command"]

log = logging.getLogger("distillguard.demo")
DEFAULT_MODELS = ("demo-1", "demo-2")


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _flatten(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") in ("text", None))
    return ""


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise _BadRequest(422, f"{name}: expected a number between {lo} and {hi}, got {value!r}")
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _BadRequest(422, f"{name}: expected an integer between {lo} and {hi}, got {value!r}")
    return value


class DemoServer:
    def __init__(self, model: DemoModel, models: tuple[str, ...] = DEFAULT_MODELS) -> None:
        self.model = model
        self.models = models
        self.tokenizer_json = model.tokenizer.to_hf_json().encode()

    # -- shared ------------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise _BadRequest(400, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _BadRequest(422, "body must be a JSON object")
        if body.get("model") not in self.models:
            raise _BadRequest(404, f"The model '{body.get('model')}' does not exist; this server has {list(self.models)}")
        return body

    def _sample(self, body: dict[str, Any], prompt: str, index: int, *, want_reasoning: bool) -> tuple[Generation | None, Generation]:
        stop = body.get("stop") or body.get("stop_sequences")
        if isinstance(stop, str):
            stop = [stop]
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) for s in stop)):
            raise _BadRequest(422, "stop: expected a string or a list of strings")
        max_tokens = _integer(body, "max_tokens", int(body.get("max_completion_tokens") or 256), 1, 8192)
        temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
        top_logprobs = _integer(body, "top_logprobs", 0, 0, 20) if body.get("logprobs") else 0
        if body.get("logprobs") is not None and not isinstance(body.get("logprobs"), bool | int):
            raise _BadRequest(422, "logprobs: expected a boolean (chat) or an integer (completions)")
        if isinstance(body.get("logprobs"), int) and not isinstance(body.get("logprobs"), bool):
            top_logprobs = min(int(body["logprobs"]), 20)
        raw_bias = body.get("logit_bias") or {}
        if not isinstance(raw_bias, dict):
            raise _BadRequest(422, "logit_bias: expected an object mapping token ids to biases")
        try:
            bias = {int(k): float(v) for k, v in raw_bias.items()}
        except (TypeError, ValueError):
            raise _BadRequest(422, "logit_bias: keys must be token ids (integers as strings) and values numbers") from None
        if any(not -100 <= v <= 100 for v in bias.values()):
            raise _BadRequest(422, "logit_bias: values must be between -100 and 100")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise _BadRequest(422, "seed: expected an integer")
        rng = np.random.default_rng(None if seed is None else [seed, index])
        prompt_ids = self.model.tokenizer.encode(prompt)
        reasoning = None
        if want_reasoning and self.model.wants_reasoning(prompt):
            reasoning = self.model.generate(
                prompt_ids, max_tokens=max(8, max_tokens // 3), temperature=temperature, top_p=top_p, rng=rng,
                logit_bias=bias, min_tokens=8,
            )
        answer = self.model.generate(
            prompt_ids, max_tokens=max_tokens, temperature=temperature, top_p=top_p, rng=rng, logit_bias=bias,
            stop=stop, top_logprobs=top_logprobs, min_tokens=_integer(body, "min_tokens", 0, 0, 8192),
        )
        if stop:
            text = self.model.tokenizer.decode(answer.ids)
            for s in stop:
                if s and s in text:
                    answer.finish_reason = "stop"
        return reasoning, answer

    def _text(self, gen: Generation, stop: Any = None) -> str:
        text = self.model.tokenizer.decode(gen.ids)
        for s in ([stop] if isinstance(stop, str) else stop or []):
            if s and s in text:
                text = text[: text.index(s)]
        return text

    def _pieces(self, gen: Generation) -> list[str]:
        """The text of each token in turn, for streaming (one decoding pass)."""
        return self.model.tokenizer.decode_pieces(gen.ids)

    def _chat_logprobs(self, gen: Generation) -> dict[str, Any]:
        tok = self.model.tokenizer
        content = []
        for i, (token_id, logprob) in enumerate(zip(gen.ids, gen.logprobs, strict=False)):
            token = tok.token_text(token_id)
            tops = gen.top_logprobs[i] if gen.top_logprobs else []
            content.append({
                "token": token, "logprob": logprob, "bytes": list(token.encode()),
                "top_logprobs": [{"token": tok.token_text(t), "logprob": lp, "bytes": list(tok.token_text(t).encode())} for t, lp in tops],
            })
        return {"content": content}

    @staticmethod
    def _error(protocol: str, status: int, message: str) -> web.Response:
        if protocol == "anthropic":
            kind = {400: "invalid_request_error", 404: "not_found_error", 422: "invalid_request_error"}.get(status, "api_error")
            return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)
        return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                            "code": "model_not_found" if status == 404 else None}}, status=status)

    async def _sse_start(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        return response

    # -- OpenAI ----------------------------------------------------------------------------
    async def models_list(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "created": 1_760_000_000 + i * 86_400, "owned_by": "distillguard-demo"}
            for i, m in enumerate(self.models)]})

    async def tokenizer(self, request: web.Request) -> web.Response:
        return web.Response(body=self.tokenizer_json, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest(422, "messages: expected a non-empty list")
            prompt = next((_flatten(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
            n = _integer(body, "n", 1, 1, 16)
            samples = [self._sample(body, prompt, i, want_reasoning=True) for i in range(n)]
        except _BadRequest as exc:
            return self._error("openai", exc.status, exc.message)
        prompt_tokens = sum(len(self.model.tokenizer.encode(_flatten(m.get("content")))) for m in messages if isinstance(m, dict))
        completion_tokens = sum(len(a.ids) + (len(r.ids) if r else 0) for r, a in samples)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
        cid, created, model = "chatcmpl-" + secrets.token_hex(12), int(time.time()), body["model"]
        stop = body.get("stop")
        if not body.get("stream"):
            choices = []
            for i, (reasoning, answer) in enumerate(samples):
                message: dict[str, Any] = {"role": "assistant", "content": self._text(answer, stop)}
                if reasoning is not None:
                    message["reasoning_content"] = self._text(reasoning)
                choices.append({"index": i, "message": message, "finish_reason": answer.finish_reason,
                                "logprobs": self._chat_logprobs(answer) if body.get("logprobs") else None})
            return web.json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                                      "choices": choices, "usage": usage})
        response = await self._sse_start(request)
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}

        async def emit(payload: dict[str, Any]) -> None:
            await response.write(b"data: " + orjson.dumps({**base, **payload}) + b"\n\n")

        for i, (reasoning, answer) in enumerate(samples):
            await emit({"choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            if reasoning is not None:
                for piece in self._pieces(reasoning):
                    await emit({"choices": [{"index": i, "delta": {"reasoning_content": piece}, "finish_reason": None}]})
            text = self._text(answer, stop)
            sent = 0
            for j, piece in enumerate(self._pieces(answer)):
                piece = piece[: max(0, len(text) - sent)]
                if not piece:
                    break
                sent += len(piece)
                delta: dict[str, Any] = {"index": i, "delta": {"content": piece}, "finish_reason": None}
                if body.get("logprobs"):
                    delta["logprobs"] = {"content": self._chat_logprobs(Generation([answer.ids[j]], "", [answer.logprobs[j]],
                                                                                    [answer.top_logprobs[j]] if answer.top_logprobs else []))["content"]}
                await emit({"choices": [delta]})
            await emit({"choices": [{"index": i, "delta": {}, "finish_reason": answer.finish_reason}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await emit({"choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            prompt = body.get("prompt")
            if isinstance(prompt, list):
                prompt = " ".join(str(p) for p in prompt)
            if not isinstance(prompt, str):
                raise _BadRequest(422, "prompt: expected a string")
            body.setdefault("max_tokens", 16)
            n = _integer(body, "n", 1, 1, 16)
            samples = [self._sample(body, prompt, i, want_reasoning=False)[1] for i in range(n)]
        except _BadRequest as exc:
            return self._error("openai", exc.status, exc.message)
        tok = self.model.tokenizer
        prompt_tokens = len(tok.encode(prompt))
        completion_tokens = sum(len(a.ids) for a in samples)
        cid, model = "cmpl-" + secrets.token_hex(12), body["model"]

        def logprobs(gen: Generation) -> dict[str, Any] | None:
            if not body.get("logprobs"):
                return None
            return {"tokens": [tok.token_text(t) for t in gen.ids], "token_logprobs": gen.logprobs,
                    "top_logprobs": [{tok.token_text(t): lp for t, lp in tops} for tops in gen.top_logprobs] or None,
                    "text_offset": []}

        if not body.get("stream"):
            return web.json_response({
                "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": i, "text": self._text(a, body.get("stop")), "finish_reason": a.finish_reason, "logprobs": logprobs(a)}
                            for i, a in enumerate(samples)],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
            })
        response = await self._sse_start(request)
        for i, answer in enumerate(samples):
            for piece in self._pieces(answer):
                chunk = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                         "choices": [{"index": i, "text": piece, "finish_reason": None, "logprobs": None}]}
                await response.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            final = {"id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
                     "choices": [{"index": i, "text": "", "finish_reason": answer.finish_reason, "logprobs": None}]}
            await response.write(b"data: " + orjson.dumps(final) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # -- Anthropic ----------------------------------------------------------------------------
    async def messages(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._body(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _BadRequest(422, "messages: expected a non-empty list")
            if not isinstance(body.get("max_tokens"), int):
                raise _BadRequest(422, "max_tokens: field required (an integer)")
            prompt = next((_flatten(m.get("content")) for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), "")
            reasoning, answer = self._sample(body, prompt, 0, want_reasoning=True)
        except _BadRequest as exc:
            return self._error("anthropic", exc.status, exc.message)
        tok = self.model.tokenizer
        input_tokens = sum(len(tok.encode(_flatten(m.get("content")))) for m in messages if isinstance(m, dict))
        output_tokens = len(answer.ids) + (len(reasoning.ids) if reasoning else 0)
        stop_reason = "max_tokens" if answer.finish_reason == "length" else "end_turn"
        mid = "msg_" + secrets.token_hex(12)
        text = self._text(answer, body.get("stop_sequences"))
        if not body.get("stream"):
            content: list[dict[str, Any]] = []
            if reasoning is not None:
                content.append({"type": "thinking", "thinking": self._text(reasoning), "signature": ""})
            content.append({"type": "text", "text": text})
            return web.json_response({"id": mid, "type": "message", "role": "assistant", "model": body["model"], "content": content,
                                      "stop_reason": stop_reason, "stop_sequence": None,
                                      "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})
        response = await self._sse_start(request)

        async def emit(name: str, payload: dict[str, Any]) -> None:
            await response.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n")

        await emit("message_start", {"type": "message_start", "message": {
            "id": mid, "type": "message", "role": "assistant", "model": body["model"], "content": [], "stop_reason": None,
            "stop_sequence": None, "usage": {"input_tokens": input_tokens, "output_tokens": 0}}})
        index = 0
        if reasoning is not None:
            await emit("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
            for piece in self._pieces(reasoning):
                await emit("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}})
            await emit("content_block_stop", {"type": "content_block_stop", "index": 0})
            index = 1
        await emit("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
        sent = 0
        for piece in self._pieces(answer):
            piece = piece[: max(0, len(text) - sent)]
            if not piece:
                break
            sent += len(piece)
            await emit("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})
        await emit("content_block_stop", {"type": "content_block_stop", "index": index})
        await emit("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                     "usage": {"output_tokens": output_tokens}})
        await emit("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response


def build_app(model: DemoModel | None = None, models: tuple[str, ...] = DEFAULT_MODELS) -> web.Application:
    server = DemoServer(model or DemoModel.load(), models)
    app = web.Application(client_max_size=8 * 1024 * 1024)
    app.router.add_get("/v1/models", server.models_list)
    app.router.add_get("/v1/tokenizer", server.tokenizer)
    app.router.add_post("/v1/chat/completions", server.chat)
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/messages", server.messages)
    return app


def demo_model_command(args: argparse.Namespace) -> int:
    app = build_app()
    log.info("demo model serving %s on http://%s:%d/v1", ", ".join(DEFAULT_MODELS), args.host, args.port)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)
    return 0
