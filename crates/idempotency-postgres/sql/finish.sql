WITH old AS (
    SELECT status, owner_token, record, expires_at > statement_timestamp() AS live
    FROM idempotency_records
    WHERE key_prefix = $1 AND operation = $2 AND idempotency_key = $3
),
written AS (
    INSERT INTO idempotency_records AS r
        (key_prefix, operation, idempotency_key, status, fingerprint, owner_token, fence,
         record, created_at, expires_at, lease_expires_at)
    SELECT $1, $2, $3, $5, $6, $4, nextval('idempotency_fence_seq'),
           $7::text || idempotency_record_time(n.t) || '","expires_at":"'
               || idempotency_record_time(n.t + n.d) || $8::text,
           n.t, n.t + n.d, NULL
    FROM (SELECT statement_timestamp() AS t, $9::bigint * interval '1 microsecond' AS d) AS n
    ON CONFLICT (key_prefix, operation, idempotency_key) DO UPDATE
        SET status = excluded.status, fingerprint = excluded.fingerprint,
            owner_token = excluded.owner_token,
            fence = CASE WHEN r.expires_at > statement_timestamp() THEN r.fence
                         ELSE excluded.fence END,
            record = excluded.record, created_at = excluded.created_at,
            expires_at = excluded.expires_at, lease_expires_at = NULL,
            run_id = NULL, recovery_point = NULL, step_state = NULL
        WHERE r.expires_at <= statement_timestamp()
           OR (r.status = 'pending' AND r.owner_token = excluded.owner_token)
    RETURNING r.fence
),
woken AS (SELECT pg_notify($10, $11) FROM written)
SELECT (SELECT count(*) FROM written) AS written,
       (SELECT count(*) FROM woken) AS woken,
       EXISTS (SELECT 1 FROM old
               WHERE live AND status = 'pending' AND owner_token = $4) AS held,
       EXISTS (SELECT 1 FROM old
               WHERE live AND status <> 'pending' AND owner_token = $4
                 AND starts_with(record, $7) AND right(record, length($8)) = $8) AS resent
