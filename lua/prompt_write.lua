-- prompt_write.lua: write whole prompt records (a seed from prior estimates such as offline pass
-- rates, SPO's prior; or a restore), atomically and exactly once. (Runs after stats_lib.lua.)
--
-- KEYS[1]  the prompt set's settings hash; KEYS[2] the client's batch record (as prompt_update)
-- ARGV[1]  the bucket count the client used; ARGV[2] sequence number; ARGV[3] record lifetime
-- ARGV[4]  '1' to replace prompts that have statistics, '0' to refuse the whole call if one has
-- ARGV[5 + 7i .. 11 + 7i], per prompt: bucket, id, visits, count (integers >= 0), weight (>= 0),
--          mean (finite), m2 (>= 0). A seed writes visits 0, count 0, m2 0: a prior of the
--          given weight and mean (for 0/1 rewards alpha = weight * mean, beta = weight * (1 - mean)),
--          which later visits decay like any earlier visit.
--
-- Returns '1' (written) or '0' (this call was handled before: nothing changed). Errors as
-- prompt_update's; nothing is written when one is raised.

if #KEYS ~= 2 or #ARGV < 4 or (#ARGV - 4) % 7 ~= 0 then
  return redis.error_reply('REWARDNORM_INVALID prompt_write expects 2 keys and 4 + 7 per prompt arguments, got '
    .. #KEYS .. ' and ' .. #ARGV)
end
local key = KEYS[1]
local prefix, err = prompt_bucket_prefix(key)
if err then return err end
local settings
settings, err = read_prompt_set(key, ARGV[1])
if err then return err end
if ARGV[4] ~= '0' and ARGV[4] ~= '1' then
  return error_for('INVALID', key, 'replace must be 0 or 1, got ' .. quoted(ARGV[4]))
end
local record, claimed
record, err, claimed = claim_batch(key, KEYS[2], ARGV[2], ARGV[3])
if err then return err end

local writes = {}
for i = 0, (#ARGV - 4) / 7 - 1 do
  local at = 5 + 7 * i
  local bucket_key
  bucket_key, err = prompt_bucket_key(key, prefix, settings, ARGV[at])
  if err then return err end
  local id = ARGV[at + 1]
  if id == '' then
    return error_for('INVALID', key, 'prompt ids must not be empty (prompt ' .. (i + 1) .. ')')
  end
  local visits, count = ARGV[at + 2], ARGV[at + 3]
  local weight, mean, m2 = parse_finite(ARGV[at + 4]), parse_finite(ARGV[at + 5]), parse_finite(ARGV[at + 6])
  visits = string.find(visits, '^[0-9]+$') and tonumber(visits)
  count = string.find(count, '^[0-9]+$') and tonumber(count)
  if not (visits and count and visits <= MAX_COUNT and count <= MAX_COUNT and weight and weight >= 0 and mean
      and m2 and m2 >= 0) then
    return error_for('INVALID', key, 'prompt ' .. quoted(id) .. ': a record must be visits, count (integers >= 0), '
      .. 'weight >= 0, mean, m2 >= 0, got ' .. quoted(table.concat({ARGV[at + 2], ARGV[at + 3], ARGV[at + 4],
      ARGV[at + 5], ARGV[at + 6]}, ' ')))
  end
  if claimed and ARGV[4] == '0' then
    local stored
    stored, err = read_key(bucket_key, 'hash', 'HEXISTS', id)
    if err then return err end
    if stored == 1 then
      return error_for('INVALID', key, 'prompt ' .. quoted(id) .. ' already has statistics (pass replace=True '
        .. 'to overwrite them)')
    end
  end
  writes[#writes + 1] = bucket_key
  writes[#writes + 1] = id
  writes[#writes + 1] = format_prompt({visits, count, weight, mean, m2})
end
if not claimed then
  return '0'
end
if not settings.stored then
  redis.call('HSET', key, 'buckets', ARGV[1])
end
for i = 1, #writes, 3 do
  redis.call('HSET', writes[i], writes[i + 1], writes[i + 2])
end
store_batch_record(KEYS[2], record, ARGV[3])
return '1'
