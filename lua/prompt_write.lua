-- prompt_write.lua: write whole prompt records (a seed from prior estimates such as offline pass
-- rates, SPO's prior; or a restore), atomically and exactly once. (Runs after stats_lib.lua.)
--
-- KEYS[1]  the prompt set's settings hash; KEYS[2] the client's batch record (as prompt_update)
-- ARGV[1]  the bucket count the client used; ARGV[2] sequence number; ARGV[3] record lifetime
-- ARGV[4]  the mode: '0' to refuse the whole call if a prompt has statistics (a seed), '1' to
--          replace prompts that have them (a restore), or 'heal:<epoch>' (a client putting back the
--          records it knew after finding the set lost; <epoch> is the one it found, '0' for none):
--          each record is merged, as the older visits, with what the prompt holds now (the visits
--          since the loss: the record's weight and m2 decay by rho^(visits since)), at most once
--          per prompt and identity: the first client to put a prompt back wins, and the others'
--          records of it are skipped (marks in "<settings>:healed:<epoch>", kept HEAL_MARK_TTL
--          seconds). If the set's epoch is no longer <epoch>, nothing is written.
-- ARGV[5 + 7i .. 11 + 7i], per prompt: bucket, id, visits, count (integers >= 0), weight (>= 0),
--          mean (finite), m2 (>= 0). A seed writes visits 0, count 0, m2 0: a prior of the
--          given weight and mean (for 0/1 rewards alpha = weight * mean, beta = weight * (1 - mean)),
--          which later visits decay like any earlier visit.
--
-- Returns an array: the outcome ('1' written, '0' this call was handled before: nothing changed,
-- 'moved' a heal for an epoch the set no longer has), the set's epoch and origin (as
-- prompt_update's), and how many prompts were written. The first write into a set without an
-- identity gives it one (origin 'seed', or 'replace'; a heal of a set found gone, 'reseed'); a
-- heal leaves the origin 'reseed'. Errors as prompt_update's; nothing is written when one is
-- raised.

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
local heal = string.match(ARGV[4], '^heal:([0-9]+)$')
if ARGV[4] ~= '0' and ARGV[4] ~= '1' and not (heal and string.len(heal) <= 16) then
  return error_for('INVALID', key, 'the mode must be 0, 1 or heal:<epoch>, got ' .. quoted(ARGV[4]))
end
local function identity(outcome, written)
  return {outcome, settings.epoch or '0', settings.origin or '-', tostring(written)}
end
if heal and heal ~= (settings.epoch or '0') then
  return identity('moved', 0)
end
local record, claimed
record, err, claimed = claim_batch(key, KEYS[2], ARGV[2], ARGV[3])
if err then return err end
local marks = heal and (key .. ':healed:' .. heal)

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
  local new = {visits, count, weight, mean, m2}
  if claimed and heal then
    local marked
    marked, err = read_key(marks, 'hash', 'HEXISTS', id)
    if err then return err end
    if marked == 1 then
      new = false
    else
      local stored
      stored, err = read_key(bucket_key, 'hash', 'HGET', id)
      if err then return err end
      if stored then  -- the record's visits came first: they decay by the visits since
        local now
        now, err = parse_prompt(bucket_key, id, stored)
        if err then return err end
        local factor = settings.decay ^ now[1]
        local old_weight = weight * factor
        local total = old_weight + now[3]
        new = {visits + now[1], count + now[2], total, mean, m2 * factor + now[5]}
        if total > 0 then
          local delta = now[4] - mean
          new[4] = mean + delta * (now[3] / total)
          new[5] = new[5] + delta * delta * (old_weight * now[3] / total)
        end
        if new[2] > MAX_COUNT or new[1] > MAX_COUNT then
          return error_for('OVERFLOW', bucket_key, 'prompt ' .. quoted(id) .. ': count would reach 2^53')
        end
        if new[4] - new[4] ~= 0 or new[5] - new[5] ~= 0 or new[3] - new[3] ~= 0 then
          return error_for('OVERFLOW', bucket_key, 'prompt ' .. quoted(id) .. ': merged statistics are not finite')
        end
      end
    end
  end
  if new then
    writes[#writes + 1] = bucket_key
    writes[#writes + 1] = id
    writes[#writes + 1] = format_prompt(new)
  end
end
if not claimed then
  return identity('0', 0)
end
if not settings.stored then
  redis.call('HSET', key, 'buckets', ARGV[1])
  redis.call('PERSIST', key)  -- (a forgotten set's tombstone becomes the settings)
end
if heal then
  stamp_prompt_set(key, settings, 'reseed')
  if settings.origin ~= 'reseed' then
    settings.origin = 'reseed'
    redis.call('HSET', key, 'origin', 'reseed')
  end
  marks = key .. ':healed:' .. settings.epoch  -- (the new epoch, for a set found gone)
else
  stamp_prompt_set(key, settings, ARGV[4] == '1' and 'replace' or 'seed')
end
for i = 1, #writes, 3 do
  redis.call('HSET', writes[i], writes[i + 1], writes[i + 2])
  if heal then redis.call('HSET', marks, writes[i + 1], '1') end
end
if heal and #writes > 0 then redis.call('EXPIRE', marks, HEAL_MARK_TTL) end
store_batch_record(KEYS[2], record, ARGV[3])
return identity('1', #writes / 3)
