-- Issues the fencing token of a reservation: only while the key holds our pending record,
-- the same token for every call of one owner, and for each new owner a larger one.
-- KEYS[1] record key; KEYS[2] the key's fence counter (same hash slot; a hash holding the
-- last token `n` and the owner `o` it went to); ARGV[1] owner token; ARGV[2] the
-- counter's lifetime, ms.
-- Returns the token, or 0 when the reservation is no longer ours.
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
local last = redis.call('HMGET', KEYS[2], 'n', 'o')
-- Lua numbers are doubles: from 2^53 on, last + 1 may round back to last. A counter that
-- high (a corrupt counter, or a server clock past the year 2255) fails closed: no token,
-- so no fenced action runs, rather than a token that does not grow.
if last[1] and tonumber(last[1]) >= 9007199254740991 then
  return redis.error_reply('ERR idempotency fence counter at 2^53: no larger token can be issued')
end
if last[1] and last[2] == ARGV[1] then
  return tonumber(last[1])
end
-- max(last + 1, the server's clock in microseconds): a new owner's token is larger than
-- every earlier one even after the counter expired, while the server's clock does not
-- go back. Below 2^53, so exact as a Lua number.
local t = redis.call('TIME')
local n = tonumber(t[1]) * 1000000 + tonumber(t[2])
if last[1] and tonumber(last[1]) >= n then
  n = tonumber(last[1]) + 1
end
local text = string.format('%.0f', n)
redis.call('HSET', KEYS[2], 'n', text, 'o', ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return n
