"""A fast stand-in model server for benchmarks: canned ~1 KB OpenAI responses, JSON or SSE.

It must not be the bottleneck, so it does no work per request beyond writing
bytes: aiohttp on uvloop, responses prebuilt at start-up.
"""

from __future__ import annotations

import argparse

import orjson
from aiohttp import web

WORDS = ["lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "ut", "enim", "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi", "ut", "aliquip", "ex", "ea", "commodo", "consequat"]
TEXT = " ".join(WORDS * 5)[:900]
BODY = orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "bench-model",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 12, "completion_tokens": 200, "total_tokens": 212}})
PIECES = [TEXT[i : i + 113] for i in range(0, len(TEXT), 113)]
STREAM = b"".join(
    b"data: " + orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": "bench-model",
                              "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}) + b"\n\n"
    for piece in PIECES
) + b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
MODELS = orjson.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model", "created": 0, "owned_by": "bench"}]})


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' in body.replace(b" ", b""):
        return web.Response(body=STREAM, content_type="text/event-stream")
    return web.Response(body=BODY, content_type="application/json")


async def models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8790)
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
