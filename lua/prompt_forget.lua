-- prompt_forget.lua: delete prompts' statistics. (Runs after stats_lib.lua.)
--
-- KEYS[1]  the prompt set's settings hash, "<ns>:{<env>}:prompts"
-- ARGV[1]  'ids': then ARGV[2] the bucket count the client used and, per prompt, its bucket and
--          id (ARGV[3], ARGV[4], ...): those prompts are deleted.
--          'buckets': ARGV[2] and ARGV[3] a range first..last of bucket numbers, at most 1024
--          buckets: those buckets are deleted (UNLINK: freed in the background).
--          'settings': the settings hash is deleted, with the marks of a heal of its identity
--          (after every bucket, to forget a whole set), and replaced by a tombstone: only a new
--          identity of origin 'forget', expiring after TOMBSTONE_TTL seconds unless a write
--          makes it the settings of a new set.
-- Returns the number of prompts (ids) or keys (buckets, settings) deleted.
--
-- Deleting a whole set is several calls (each bounded), not one atomic step.

local MAX_RANGE = 1024
local key = KEYS[1]
local mode = ARGV[1]
local prefix, err = prompt_bucket_prefix(key)
if err then return err end
if #KEYS ~= 1 then
  return error_for('INVALID', key, 'prompt_forget expects 1 key, got ' .. #KEYS)
end
if mode == 'settings' and #ARGV == 1 then
  local epoch
  epoch, err = read_key(key, 'hash', 'HGET', 'epoch')  -- (not the settings: a corrupt set can be forgotten)
  if err then return err end
  if epoch then
    redis.call('UNLINK', key .. ':healed:' .. epoch)
  end
  local deleted = redis.call('DEL', key)
  -- What stays is a tombstone: a new identity of origin 'forget', so that clients still running
  -- take the deletion for deliberate rather than for a loss to heal; it expires unless written to.
  stamp_prompt_set(key, {}, 'forget', true)
  redis.call('EXPIRE', key, TOMBSTONE_TTL)
  return deleted
end
if mode == 'buckets' and #ARGV == 3 then
  local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
  if not (first and last and string.find(ARGV[2], '^[0-9]+$') and string.find(ARGV[3], '^[0-9]+$')
      and first <= last and last - first < MAX_RANGE) then
    return error_for('INVALID', key, 'bucket range must be first <= last, at most ' .. MAX_RANGE .. ' buckets, got '
      .. quoted(ARGV[2]) .. ' ' .. quoted(ARGV[3]))
  end
  local keys = {}
  for bucket = first, last do
    keys[#keys + 1] = prefix .. string.format('%d', bucket)
  end
  return redis.call('UNLINK', unpack(keys))
end
if mode == 'ids' and #ARGV >= 2 and #ARGV % 2 == 0 then
  local settings
  settings, err = read_prompt_set(key, ARGV[2])
  if err then return err end
  local keys = {}
  for i = 3, #ARGV, 2 do
    keys[#keys + 1], err = prompt_bucket_key(key, prefix, settings, ARGV[i])
    if err then return err end
    local _, wrong = read_key(keys[#keys], 'hash', 'HEXISTS', ARGV[i + 1])
    if wrong then return wrong end
  end
  local deleted = 0
  for i = 3, #ARGV, 2 do
    deleted = deleted + redis.call('HDEL', keys[(i - 1) / 2], ARGV[i + 1])
  end
  return deleted
end
return error_for('INVALID', key, 'prompt_forget expects ids, buckets or settings with their arguments, got '
  .. quoted(mode) .. ' and ' .. #ARGV .. ' arguments')
