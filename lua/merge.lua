-- merge.lua: merge one batch summary into an environment's running statistics, atomically,
-- exactly once, and return the merged statistics in the same round trip.
-- (Loaded after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- KEYS[2]  (optional) the sending client's batch record for this env, sharing the env's hash
--          tag, e.g. "rewardnorm:{gsm8k}:batches:<client id>"
-- ARGV[1]  batch count: decimal integer, 1 <= count < 2^53
-- ARGV[2]  batch mean: finite decimal float
-- ARGV[3]  batch m2: finite decimal float >= 0 (sum of squared deviations from the batch mean)
-- ARGV[4]  batch min: finite decimal float
-- ARGV[5]  batch max: finite decimal float >= min
-- ARGV[6]  (with KEYS[2]) the batch's sequence number: an integer >= 1 that this client never
--          reuses for this env; a retry of the same batch sends the same number
-- ARGV[7]  (with KEYS[2]) seconds the batch record lives after its last use (>= 1)
--
-- Exactly once: a retried batch (a lost reply, a driver's or a user's retry) whose sequence
-- number is already recorded is not merged again; the reply is then the current statistics.
-- The record keeps the highest sequence number seen and which of the WINDOW numbers below it
-- were merged, so batches may arrive out of order (concurrent calls of one client); a number
-- more than WINDOW below the highest cannot be judged and is refused (REWARDNORM_STALE).
--
-- Returns {count, mean, m2, min, max, merged} as strings ('%d' and '%.17g'); merged is '1' when
-- this call merged the batch and '0' when it had been merged before.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  a key holds another type
--   REWARDNORM_CORRUPT <key> ...    a stored field is malformed (names the field and its value)
--   REWARDNORM_OVERFLOW <key> ...   the merged statistics would not be finite
--   REWARDNORM_STALE <key> ...      the sequence number is too far behind to be judged
--
-- Cost: O(1) whatever the batch size (the client sends a summary, not the values): at most
-- five commands and string work bounded by WINDOW.

local WINDOW = 1024

local err = check_arity('merge', {{1, 5}, {2, 7}})
if err then return err end
local key = KEYS[1]
local record_key = KEYS[2]

local batch
batch, err = parse_stats(key, ARGV, 'INVALID', 1)
if err then return err end
local old
old, err = read_stats(key)
if err then return err end

-- The batch record is "<highest sequence number>:<window>", where character i of the window
-- is '1' if sequence number (highest - i + 1) was merged; missing characters mean '0'.
local seq, ttl, record
if record_key then
  seq = tonumber(ARGV[6])
  if not string.find(ARGV[6], '^[0-9]+$') or seq < 1 or seq > MAX_COUNT then
    return error_for('INVALID', key, 'sequence number must be an integer >= 1, got ' .. quoted(ARGV[6]))
  end
  ttl = tonumber(ARGV[7])
  if not string.find(ARGV[7], '^[0-9]+$') or ttl < 1 then
    return error_for('INVALID', key, 'record lifetime must be an integer >= 1, got ' .. quoted(ARGV[7]))
  end
  local stored
  stored, err = read_key(record_key, 'string', 'GET')
  if err then return err end
  local highest, window = 0, ''
  if stored then
    -- Plain find and sub: a pattern over the whole window would cost more than the merge.
    local colon = string.find(stored, ':', 1, true)
    local highest_text = colon and string.sub(stored, 1, colon - 1) or ''
    highest = string.find(highest_text, '^[0-9]+$') and tonumber(highest_text)
    window = colon and string.sub(stored, colon + 1) or ''
    if not highest or #window > WINDOW then
      return error_for('CORRUPT', record_key, 'batch record ' .. quoted(string.sub(stored, 1, 40)))
    end
  end
  if seq > highest then
    local gap = math.min(seq - highest - 1, WINDOW)
    record = string.format('%d', seq) .. ':' .. string.sub('1' .. string.rep('0', gap) .. window, 1, WINDOW)
  else
    local position = highest - seq + 1
    if position > WINDOW then
      return error_for('STALE', key, string.format('batch %d is more than %d batches behind this '
        .. 'client\'s latest (%d)', seq, WINDOW, highest))
    end
    if string.sub(window, position, position) == '1' then
      local reply = format_stats(old)
      reply[6] = '0'
      return reply
    end
    if #window < position then
      window = window .. string.rep('0', position - #window)
    end
    record = string.format('%d', highest) .. ':' .. string.sub(window, 1, position - 1) .. '1'
      .. string.sub(window, position + 1)
  end
end

local merged = batch
if old then
  -- Chan, Golub and LeVeque's pairwise update: exact in real arithmetic, stable in floats.
  local count = old.count + batch.count
  local delta = batch.mean - old.mean
  merged = {
    count = count,
    mean = old.mean + delta * (batch.count / count),
    m2 = old.m2 + batch.m2 + delta * delta * (old.count * batch.count / count),
    min = math.min(old.min, batch.min),
    max = math.max(old.max, batch.max),
  }
  if count > MAX_COUNT then
    return error_for('OVERFLOW', key, 'count would reach 2^53')
  end
  if merged.mean ~= merged.mean or math.abs(merged.mean) == math.huge
      or merged.m2 ~= merged.m2 or merged.m2 == math.huge then
    return error_for('OVERFLOW', key, 'merged mean or m2 is not finite')
  end
end
if record_key then
  redis.call('SET', record_key, record, 'EX', ttl)
end
local reply = write_stats(key, merged)
reply[6] = '1'
return reply
