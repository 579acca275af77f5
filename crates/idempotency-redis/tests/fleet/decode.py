"""The Python side of the decode differential: idempotency-kit 0.5.0's repository reads
keys of the test's Redis and reports what it made of each.

usage: decode.py URL CLUSTER(0|1) PREFIX  < one "method<TAB>key" per line
prints one JSON outcome per line.
"""

import asyncio
import json
import math
import sys

from redis.asyncio import Redis, RedisCluster

from idempotency_kit.core.exceptions import IdempotencyError, IdempotencyValidationError
from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository


def norm(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


async def main() -> None:
    url, cluster, prefix = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
    redis = RedisCluster.from_url(url) if cluster else Redis.from_url(url)
    repo = RedisAsyncIdempotencyRepository(redis, key_prefix=prefix)
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        method, key = line.split("\t")
        try:
            if method == "get":
                r = await repo.get("fleet.op", key)
            else:
                r = (await repo.get_many("fleet.op", [key])).get(key)
        except IdempotencyValidationError:
            out = {"outcome": "invalid"}
        except IdempotencyError:
            out = {"outcome": "corrupted"}
        else:
            if r is None:
                out = {"outcome": "none"}
            else:
                out = {
                    "outcome": "record",
                    "status": r.status,
                    "fingerprint": r.fingerprint,
                    "result": json.dumps(norm(r.result), ensure_ascii=False, allow_nan=False),
                }
        out["exists"] = bool(await redis.exists(prefix + "fleet.op:" + key))
        print(json.dumps(out), flush=True)
    await redis.aclose()


asyncio.run(main())
