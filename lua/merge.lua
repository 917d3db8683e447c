-- merge.lua: merge one batch summary into an environment's running statistics (and, with a
-- half-life, its decayed statistics), atomically, exactly once, and return the env's record in
-- the same round trip. (Runs after stats_lib.lua, which supplies the helpers used here.)
--
-- KEYS[1]  the env's stats hash, e.g. "rewardnorm:{gsm8k}"
-- KEYS[2]  (optional) the sending client's batch record for this env; it shares the env's
--          hash tag: "rewardnorm:{gsm8k}:batches:<client id>"
-- ARGV[1]  the batch summary, "count mean m2 min max": count an integer 1 <= count < 2^53, the
--          others finite decimal numbers, m2 >= 0 (squared deviations from the batch mean),
--          min <= max; e.g. "4 0.5 3 -1 1"
-- ARGV[2]  (with KEYS[2]) the batch's sequence number: an integer >= 1 that this client never
--          uses twice for this env; a retry of the same batch sends the same number
-- ARGV[3]  (with KEYS[2]) seconds the batch record lives after its last use, an integer from 1
--          to MAX_RECORD_TTL (ten years, as MAX_BATCH_RECORD_TTL in core.py)
--
-- Exactly once: a batch whose sequence number the record shows as merged is not merged again
-- (a lost reply retried by us, the driver or the caller); the reply then carries the current
-- statistics. The record is "<highest number seen>" or "<highest>:<gap>,<gap>,...", the gaps
-- being numbers below the highest not merged yet (batches still in flight: concurrent calls
-- of one client may arrive out of order). Numbers WINDOW or more below the highest cannot be
-- judged and are refused (REWARDNORM_STALE). In the usual case, no gaps, it is a few bytes.
--
-- Frozen env (field frozen = 1): nothing is added and the hash is not written, but the batch
-- is recorded as handled, so a retry after an unfreeze is not counted either.
--
-- Decayed statistics (field half_life = H samples): a batch of n samples multiplies the stored
-- weight and wm2 by 2^(-n/H), then adds the batch with weight 1 per sample (weighted Chan).
-- So after batches B1..Bk, a sample of Bj weighs 2^(-a/H), a being the samples merged after Bj.
--
-- Returns one string, the env's record in ENV_FIELDS order ("count mean m2 min max weight
-- wmean wm2 half_life frozen merges updated_at"; integers '%d', a float this call computed
-- '%.17g', a float it left unchanged the text it read, which parses to the same double) then
-- one word: 1 when this call merged the batch, 0 when it had been merged before, 2 when the
-- env is frozen.
--
-- Errors (nothing is written when one is raised):
--   REWARDNORM_INVALID <key> ...    an argument is malformed
--   REWARDNORM_WRONGTYPE <key> ...  a key holds another type
--   REWARDNORM_CORRUPT <key> ...    a stored field is malformed or missing (names the field)
--   REWARDNORM_OVERFLOW <key> ...   the merged statistics would not be finite
--   REWARDNORM_STALE <key> ...      the sequence number is too far behind to be judged
--
-- Cost: O(1) whatever the batch size (the client sends a summary, not the values): one HMGET
-- and one HSET of the hash (of the fields that changed: min and max only when the batch
-- extends them), TIME, and with a record GET and SET EX; the record holds at most WINDOW gaps
-- (more gaps cost more: each call rewrites the list). Measured (benchmarks/server_cost.py):
-- 34-38x the server time of a no-op EVALSHA, with or without a half-life (docs/SERVER_COST.md:
-- where it goes, and why).

local WINDOW = 1024
-- The longest record lifetime, in seconds: ten years, Python's MAX_BATCH_RECORD_TTL (core.py;
-- tests/test_store.py checks they agree).
local MAX_RECORD_TTL = 315360000

local err = check_arity('merge', KEYS, ARGV, {1, 1, 2, 3})
if err then return err end
local key = KEYS[1]
local record_key = KEYS[2]

local batch
batch, err = parse_stats_arg(key, ARGV[1], 1)
if err then return err end
local env
env, err = read_env(key)
if err then return err end

-- Returns the new record, nil for an already merged batch, or nil plus an error reply.
local function updated_record(seq)
  local stored
  stored, err = read_key(record_key, 'string', 'GET')
  if err then return nil, err end
  if stored == string.format('%d', seq - 1) then
    return string.format('%d', seq)  -- the usual case: the next batch, none in flight
  end
  local highest, gaps = 0, ''
  if stored then
    local colon = string.find(stored, ':', 1, true)
    local head = colon and string.sub(stored, 1, colon - 1) or stored
    highest = string.find(head, '^[0-9]+$') and tonumber(head)
    gaps = colon and string.sub(stored, colon + 1) or ''
    if not highest or (colon and not string.find(gaps, '^[0-9,]*$')) then
      return nil, error_for('CORRUPT', record_key, 'batch record ' .. quoted(string.sub(stored, 1, 60)))
    end
  end
  if seq > highest then
    local record = string.format('%d', seq)
    -- Keep the gaps still inside the window, and add the numbers skipped on the way to seq.
    local kept = {}
    local lowest = seq - WINDOW
    if gaps ~= '' then
      for gap in string.gmatch(gaps, '[0-9]+') do
        if tonumber(gap) > lowest then kept[#kept + 1] = gap end
      end
    end
    for skipped = math.max(highest + 1, lowest + 1), seq - 1 do
      kept[#kept + 1] = string.format('%d', skipped)
    end
    if #kept > 0 then record = record .. ':' .. table.concat(kept, ',') end
    return record
  end
  if seq <= highest - WINDOW then
    return nil, error_for('STALE', key, string.format('batch %d is %d or more batches behind '
      .. 'this client\'s latest (%d)', seq, WINDOW, highest))
  end
  local listed = ',' .. gaps .. ','
  local needle = ',' .. string.format('%d', seq) .. ','
  local at = string.find(listed, needle, 1, true)
  if not at then
    return nil  -- not a gap: merged before
  end
  local remaining = string.sub(listed, 2, at - 1) .. string.sub(listed, at + #needle - 1, -2)
  remaining = string.gsub(string.gsub(remaining, '^,', ''), ',$', '')
  if remaining == '' then
    return string.format('%d', highest)
  end
  return string.format('%d', highest) .. ':' .. remaining
end

local record, ttl
if record_key then
  local seq = tonumber(ARGV[2])
  if not string.find(ARGV[2], '^[0-9]+$') or seq < 1 or seq > MAX_COUNT then
    return error_for('INVALID', key, 'sequence number must be an integer >= 1, got ' .. quoted(ARGV[2]))
  end
  ttl = ARGV[3]  -- passed on as text: a Lua number would cost Redis a '%.17g' to read
  if not string.find(ttl, '^[0-9]+$') or tonumber(ttl) < 1 or tonumber(ttl) > MAX_RECORD_TTL then
    return error_for('INVALID', key, 'record lifetime must be an integer from 1 to ' .. MAX_RECORD_TTL
      .. ' (seconds), got ' .. quoted(ttl))
  end
  record, err = updated_record(seq)
  if err then return err end
  if record == nil then
    local texts = format_env(env)
    texts[#ENV_FIELDS + 1] = '0'
    return table.concat(texts, ' ')
  end
end
if env.frozen then
  if record then
    redis.call('SET', record_key, record, 'EX', ttl)
  end
  local texts = format_env(env)
  texts[#ENV_FIELDS + 1] = '2'
  return table.concat(texts, ' ')
end

local old = env.stats
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
  if merged.mean - merged.mean ~= 0 or merged.m2 - merged.m2 ~= 0 then  -- x - x is 0 only for a finite x
    return error_for('OVERFLOW', key, 'merged mean or m2 is not finite')
  end
end
-- The env after this batch; `env` stays as read, so write_env stores only what changed.
local new = {stats = merged, half_life = env.half_life, weight = 0, wmean = 0, wm2 = 0, frozen = false,
  merges = env.merges + 1, updated_at = 0}
local half_life = env.half_life
if half_life then
  -- The weighted form of Chan's update: the old part's weights shrink by 2^(-n/H).
  local n = batch.count
  local factor = 2 ^ (-n / half_life)
  local old_weight = env.weight * factor
  if old_weight > 0 then
    local weight = old_weight + n
    local delta = batch.mean - env.wmean
    new.wmean = env.wmean + delta * (n / weight)
    new.wm2 = env.wm2 * factor + batch.m2 + delta * delta * (old_weight * n / weight)
    new.weight = weight
  else  -- nothing before (or all of it decayed to nothing): the batch alone, exactly
    new.weight, new.wmean, new.wm2 = n, batch.mean, batch.m2
  end
  if new.wmean - new.wmean ~= 0 or new.wm2 - new.wm2 ~= 0 then
    return error_for('OVERFLOW', key, 'decayed mean or wm2 is not finite')
  end
end
new.updated_at = now_ms()
if record then
  redis.call('SET', record_key, record, 'EX', ttl)
end
local texts = write_env(key, new, env)
texts[#ENV_FIELDS + 1] = '1'
return table.concat(texts, ' ')
