-- Releases a reservation: deletes our pending record, only while the key holds it.
-- KEYS[1] record key; ARGV[1] owner token.
-- Returns 1 when deleted, 0 when the reservation is no longer ours.
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
redis.call('DEL', KEYS[1])
if type(redis.pcall('SPUBLISH', KEYS[1], 'r')) == 'table' then
  redis.pcall('PUBLISH', KEYS[1], 'r')
end
return 1
