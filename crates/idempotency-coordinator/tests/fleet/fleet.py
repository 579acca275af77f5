"""The Python side of the mixed-fleet test: idempotency-kit 0.5.0 on the same Redis.

usage: fleet.py URL complete OP KEY VALUE_JSON   -> prints the call's result
       fleet.py URL replay OP KEY                -> prints the result; the action returns {"ran": "python"}
       fleet.py URL race OP KEY N COUNTER_KEY    -> N concurrent calls; each run INCRs COUNTER_KEY
       fleet.py URL attempt OP KEY               -> {"returned": result} or {"raised": error class};
                                                    the action returns {"ran": "python"}
"""

import asyncio
import json
import sys

from redis.asyncio import Redis

from idempotency_kit import AsyncIdempotencyCoordinator, IdempotencyDomainService, JsonResultAdapter
from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository


async def main() -> None:
    url, cmd, op, key = sys.argv[1:5]
    redis = Redis.from_url(url)
    coordinator = AsyncIdempotencyCoordinator(
        RedisAsyncIdempotencyRepository(redis), IdempotencyDomainService(default_ttl_minutes=30)
    )
    adapter = JsonResultAdapter()
    if cmd == "complete":
        value = json.loads(sys.argv[5])

        async def action():
            return value

        print(json.dumps(await coordinator.coordinate(op, key, None, adapter, action)))
    elif cmd == "replay":

        async def action():
            return {"ran": "python"}

        print(json.dumps(await coordinator.coordinate(op, key, None, adapter, action)))
    elif cmd == "attempt":

        async def action():
            return {"ran": "python"}

        try:
            print(json.dumps({"returned": await coordinator.coordinate(op, key, None, adapter, action)}))
        except Exception as e:  # noqa: BLE001 - the test reports whatever Python raised
            print(json.dumps({"raised": type(e).__name__}))
    elif cmd == "race":
        n, counter = int(sys.argv[5]), sys.argv[6]

        async def action():
            await redis.incr(counter)
            await asyncio.sleep(0.3)
            return {"winner": "python"}

        results = await asyncio.gather(*(coordinator.coordinate(op, key, None, adapter, action) for _ in range(n)))
        print(json.dumps(results))
    await redis.aclose()


asyncio.run(main())
