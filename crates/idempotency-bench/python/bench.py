"""The Python idempotency-kit 0.5.0 on the same scenarios as the Rust benchmark.

usage: bench.py URL SCENARIO CONCURRENCY CALLS RUN_ID   -> prints one JSON object
scenarios: hit, miss, contended, get_many, save_many, memory
"""

import asyncio
import json
import sys
import time

from redis.asyncio import Redis

from idempotency_kit import AsyncIdempotencyCoordinator, IdempotencyDomainService, JsonResultAdapter
from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository

ORDER = {"order_id": 12345, "status": "created", "amount": 99.95}


def pct(sorted_values, p):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, round((len(sorted_values) - 1) * p))]


async def drive(concurrency, calls, call):
    counter = iter(range(calls))
    latencies = []

    async def worker():
        for i in counter:
            t = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "ops_per_sec": len(latencies) / elapsed,
        "p50_us": pct(latencies, 0.5) * 1e6,
        "p99_us": pct(latencies, 0.99) * 1e6,
        "calls": len(latencies),
    }


async def main():
    url, scenario, concurrency, calls, run = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if url.startswith("redis-cluster://"):
        from redis.asyncio.cluster import RedisCluster

        redis = RedisCluster.from_url("redis://" + url.split("://", 1)[1].split("?", 1)[0])
    else:
        redis = Redis.from_url(url, max_connections=max(concurrency, 1) + 4)
    repo = RedisAsyncIdempotencyRepository(redis)
    svc = IdempotencyDomainService(default_ttl_minutes=30)
    coord = AsyncIdempotencyCoordinator(repo, svc)
    adapter = JsonResultAdapter()

    async def action():
        return ORDER

    if scenario == "hit":
        keys = [f"py-hit-{run}-{i}" for i in range(1000)]
        for k in keys:
            await coord.coordinate("bench.order", k, None, adapter, action)
        # Seeding is not measured: the caller reads the command count after this line.
        print("seeded", flush=True)
        sys.stdin.readline()
        out = await drive(concurrency, calls, lambda i: coord.coordinate("bench.order", keys[i % 1000], None, adapter, action))
    elif scenario == "miss":
        print("seeded", flush=True)
        sys.stdin.readline()
        out = await drive(
            concurrency, calls, lambda i: coord.coordinate("bench.order", f"py-miss-{run}-{i}", None, adapter, action)
        )
    elif scenario == "contended":
        print("seeded", flush=True)
        sys.stdin.readline()
        delays, runs_per_key = [], []
        for k in range(calls):
            key = f"py-cont-{run}-{k}"
            runs = 0
            done = {}

            async def slow():
                nonlocal runs
                runs += 1
                await asyncio.sleep(0.02)
                return ORDER

            async def caller(n):
                await coord.coordinate("bench.order", key, None, adapter, slow)
                done[n] = time.perf_counter()

            await asyncio.gather(*(caller(n) for n in range(concurrency)))
            first = min(done.values())
            delays.extend(v - first for v in done.values() if v != first)
            runs_per_key.append(runs)
        delays.sort()
        out = {
            "wake_p50_ms": pct(delays, 0.5) * 1e3,
            "wake_p99_ms": pct(delays, 0.99) * 1e3,
            "wake_max_ms": (delays[-1] if delays else 0) * 1e3,
            "max_runs_per_key": max(runs_per_key),
            "calls": calls * concurrency,
        }
    elif scenario == "memory":
        # Completed records for the Rust side to measure with MEMORY USAGE.
        for i in range(calls):
            await coord.coordinate("bench.order", f"py-mem-{run}-{i}", None, adapter, action)
        print("seeded", flush=True)
        sys.stdin.readline()
        out = {"calls": calls}
    elif scenario in ("get_many", "save_many"):
        keys = [f"py-bulk-{run}-{i}" for i in range(1000)]
        if scenario == "get_many":
            await repo.save_many([svc.create_record("bench.bulk", k, ORDER) for k in keys])
        print("seeded", flush=True)
        sys.stdin.readline()
        start = time.perf_counter()
        for r in range(calls):
            if scenario == "get_many":
                found = await repo.get_many("bench.bulk", keys)
                assert len(found) == 1000
            else:
                await repo.save_many([svc.create_record("bench.bulk", f"{k}-{r}", ORDER) for k in keys])
        elapsed = time.perf_counter() - start
        out = {"keys_per_sec": calls * 1000 / elapsed, "calls": calls}
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    print(json.dumps(out), flush=True)
    await redis.aclose()


asyncio.run(main())
