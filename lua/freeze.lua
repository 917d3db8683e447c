-- freeze.lua: freeze or unfreeze an environment, atomically. While frozen, merge.lua adds
-- nothing from any client (and records each batch as handled, so a retry after an unfreeze
-- is not counted either); reads and normalization keep working against the frozen statistics.
-- (Runs after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- ARGV[1]  "1" to freeze, "0" to unfreeze
--
-- Freezing an env with no statistics creates its hash with just the flag; unfreezing deletes
-- the field (and so the hash, if nothing else is in it). A malformed stored flag is
-- overwritten (this is how to repair it).
--
-- Returns "1" when the flag changed, "0" when it already was so.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    the argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  the key holds something other than a hash
--
-- Cost: O(1): HGET, then HSET or HDEL.

local err = check_arity('freeze', KEYS, ARGV, {1, 1})
if err then return err end
local key = KEYS[1]

if ARGV[1] ~= '1' and ARGV[1] ~= '0' then
  return error_for('INVALID', key, 'frozen must be 1 (freeze) or 0 (unfreeze), got ' .. quoted(ARGV[1]))
end
local stored
stored, err = read_key(key, 'hash', 'HGET', 'frozen')
if err then return err end
if ARGV[1] == '1' then
  if stored == '1' then return '0' end
  redis.call('HSET', key, 'frozen', '1')
else
  if stored == false then return '0' end
  redis.call('HDEL', key, 'frozen')
end
return '1'
