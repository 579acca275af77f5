-- Completes a reservation: writes the completed record only while the key holds our
-- pending record (its JSON carries our owner fragment) or holds nothing.
-- KEYS[1] record key; ARGV[1] `"owner":"<token>"`; ARGV[2] record JSON; ARGV[3] TTL seconds.
-- Returns 1 when written, 0 when another owner's record is there.
local current = redis.call('GET', KEYS[1])
if current and not string.find(current, ARGV[1], 1, true) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
-- Wake waiters; a server without sharded pub/sub falls back to PUBLISH.
if type(redis.pcall('SPUBLISH', KEYS[1], 'c')) == 'table' then
  redis.pcall('PUBLISH', KEYS[1], 'c')
end
return 1
