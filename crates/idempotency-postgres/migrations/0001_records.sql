-- idempotency-postgres schema, version 1. Applied by `idempotency_postgres::migrate`,
-- once per database (recorded in idempotency_schema_versions), under a
-- transaction-scoped advisory lock. Every statement is idempotent on its own as well.

-- Grows with every new owner of any key: a claim that writes a pending record (a fresh
-- insert or the takeover of an expired row) draws the next value.
CREATE SEQUENCE IF NOT EXISTS idempotency_fence_seq AS bigint;

CREATE TABLE IF NOT EXISTS idempotency_records (
    -- The store's key prefix ('' or ending with ':'), so several stores share one table.
    key_prefix       text        NOT NULL,
    -- The operation name (validated by idempotency-core: at most 100 characters).
    operation        text        NOT NULL,
    -- The idempotency key (validated by idempotency-core: at most 255 characters).
    idempotency_key  text        NOT NULL,
    -- 'pending' (a reservation), 'completed' or 'stored_error': the record's status.
    status           text        NOT NULL
        CHECK (status IN ('pending', 'completed', 'stored_error')),
    -- The request fingerprint, when the call had one (also inside `record`).
    fingerprint      text,
    -- The owner token of the lease that wrote the row (a finished row keeps the token of
    -- the lease that completed it; the record JSON carries it on pending records only).
    owner_token      text,
    -- The fencing token: drawn from idempotency_fence_seq by every new owner.
    fence            bigint      NOT NULL,
    -- The record as JSON text, byte for byte what the other stores keep
    -- (IdempotencyRecord::to_json), with its timestamps taken from the server's clock.
    record           text        NOT NULL,
    -- When the record was made (server time).
    created_at       timestamptz NOT NULL,
    -- When the row stops counting (server time): pending rows at the end of their lease,
    -- finished rows at the end of their TTL. A row past it is absent to every statement.
    expires_at       timestamptz NOT NULL,
    -- Pending rows: the end of the lease (equal to expires_at); NULL on finished rows.
    lease_expires_at timestamptz,
    PRIMARY KEY (key_prefix, operation, idempotency_key)
);

-- The sweep of expired rows reads them by expiry.
CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at);

-- A timestamp as the record JSON spells it (Python's isoformat of a UTC time, 'Z' for
-- the offset, microseconds only when not zero): 2026-01-02T03:04:05.123456Z.
CREATE OR REPLACE FUNCTION idempotency_record_time(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || 'Z'
$$;
