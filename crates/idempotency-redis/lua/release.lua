-- Releases a reservation: deletes our pending record, only while the key holds it.
-- KEYS[1] record key; ARGV[1] `"owner":"<token>"`.
-- Returns 1 when deleted, 0 when the reservation is no longer ours.
local current = redis.call('GET', KEYS[1])
if current and string.find(current, ARGV[1], 1, true) then
  redis.call('DEL', KEYS[1])
  if type(redis.pcall('SPUBLISH', KEYS[1], 'r')) == 'table' then
    redis.pcall('PUBLISH', KEYS[1], 'r')
  end
  return 1
end
return 0
