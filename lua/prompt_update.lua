-- prompt_update.lua: merge one call's rewards into the statistics of its prompts, atomically and
-- exactly once, and return each prompt's record from before the call in the same round trip.
-- (Runs after stats_lib.lua: its prompt section describes the keys and the record.)
--
-- KEYS[1]  the prompt set's settings hash, "<ns>:{<env>}:prompts"
-- KEYS[2]  the sending client's batch record for the prompt set: "<ns>:{<env>}:prompts:batches:<client id>"
-- ARGV[1]  the bucket count the client computed its buckets with (must be the set's)
-- ARGV[2]  the call's sequence number (claim_batch: a retry sends the same number)
-- ARGV[3]  seconds the batch record lives after its last use
-- ARGV[4 + 5i .. 8 + 5i], one group per distinct prompt of the call: its bucket, its id, and the
--          summary of its rewards in this call: count (integer >= 1), mean, m2 (>= 0)
--
-- Definition (the set's decay rho, 1 when never configured): a visit of prompt p is one call
-- holding p. After visits V1..Vk, each reward of Vj has weight rho^(k - j): a visit multiplies
-- the stored weight and m2 by rho, then adds its rewards with weight 1 each (the weighted Chan
-- update, as merge.lua's decayed statistics). visits and count are never decayed.
--
-- Returns an array: the outcome ('1' merged, '0' merged before: nothing changed), the set's
-- epoch and origin ('0' and '-' for a set without them), then for each prompt in argument order
-- its record before this call ('' for a prompt never seen); for a call merged before, the
-- records as they are now. The first write into a set without an identity gives it one
-- (origin 'update').
--
-- Errors (nothing is written when one is raised): REWARDNORM_INVALID (an argument),
-- REWARDNORM_WRONGTYPE (a key of another type), REWARDNORM_CORRUPT (a stored record, naming the
-- bucket and the prompt, or the settings), REWARDNORM_OVERFLOW, REWARDNORM_STALE.
--
-- Cost: per prompt one HGET and one HSET on a small (listpack) hash, O(bucket size).

if #KEYS ~= 2 or #ARGV < 3 or (#ARGV - 3) % 5 ~= 0 then
  return redis.error_reply('REWARDNORM_INVALID prompt_update expects 2 keys and 3 + 5 per prompt arguments, got '
    .. #KEYS .. ' and ' .. #ARGV)
end
local key = KEYS[1]
local prefix, err = prompt_bucket_prefix(key)
if err then return err end
local settings
settings, err = read_prompt_set(key, ARGV[1])
if err then return err end
local record, claimed
record, err, claimed = claim_batch(key, KEYS[2], ARGV[2], ARGV[3])
if err then return err end

local rho = settings.decay
local prompts = (#ARGV - 3) / 5
local reply = {claimed and '1' or '0', '', ''}
local writes = {}
for i = 0, prompts - 1 do
  local at = 4 + 5 * i
  local bucket_key
  bucket_key, err = prompt_bucket_key(key, prefix, settings, ARGV[at])
  if err then return err end
  local id = ARGV[at + 1]
  if id == '' then
    return error_for('INVALID', key, 'prompt ids must not be empty (group ' .. (i + 1) .. ')')
  end
  local n, mean, m2 = tonumber(ARGV[at + 2]), parse_finite(ARGV[at + 3]), parse_finite(ARGV[at + 4])
  if not (n and n >= 1 and n <= MAX_COUNT and n == math.floor(n) and mean and m2 and m2 >= 0) then
    return error_for('INVALID', key, 'prompt ' .. quoted(id) .. ': summary must be count >= 1, mean, m2 >= 0, got '
      .. quoted(ARGV[at + 2]) .. ' ' .. quoted(ARGV[at + 3]) .. ' ' .. quoted(ARGV[at + 4]))
  end
  local stored
  stored, err = read_key(bucket_key, 'hash', 'HGET', id)
  if err then return err end
  reply[i + 4] = stored or ''
  if claimed then
    local new
    if stored then
      local old
      old, err = parse_prompt(bucket_key, id, stored)
      if err then return err end
      local old_weight = old[3] * rho
      if old_weight > 0 then
        local weight = old_weight + n
        local delta = mean - old[4]
        new = {old[1] + 1, old[2] + n, weight, old[4] + delta * (n / weight),
          old[5] * rho + m2 + delta * delta * (old_weight * n / weight)}
      else
        new = {old[1] + 1, old[2] + n, n, mean, m2}
      end
      if new[2] > MAX_COUNT then
        return error_for('OVERFLOW', bucket_key, 'prompt ' .. quoted(id) .. ': count would reach 2^53')
      end
      if new[4] - new[4] ~= 0 or new[5] - new[5] ~= 0 or new[3] - new[3] ~= 0 then
        return error_for('OVERFLOW', bucket_key, 'prompt ' .. quoted(id) .. ': merged statistics are not finite')
      end
    else
      new = {1, n, n, mean, m2}
    end
    writes[#writes + 1] = bucket_key
    writes[#writes + 1] = id
    writes[#writes + 1] = format_prompt(new)
  end
end
if claimed then
  if not settings.stored then  -- the first write fixes the set's bucket count
    redis.call('HSET', key, 'buckets', ARGV[1])
    redis.call('PERSIST', key)  -- (a forgotten set's tombstone becomes the settings)
  end
  stamp_prompt_set(key, settings, 'update')
  for i = 1, #writes, 3 do
    redis.call('HSET', writes[i], writes[i + 1], writes[i + 2])
  end
  store_batch_record(KEYS[2], record, ARGV[3])
end
reply[2], reply[3] = settings.epoch or '0', settings.origin or '-'
return reply
