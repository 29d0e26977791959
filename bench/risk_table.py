"""The central scorer's published risk table at 100,000 accounts: Redis memory, and what publishing costs per report.

    .venv/bin/python bench/risk_table.py [--accounts 100000] [--events 300000] [--more 5000]

With ``detection.scorer: central`` the scorer writes every scored account's entry to the Redis hash
``dg:risk:accounts`` (state/risk_table.py) so that any replica answers the risk endpoint for accounts below
the flag threshold. This measures, against a real ``redis-server`` (Debian's package) started here:

* the first publication of a report of ``--accounts`` accounts (``bench/central_scorer.py``'s ``default``
  scenario spread over that many accounts): reports it takes at ``MAX_PER_REPORT`` entries each, the scorer's CPU
  for them, Redis's memory for the table (``INFO memory`` used_memory before and after) per entry, and the JSON
  bytes per entry;
* an incremental report after ``--more`` further events (dealt over the same accounts): how many entries
  changed, and the publication's CPU;

each beside the baseline measured in the same run: the CPU of the report itself (``Scanner.report``), which the
scorer pays every report anyway. Writes the markdown to ``bench/out/risk_table.md``.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import orjson
import redis

from central_scorer import load_events, spread, start_redis
from measure import src_digest, write_report


def main() -> None:
    from distillguard.detect.scanner import Scanner
    from distillguard.events import parse_ts
    from distillguard.state.risk_table import KEY, MAX_PER_REPORT, RiskTablePublisher

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--more", type=int, default=5_000, help="events between the first and the incremental report")
    args = parser.parse_args()
    started = time.perf_counter()
    digest = src_digest()
    lines, labels = load_events(args.events)
    events = [orjson.loads(line) for line in spread(lines, args.accounts, labels)]
    scanner = Scanner()
    began = time.process_time()
    for event in events:
        event["_t"] = parse_ts(event["ts"])
        scanner.update(event)
    update_cpu = time.process_time() - began
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            client = redis.Redis.from_url(url)
            publisher = RiskTablePublisher(client)
            empty = int(client.info("memory")["used_memory"])
            began = time.process_time()
            report = scanner.report()
            report_cpu = time.process_time() - began
            entries = report["accounts"]
            json_bytes = sum(len(orjson.dumps(entry)) for entry in entries)
            first_reports, first_cpu, first_bytes = 0, 0.0, 0
            while True:  # the same report again and again: what the first publication takes, report by report
                began = time.process_time()
                stats = publisher.publish(entries)
                first_cpu += time.process_time() - began
                first_reports += 1
                first_bytes += stats.bytes
                if stats.waiting == 0:
                    break
            used = int(client.info("memory")["used_memory"]) - empty
            stored = int(client.hlen(KEY))
            accounts = sorted(scanner.accounts)
            rng = random.Random(7)
            for i in range(args.more):  # further events of the same accounts (one event's shape per account reused)
                event = dict(events[rng.randrange(len(events))])
                event["request_id"] = f"req_more_{i}"
                event["account_id"] = accounts[rng.randrange(len(accounts))]
                scanner.update(event)
            began = time.process_time()
            again = scanner.report(recluster=False)
            again_report_cpu = time.process_time() - began
            began = time.process_time()
            incremental = publisher.publish(again["accounts"])
            incremental_cpu = time.process_time() - began
            client.close()
        finally:
            proc.terminate()
            proc.wait(10)
    n = len(entries)
    rows = [
        ("accounts scored (report entries)", f"{n:,}"),
        ("events fed to the scanner", f"{len(events):,} ({update_cpu:.1f} CPU-s)"),
        ("**baseline**: the report itself (`Scanner.report`, clustering included), CPU s", f"{report_cpu:.2f}"),
        (f"first publication: reports needed at {MAX_PER_REPORT:,} entries each", f"{first_reports}"),
        ("first publication: scorer CPU s, all of them", f"{first_cpu:.2f} ({first_cpu / report_cpu:.2f}× one report)"),
        ("first publication: scorer CPU µs per entry", f"{first_cpu / n * 1e6:.1f}"),
        ("entries in Redis", f"{stored:,}"),
        ("JSON bytes per entry (mean), as the report holds it", f"{json_bytes / n:,.0f}"),
        ("stored bytes per entry (mean): deflated against the dictionary", f"{first_bytes / n:,.0f}"),
        ("Redis used_memory for the table", f"{used / 1e6:,.1f} MB ({used / n:,.0f} B per entry)"),
        (f"incremental report after {args.more:,} more events: report CPU s (`recluster=False`)", f"{again_report_cpu:.2f}"),
        ("incremental: entries changed and sent", f"{incremental.changed:,} / {incremental.sent:,}"),
        ("incremental: publication CPU s", f"{incremental_cpu:.3f} ({incremental_cpu / again_report_cpu:.2f}× its report)"),
    ]
    write_report("risk_table.md", [f"`python bench/risk_table.py --accounts {args.accounts} --events {args.events} --more {args.more}`",
                                   "", "| measure | value |", "|---|---:|", *[f"| {k} | {v} |" for k, v in rows]], started, digest)


if __name__ == "__main__":
    main()
