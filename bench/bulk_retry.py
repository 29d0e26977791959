"""What retry-safe bulk creation costs: ``Registry.create_accounts`` with and without ``external_id``, and a retry.

    python bench/bulk_retry.py [--accounts 10000] [--rounds 3]

Per round, in a fresh SQLite file each: ``--accounts`` accounts with a key and
no external id (the baseline: what a batch cost before), the same with an
external id per account (one lookup of the ids, the counter's lock taken
first, one more table written), then that batch sent again (every account
found, nothing created). Wall and CPU seconds per batch, medians over
``--rounds``; the ratio is to the baseline of the same run. Writes nothing but
the Markdown table on stdout (recorded in bench/RESULTS.md, "Retry-safe bulk
account creation").
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from distillguard.store.registry import NewAccount, Registry
from measure import src_digest


def _timed(registry: Registry, items: list[NewAccount]) -> tuple[float, float, list[dict[str, object]]]:
    wall, cpu = time.perf_counter(), time.process_time()
    created = registry.create_accounts(items)
    return time.perf_counter() - wall, time.process_time() - cpu, created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    digest = src_digest()
    rows: dict[str, list[tuple[float, float]]] = {"no external_id (before)": [], "with external_id": [], "the same batch again": []}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="dg-bench-bulk-") as tmp:
            plain = Registry(f"sqlite:///{Path(tmp) / 'plain.db'}")
            wall, cpu, _ = _timed(plain, [NewAccount(f"a{i}", key=True) for i in range(args.accounts)])
            rows["no external_id (before)"].append((wall, cpu))
            plain.close()
            ided = Registry(f"sqlite:///{Path(tmp) / 'ids.db'}")
            batch = [NewAccount(f"a{i}", key=True, external_id=f"crm:{i}") for i in range(args.accounts)]
            wall, cpu, created = _timed(ided, batch)
            assert all(c["status"] == "created" for c in created)
            rows["with external_id"].append((wall, cpu))
            wall, cpu, again = _timed(ided, batch)
            assert all(c["status"] == "exists" for c in again) and len(ided.list_accounts()) == args.accounts
            rows["the same batch again"].append((wall, cpu))
            ided.close()
    base = statistics.median(w for w, _ in rows["no external_id (before)"])
    print(f"Bulk creation of {args.accounts:,} accounts with keys, SQLite, medians of {args.rounds} rounds "
          f"(load average {os.getloadavg()[0]:.1f}; source digest `{digest}`)\n")
    print("| batch | wall s | CPU s | wall / before |")
    print("|---|---:|---:|---:|")
    for name, values in rows.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / base:.2f} |")


if __name__ == "__main__":
    main()
