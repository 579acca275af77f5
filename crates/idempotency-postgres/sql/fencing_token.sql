-- The fencing token of a live reservation, when the row still holds the owner's pending
-- record: the value the claim drew from idempotency_fence_seq.
SELECT fence
FROM idempotency_records
WHERE key_prefix = $1
  AND operation = $2
  AND idempotency_key = $3
  AND owner_token = $4
  AND status = 'pending'
  AND expires_at > statement_timestamp()
