-- Completes a reservation: writes the completed record only while the key holds our
-- pending record, nothing, or bytes that are not JSON at all (no client can read them as
-- a record, so nobody holds the key through them) and do not look like a finished record. A re-sent call that finds exactly the
-- record it writes has already succeeded.
-- KEYS[1] record key; ARGV[1] owner token; ARGV[2] completed JSON; ARGV[3] TTL ms.
-- Returns 1 when written over our reservation (or already written by this very call),
-- 2 when written though our reservation was gone (the key was empty or held bytes that
-- are not JSON: the lease was lost meanwhile, so a duplicate may have run), 0 when the
-- key holds something else (another owner's reservation, a completed record, other JSON).
local written = 2
local current = redis.call('GET', KEYS[1])
if current then
  if current == ARGV[2] then
    return 1
  end
  -- The owner check is exact: the stored value must decode to a pending record whose
  -- owner field is our token; text inside the result never counts.
  local ok, record = pcall(cjson.decode, current)
  if ok then
    if type(record) ~= 'table' or record['status'] ~= 'pending'
        or record['owner'] ~= ARGV[1] then
      return 0
    end
    written = 1
  elseif string.find(current, '"status"%s*:%s*"completed"')
      or string.find(current, '"status"%s*:%s*"stored_error"')
      or (not string.find(current, '"status"', 1, true)
          and string.find(current, '"result"', 1, true)
          and string.find(current, '}%s*$')) then
    -- Not JSON to cjson (a lone surrogate escape, say) but by its shape a finished
    -- record (a finished status, or a whole object with a result and no status: read
    -- as completed): its
    -- action ran, so it stands (as the claim never takes it over).
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
-- Wake waiters; a server without sharded pub/sub falls back to PUBLISH.
if type(redis.pcall('SPUBLISH', KEYS[1], 'c')) == 'table' then
  redis.pcall('PUBLISH', KEYS[1], 'c')
end
return written
