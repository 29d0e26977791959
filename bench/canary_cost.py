"""What keyed canaries cost the gateway per request, in process: off, on but not triggered, on and planted; JSON and SSE.

    python bench/canary_cost.py [--requests 4000] [--rounds 5]

Uses the in-process harness of ``bench/gateway_inprocess.py`` (a real
``Gateway`` driven through its ASGI entry, in-memory upstream, sink and
policy; CPU µs per request by ``time.process_time``) on this source tree, one
child process per set-up, set-ups alternating round by round; the table gives
medians and the ratio to ``off`` measured in the same run. ``on, no trigger``
is what every request pays once canaries are configured (the last user message
is checked against the triggers); ``on, planted`` is a trigger prompt, whose
answer is re-serialised with the canary sentence, or, streamed (42 SSE events),
goes through the stream filter of canary/stream.py (every event of a trigger
prompt's stream is parsed; the finishing chunk is rewritten). Each streamed
row's ratio is to ``off`` streamed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_inprocess import BODY, _drive  # noqa: E402 - the sibling script, found through the path set above

CANARY = {"enabled": True, "secret": "bench-canary-secret", "key_id": "bench",
          "triggers": [{"id": f"t{i}", "match": f"catalogue entry of survey site {i}"} for i in range(20)]}
TRIGGER_BODY = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "What is the catalogue entry of survey site 7?"}],
                           "max_tokens": 64}).encode()
SETUPS = {"off": ({}, BODY, False), "on, no trigger": ({"canary": CANARY}, BODY, False),
          "on, planted": ({"canary": CANARY}, TRIGGER_BODY, False),
          "off, streamed": ({}, BODY, True), "on, no trigger, streamed": ({"canary": CANARY}, BODY, True),
          "on, planted, streamed": ({"canary": CANARY}, TRIGGER_BODY, True)}


def _child(setup: str, requests: int) -> None:
    extra, body, stream = SETUPS[setup]
    print(json.dumps({"us": asyncio.run(_drive(requests, stream=stream, extra_settings=extra, request_body=body))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", choices=sorted(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.requests)
        return
    results: dict[str, list[float]] = {name: [] for name in SETUPS}
    for _ in range(args.rounds):
        for name in SETUPS:
            out = subprocess.run([sys.executable, __file__, "--child", name, "--requests", str(args.requests)], check=True,
                                 capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1])["us"])
    print(f"Gateway CPU per chat request, canaries off/on ({args.requests} requests × {args.rounds} alternating rounds; "
          f"20 triggers; load average {os.getloadavg()[0]:.1f} at the end)\n")
    print("| set-up | µs CPU per request (median) | / off | rounds |")
    print("|---|---:|---:|---|")
    for name, values in results.items():
        off = statistics.median(results["off, streamed" if SETUPS[name][2] else "off"])
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / off:.3f} | {', '.join(f'{v:.0f}' for v in values)} |")


if __name__ == "__main__":
    main()
