# Writes held-out-style vectors of every kind with Python idempotency-kit 0.5.0 against a
# throwaway redis-server (port given, never 6379).
import asyncio, base64, json, math, sys
from redis.asyncio import Redis
from idempotency_kit.core.fingerprint import fingerprint_of
from idempotency_kit.core.services.domain import IdempotencyDomainService
from idempotency_kit.infra.storage.redis.aio.repository import RedisAsyncIdempotencyRepository

port = int(sys.argv[1]); out = sys.argv[2]
assert port != 6379

class Rec:
    def __init__(self): self.calls = []
    def record_error(self, op, kind): self.calls.append(["error", op, kind])
    def record_bulk_hit(self, op, n): self.calls.append(["bulk_hit", op, n])
    def record_bulk_miss(self, op, n): self.calls.append(["bulk_miss", op, n])
    def __getattr__(self, name):
        return lambda *a, **k: None

def canon(v): return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

fps = []
for name, values in [
    ("heldout_int_2_pow_64", {"n": 2**64}),
    ("heldout_int_minus_10_pow_30", {"n": -10**30, "m": [2**70, {"k": 10**40}]}),
    ("heldout_one_and_one_point_zero", {"i": 1, "f": 1.0, "e": 1e-07, "g": 1e22}),
]:
    fps.append({"name": name, "values": values, "canonical": canon(values), "fingerprint": fingerprint_of(**values)})

def norm(r):
    d = r.model_dump(mode="json")
    return d

async def main():
    redis = Redis(port=port)
    svc = IdempotencyDomainService()
    recs = []
    m = Rec()
    repo = RedisAsyncIdempotencyRepository(redis, metrics=m)
    for name, op, key, result in [
        ("heldout_completed_nested", "order.create", "ho-nested", {"b": [1, 2.5, None], "a": "é\n", "u": 18446744073709551615}),
        ("heldout_completed_float_forms", "order.create", "ho-floats", [1e16, 1e-5, 1.5e-7, 100.0]),
    ]:
        r = svc.create_record(op, key, result)
        await repo.save(r)
        rk = f"idempotency:{op}:{key}"
        raw = await redis.get(rk); ttl = await redis.ttl(rk)
        recs.append({"name": name, "constructor": "IdempotencyDomainService().create_record",
            "args": {"operation": op, "idempotency_key": key, "result": result, "ttl_minutes": None, "fingerprint": None},
            "key_prefix": "idempotency:", "redis_key": rk, "set_command": {"ex": ttl, "nx": True},
            "raw": raw.decode(), "raw_len": len(raw), "ttl": ttl,
            "datetime_fields": {"created_at": norm(r)["created_at"], "expires_at": norm(r)["expires_at"]}})
    decs = []
    base = lambda key, **kw: ('{"operation":"user.create","idempotency_key":"%s","result":%s,"created_at":%s,"expires_at":%s}'
        % (key, kw.get("result", '{"id":1}'), kw.get("created", '"2025-06-01T12:00:00.123456Z"'), kw.get("expires", '"2099-01-01T00:00:00Z"'))).encode()
    for name, about, key, raw in [
        ("heldout_empty_value", "an empty stored value", "ho-empty", b""),
        ("heldout_naive_created_at", "created_at without a timezone", "ho-naive-created", base("ho-naive-created", created='"2025-06-01T12:00:00"')),
        ("heldout_unknown_field_lone_surrogate", "an unknown field holding a lone surrogate escape", "ho-zz-surrogate",
            base("ho-zz-surrogate")[:-1] + b',"zz":"\\ud800"}'),
        ("heldout_result_big_mantissa_negative_exponent", "a 4301-digit mantissa with exponent -5000", "ho-mantissa",
            base("ho-mantissa", result="1" * 4301 + "e-5000")),
        ("heldout_millis_with_fraction", "expires_at in Unix milliseconds with a fraction", "ho-millis",
            base("ho-millis", expires="126715061817167.81")),
        ("heldout_negative_millis_string_year_zero", "a numeric string in year 0", "ho-year-zero",
            base("ho-year-zero", expires='"-62135596800001"')),
    ]:
        rk = f"idempotency:user.create:{key}"
        case = {"name": name, "about": about, "operation": "user.create", "idempotency_key": key,
                "key_prefix": "idempotency:", "redis_key": rk,
                "raw": raw.decode("utf-8") if raw is not None else None,
                "raw_base64": base64.b64encode(raw).decode()}
        for method in ("get", "get_many"):
            await redis.set(rk, raw, ex=600)
            m.calls.clear()
            try:
                if method == "get":
                    r = await repo.get("user.create", key)
                else:
                    r = (await repo.get_many("user.create", [key])).get(key)
                if r is None:
                    o = {"outcome": "none"}
                else:
                    d = norm(r)
                    o = {"outcome": "record", "record": {k: d[k] for k in ("operation", "idempotency_key", "result", "created_at", "expires_at", "status", "fingerprint")}}
            except Exception as e:
                o = {"outcome": "error", "exception": type(e).__name__, "message": str(e)}
                c = e.__cause__
                if c is not None:
                    o["cause"] = type(c).__name__
                    if hasattr(c, "errors"):
                        errs = c.errors()
                        if type(e).__name__ == "IdempotencyError":
                            o["cause_error_types"] = [x["type"] for x in errs]
                        else:
                            o["validation_errors"] = [{"type": x["type"], "loc": list(x["loc"])} for x in errs]
                elif hasattr(e, "errors") and e.errors:
                    o["validation_errors"] = [{"type": x["type"], "loc": list(x["loc"])} for x in e.errors]
            o["key_exists_after"] = bool(await redis.exists(rk))
            o["metrics"] = [c for c in m.calls]
            case[method] = o
        decs.append(case)
    await redis.aclose()
    return recs, decs

recs, decs = asyncio.run(main())
for fname, data in [("fingerprints_heldout.json", fps), ("records_heldout.json", recs), ("decode_cases_heldout.json", decs)]:
    with open(f"{out}/{fname}", "w") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
print("ok", len(fps), len(recs), len(decs))
