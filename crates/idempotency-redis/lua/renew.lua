-- Renews a reservation: rewrites our pending record with a later expiry, only while the
-- key holds it.
-- KEYS[1] record key; ARGV[1] owner token; ARGV[2] renewed JSON; ARGV[3] lease ms.
-- Returns 1 when renewed, 0 when the reservation is no longer ours.
local current = redis.call('GET', KEYS[1])
if not current then
  return 0
end
-- Exact owner check (see complete.lua).
local ok, record = pcall(cjson.decode, current)
if not ok or type(record) ~= 'table' or record['status'] ~= 'pending'
    or record['owner'] ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
