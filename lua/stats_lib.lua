-- stats_lib.lua: helpers shared by every operation that reads or writes a stats hash.
--
-- Not an operation of its own. As a script, an operation is this file followed by the
-- operation's file (merge.lua, replace.lua, ...); in the Redis Function library, this file is the
-- library's top level and each operation's file the body of a function(KEYS, ARGV). Either
-- way validation is written once. `shared-rewardnorm lua NAME` prints an assembled script,
-- `shared-rewardnorm lua library` the Function library.
--
-- Helpers that find a problem return nil plus an error reply and never raise, so an operation
-- stops before it writes anything.

-- The stats schema, named once for Lua (shared_rewardnorm/_core/schema.py names it once for Python;
-- tests/behaviour/test_schema.py checks that both agree). Every list of fields below derives from these.
-- The totals, in the order operations receive and return them:
local STAT_FIELDS = {'count', 'mean', 'm2', 'min', 'max'}
-- The decayed statistics (total weight, weighted mean, weighted sum of squared deviations),
-- kept only while the env has a half-life:
local DECAY_FIELDS = {'weight', 'wmean', 'wm2'}
-- The env's configuration, set by configure.lua and freeze.lua (absent: no decay, not frozen):
local CONFIG_FIELDS = {'half_life', 'frozen'}
-- Written by each merge: batches merged since the last replace, and the server time of the
-- last one (milliseconds since the epoch); absent: 0, never.
local ACTIVITY_FIELDS = {'merges', 'updated_at'}
-- The statistics' identity: `epoch`, the server time in microseconds since the epoch when they
-- were created (by the first merge into an env without one, a replace, or a re-seed), and
-- `origin`, how: 'merge', 'replace' (set, reset, restore, a checkpoint load: deliberate) or
-- 'reseed' (a client put back its last view after finding them lost, reseed.lua). Persistence
-- and replicas keep both; an env found without them, or with another epoch, was replaced.
local IDENTITY_FIELDS = {'epoch', 'origin'}
-- Written beside the statistics for people reading the hash with redis-cli; never read back:
local DISPLAY_FIELDS = {'std'}

-- Everything an env's hash holds that is read back, in the order of reads and replies, and the
-- fields after the totals (decay, configuration, activity): an env's "state". Spelled as
-- elements of the groups above rather than built by loops: a script (EVALSHA) builds these
-- on every call, and loops over a table of groups cost about twice as much (tests/behaviour/test_schema.py
-- checks both against _core/schema.py, so a field added to a group and not here fails there).
local STATE_FIELDS = {DECAY_FIELDS[1], DECAY_FIELDS[2], DECAY_FIELDS[3], CONFIG_FIELDS[1], CONFIG_FIELDS[2],
  ACTIVITY_FIELDS[1], ACTIVITY_FIELDS[2]}
local ENV_FIELDS = {STAT_FIELDS[1], STAT_FIELDS[2], STAT_FIELDS[3], STAT_FIELDS[4], STAT_FIELDS[5],
  DECAY_FIELDS[1], DECAY_FIELDS[2], DECAY_FIELDS[3], CONFIG_FIELDS[1], CONFIG_FIELDS[2],
  ACTIVITY_FIELDS[1], ACTIVITY_FIELDS[2], IDENTITY_FIELDS[1], IDENTITY_FIELDS[2]}

-- Where each group starts in ENV_FIELDS order (texts[AT + i] is the group's i-th field), derived
-- from the groups so that adding a field to a group moves the ones after it:
local DECAY_AT = #STAT_FIELDS
local CONFIG_AT = DECAY_AT + #DECAY_FIELDS
local ACTIVITY_AT = CONFIG_AT + #CONFIG_FIELDS
local IDENTITY_AT = ACTIVITY_AT + #ACTIVITY_FIELDS
-- Single fields read by position:
local HALF_LIFE_AT = CONFIG_AT + 1
local FROZEN_AT = CONFIG_AT + 2
local EPOCH_AT = IDENTITY_AT + 1
local ORIGIN_AT = IDENTITY_AT + 2
-- The accepted origins (a set, for validation).
local ORIGINS = {merge = true, replace = true, reseed = true}

-- The largest count below 2^53: every integer up to it is exact in a Lua number (a double),
-- and any decimal text at or above 2^53 parses to at least 2^53, so the check cannot round away.
local MAX_COUNT = 9007199254740991

-- Cost matters here: a merge runs these helpers on every call, and as a script (EVALSHA) it
-- also runs this whole file's top level each time (benchmarks/server_cost.py --parts measures
-- each part). So: no table or closure is made that a call does not need, numbers stay strings
-- on their way into redis.call (Redis would format a Lua number with '%.17g' to read it), and
-- a stored text whose value did not change is neither formatted again nor written. (Library
-- functions cannot be cached in locals here: while a Function library loads, even `string`
-- is not reachable.)

-- A number is valid only if its text is plain decimal (sign, digits, point, exponent) and its
-- value finite. tonumber() also reads ' 1' and '1 ', hex ('0x10', '-0x1p4'), 'nan', 'inf',
-- '1e400' (inf) and stops at a NUL ('1\0x'); past tonumber and the finiteness check
-- (x - x is 0 only for a finite x), those all have a first byte outside [+-.0-9], an x in
-- place 2 or 3, a last byte below '.', or a NUL. (A byte check: cheaper than a pattern.)
local function parse_finite(text)
  local value = text and tonumber(text)
  if not value or value - value ~= 0 then
    return nil
  end
  local first, second, third = string.byte(text, 1, 3)
  if first < 43 or first > 57 or first == 44 or first == 47 or second == 120 or second == 88
      or third == 120 or third == 88 or string.byte(text, -1) < 46 or string.find(text, '\0', 1, true) then
    return nil
  end
  return value
end

local function quoted(value)
  return string.format('%q', tostring(value))
end

local function error_for(kind, key, detail)
  return redis.error_reply('REWARDNORM_' .. kind .. ' ' .. key .. ' ' .. detail)
end

-- Parse five texts (count, mean, m2, min, max: texts[1] to texts[5]) into a stats table.
-- `kind` is INVALID for arguments and CORRUPT for stored fields; `min_count` is 1 for a batch,
-- 0 for a replacement. On a failure, the first bad field in that order is named.
local function parse_stats(key, texts, kind, min_count)
  local count, mean, m2, min, max = parse_finite(texts[1]), parse_finite(texts[2]), parse_finite(texts[3]),
    parse_finite(texts[4]), parse_finite(texts[5])
  if not (count and mean and m2 and min and max) then
    for i = 1, 5 do
      local text = texts[i]
      if text == false then  -- HMGET's answer for an absent field
        return nil, error_for(kind, key, STAT_FIELDS[i] .. ' is missing')
      end
      if parse_finite(text) == nil then
        return nil, error_for(kind, key, STAT_FIELDS[i] .. ' must be a finite decimal number, got '
          .. quoted(text))
      end
    end
  end
  if count < min_count or count > MAX_COUNT or count ~= math.floor(count) then
    return nil, error_for(kind, key, 'count must be an integer >= ' .. min_count
      .. ' and < 2^53, got ' .. quoted(texts[1]))
  end
  if m2 < 0 then
    return nil, error_for(kind, key, 'm2 must be >= 0, got ' .. quoted(texts[3]))
  end
  if min > max then
    return nil, error_for(kind, key, 'min ' .. quoted(texts[4]) .. ' is greater than max '
      .. quoted(texts[5]))
  end
  -- One constructor: a table filled key by key would be resized three times on the way.
  return {count = count, mean = mean, m2 = m2, min = min, max = max}
end

-- Parse an env's state, texts[offset + 1] onwards in STATE_FIELDS order (false: absent), into
-- `env`: env.half_life (nil: no decay), env.weight/wmean/wm2 (only with a half-life),
-- env.frozen, env.merges and env.updated_at (0 when absent). `kind` as for parse_stats.
local function parse_state(key, texts, offset, kind, env)
  env.half_life = nil
  local base = offset - DECAY_AT  -- texts[base + X_AT + i]: field i of group X
  local text = texts[base + HALF_LIFE_AT]
  if text ~= false then
    local half_life = parse_finite(text)
    if half_life == nil or half_life <= 0 then
      return nil, error_for(kind, key, 'half_life must be a positive finite number, got ' .. quoted(text))
    end
    env.half_life = half_life
    for i = 1, #DECAY_FIELDS do
      local field = DECAY_FIELDS[i]
      text = texts[base + DECAY_AT + i]
      if text == false then
        return nil, error_for(kind, key, field .. ' is missing')
      end
      local value = parse_finite(text)
      if value == nil or (i ~= 2 and value < 0) then  -- the weighted mean (2) may be negative
        return nil, error_for(kind, key, field .. ' must be a finite decimal number'
          .. (i ~= 2 and ' >= 0' or '') .. ', got ' .. quoted(text))
      end
      env[field] = value
    end
  end
  text = texts[base + FROZEN_AT]
  if text ~= false and text ~= '0' and text ~= '1' then
    return nil, error_for(kind, key, 'frozen must be 0 or 1, got ' .. quoted(text))
  end
  env.frozen = text == '1'
  for i = 1, #ACTIVITY_FIELDS do
    local value = 0
    text = texts[base + ACTIVITY_AT + i]
    if text ~= false then
      value = parse_finite(text)
      if value == nil or value < 0 or value > MAX_COUNT or value ~= math.floor(value) then
        return nil, error_for(kind, key, ACTIVITY_FIELDS[i] .. ' must be an integer >= 0 and < 2^53, got '
          .. quoted(text))
      end
    end
    env[ACTIVITY_FIELDS[i]] = value
  end
  return env
end

-- Split argument `label` into exactly #names words separated by single spaces, or nil plus
-- an error reply naming the expected form ('stats must be "count mean m2 min max"').
local function split_words(key, label, text, names)
  -- Room for the longest form (7 words) from the start: grown word by word, the table would be
  -- resized at every power of two.
  local texts = {false, false, false, false, false, false, false}
  local start = 1
  for i = 1, #names - 1 do
    local space = type(text) == 'string' and string.find(text, ' ', start, true)
    if not space then
      return nil, error_for('INVALID', key, label .. ' must be "' .. table.concat(names, ' ') .. '", got ' .. quoted(text))
    end
    texts[i] = string.sub(text, start, space - 1)
    start = space + 1
  end
  texts[#names] = string.sub(text, start)
  return texts
end

-- Parse the stats argument: "count mean m2 min max", five numbers separated by single spaces
-- (one argument rather than five: fewer arguments make every call cheaper to send).
local function parse_stats_arg(key, text, min_count)
  local texts, err = split_words(key, 'stats', text, STAT_FIELDS)
  if err then
    return nil, err
  end
  return parse_stats(key, texts, 'INVALID', min_count)
end

-- Refuse to touch a key that holds anything but `expected` (or nothing). For writes that do
-- not read the key first (a replace); reads check through read_key at no extra cost.
local function check_type(key, expected)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= expected and kind ~= 'none' then
    return error_for('WRONGTYPE', key, 'holds a ' .. kind .. ', not a ' .. expected)
  end
  return nil
end

-- Run a read command on `key`: a key of another type becomes a REWARDNORM_WRONGTYPE error
-- reply (instead of aborting with Redis's own error), so no TYPE call is needed.
local function read_key(key, expected, command, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    local message = tostring(reply.err)  -- fakeredis hands the message over as userdata
    if string.find(message, 'WRONGTYPE', 1, true) then
      return nil, check_type(key, expected)
    end
    return nil, redis.error_reply(message)
  end
  return reply
end

-- Read an env's hash: a table with `stats` (false when the env has no statistics), the state of
-- parse_state and `stored`, the texts as read (ENV_FIELDS order, false: absent), or nil plus
-- an error reply. One HMGET whatever the env holds.
local function read_env(key)
  local stored, err = read_key(key, 'hash', 'HMGET', unpack(ENV_FIELDS))
  if err then
    return nil, err
  end
  -- Every field the env will get, from the start (no resizing as parse_state fills it).
  local env = {stored = stored, stats = false, half_life = false, weight = 0, wmean = 0, wm2 = 0, frozen = false,
    merges = 0, updated_at = 0, epoch = stored[EPOCH_AT], origin = stored[ORIGIN_AT]}
  if stored[1] or stored[2] or stored[3] or stored[4] or stored[5] then
    env.stats, err = parse_stats(key, stored, 'CORRUPT', 1)
    if err then
      return nil, err
    end
  end
  -- The identity: both or neither; an epoch is digits (kept as text: it is only compared).
  local epoch, origin = env.epoch, env.origin
  if epoch or origin then
    if not epoch or not string.find(epoch, '^[0-9]+$') or string.len(epoch) > 16 then
      return nil, error_for('CORRUPT', key, 'epoch must be an integer (microseconds), got ' .. quoted(epoch))
    end
    if not origin or not ORIGINS[origin] then
      return nil, error_for('CORRUPT', key, 'origin must be merge, replace or reseed, got ' .. quoted(origin))
    end
  end
  return parse_state(key, stored, #STAT_FIELDS, 'CORRUPT', env)
end

-- The env's record as texts in ENV_FIELDS order (the words of a reply: '%d' and '%.17g', as
-- Redis would truncate Lua numbers in a reply to integers and tostring keeps only 14 digits),
-- and, into `fields`, the field/value pairs to store: those that differ from `old` (the env
-- as read_env returned it; nil: store everything). A float that `old` held with the same
-- value keeps its stored text: that text parses to the very same double, so it is neither
-- formatted again nor written. Absent statistics, decay and activity are zeros, never stored;
-- the configuration is never stored here (see write_env's `extra`).
local function env_texts(env, old, fields)
  local stored = old and old.stored
  local texts = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}  -- ENV_FIELDS and a merge's outcome, sized once
  local function put(i, value, previous)
    local text = stored and stored[i]
    if not text or value ~= previous then
      text = string.format('%.17g', value)
      if fields then
        fields[#fields + 1] = ENV_FIELDS[i]
        fields[#fields + 1] = text
      end
    end
    texts[i] = text
  end
  local stats, previous = env.stats, old and old.stats or {}
  if stats then
    local count = stats.count
    texts[1] = string.format('%d', count)
    local changed = count ~= previous.count  -- a merge always adds to it; a replace passes old = nil
    if changed and fields then
      fields[#fields + 1] = 'count'
      fields[#fields + 1] = texts[1]
    end
    put(2, stats.mean, previous.mean)
    put(3, stats.m2, previous.m2)
    put(4, stats.min, previous.min)
    put(5, stats.max, previous.max)
    if changed and fields then
      fields[#fields + 1] = DISPLAY_FIELDS[1]
      fields[#fields + 1] = string.format('%.17g', count >= 2 and math.sqrt(stats.m2 / count) or 0)
    end
  else
    texts[1], texts[2], texts[3], texts[4], texts[5] = '0', '0', '0', '0', '0'
  end
  if env.half_life then
    local before = old or {}
    for i = 1, #DECAY_FIELDS do
      local field = DECAY_FIELDS[i]
      put(DECAY_AT + i, env[field], before[field])
    end
    texts[HALF_LIFE_AT] = stored and stored[HALF_LIFE_AT] or string.format('%.17g', env.half_life)
  else
    for i = DECAY_AT + 1, CONFIG_AT do texts[i] = '0' end
    texts[HALF_LIFE_AT] = '0'
  end
  texts[FROZEN_AT] = env.frozen and '1' or '0'
  for i = 1, #ACTIVITY_FIELDS do
    local field = ACTIVITY_FIELDS[i]
    local value = env[field]
    local at = ACTIVITY_AT + i
    texts[at] = string.format('%d', value)
    if fields and value ~= 0 and value ~= (old and old[field]) then
      fields[#fields + 1] = field
      fields[#fields + 1] = texts[at]
    end
  end
  -- The identity (absent: epoch 0, origin '-'), stored when it is new.
  local epoch = env.epoch
  texts[EPOCH_AT] = epoch or '0'
  texts[ORIGIN_AT] = env.origin or '-'
  if fields and epoch and epoch ~= (old and old.epoch) then
    fields[#fields + 1] = IDENTITY_FIELDS[1]
    fields[#fields + 1] = epoch
    fields[#fields + 1] = IDENTITY_FIELDS[2]
    fields[#fields + 1] = env.origin
  end
  return texts
end

-- The texts of ENV_FIELDS for a reply about `env` as read (nothing formatted that read_env
-- found stored).
local function format_env(env)
  return env_texts(env, env, nil)
end

-- Store what changed from `old` (nil: everything, after a DEL) in one HSET, with a
-- human-readable std beside the totals, and `extra` field/value pairs (the configuration, for
-- a replace; merges leave it alone). Returns the texts of env_texts.
local function write_env(key, env, old, extra)
  local fields = extra or {}
  local texts = env_texts(env, old, fields)
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
  end
  return texts
end

-- Exactly once, for every operation that must count a write once. Each client keeps, per env, a
-- batch record at record_key (sharing the env's hash tag): "<highest sequence number seen>" or
-- "<highest>:<gap>,<gap>,...", the gaps being numbers below the highest not merged yet (batches
-- still in flight: concurrent calls of one client may arrive out of order). In the usual case,
-- no gaps, it is a few bytes. Numbers WINDOW or more below the highest cannot be judged and are
-- refused (REWARDNORM_STALE; Python's RECORD_WINDOW in _core/ledger.py is the same number).
local WINDOW = 1024
-- The longest record lifetime, in seconds: ten years, Python's MAX_BATCH_RECORD_TTL.
local MAX_RECORD_TTL = 315360000

-- The record after a batch with sequence number `seq` (an integer), or nil when that batch was
-- claimed before, or nil plus an error reply.
local function updated_record(key, record_key, seq)
  local stored, err = read_key(record_key, 'string', 'GET')
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
    return nil  -- not a gap: claimed before
  end
  local remaining = string.sub(listed, 2, at - 1) .. string.sub(listed, at + #needle - 1, -2)
  remaining = string.gsub(string.gsub(remaining, '^,', ''), ',$', '')
  if remaining == '' then
    return string.format('%d', highest)
  end
  return string.format('%d', highest) .. ':' .. remaining
end

-- Claim a batch for `key` (the env, named in errors): validate the sequence-number and lifetime
-- arguments (texts), then read the client's record. Returns the record to store once the write
-- is done (store_batch_record), an error reply, and whether the batch is new (false: it was
-- claimed before, so the operation must not count it again). Writes nothing.
local function claim_batch(key, record_key, seq_text, ttl_text)
  local seq = tonumber(seq_text)
  if not string.find(seq_text, '^[0-9]+$') or seq < 1 or seq > MAX_COUNT then
    return nil, error_for('INVALID', key, 'sequence number must be an integer >= 1, got ' .. quoted(seq_text)), false
  end
  -- (ttl stays text: a Lua number would cost Redis a '%.17g' to read)
  if not string.find(ttl_text, '^[0-9]+$') or tonumber(ttl_text) < 1 or tonumber(ttl_text) > MAX_RECORD_TTL then
    return nil, error_for('INVALID', key, 'record lifetime must be an integer from 1 to ' .. MAX_RECORD_TTL
      .. ' (seconds), got ' .. quoted(ttl_text)), false
  end
  local record, err = updated_record(key, record_key, seq)
  if err then return nil, err, false end
  return record, nil, record ~= nil
end

-- Store a claimed batch's record (after the operation's own writes are decided).
local function store_batch_record(record_key, record, ttl_text)
  redis.call('SET', record_key, record, 'EX', ttl_text)
end

-- The server's clock: milliseconds since the epoch (for updated_at), and TIME's reply for
-- epoch_of. Scripts replicate by effects, so reading TIME is allowed and replicas store the
-- primary's values.
local function server_time()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000), time
end

-- A new epoch from TIME's reply: microseconds since the epoch, as text (formatted only when an
-- identity is created).
local function epoch_of(time)
  return time[1] .. string.format('%06d', tonumber(time[2]))
end

-- Chan, Golub and LeVeque's pairwise merge of two stats tables (exact in real arithmetic, stable
-- in floats), or nil plus an error reply when it would not be finite.
local function merge_stats(key, old, batch)
  local count = old.count + batch.count
  if count > MAX_COUNT then
    return nil, error_for('OVERFLOW', key, 'count would reach 2^53')
  end
  local delta = batch.mean - old.mean
  local mean = old.mean + delta * (batch.count / count)
  local m2 = old.m2 + batch.m2 + delta * delta * (old.count * batch.count / count)
  if mean - mean ~= 0 or m2 - m2 ~= 0 then  -- x - x is 0 only for a finite x
    return nil, error_for('OVERFLOW', key, 'merged mean or m2 is not finite')
  end
  return {count = count, mean = mean, m2 = m2, min = math.min(old.min, batch.min), max = math.max(old.max, batch.max)}
end

-- The decayed statistics (weight, wmean, wm2 of `env`, half-life `half_life`) after a batch of
-- n samples: the old weights shrink by 2^(-n/H), the batch weighs 1 per sample (the weighted
-- form of Chan's merge). Writes new.weight, new.wmean, new.wm2; nil plus an error reply when
-- they would not be finite.
local function merge_decayed(key, env, half_life, batch, new)
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
    return nil, error_for('OVERFLOW', key, 'decayed mean or wm2 is not finite')
  end
  return new
end

-- Parse a state argument ("weight wmean wm2 half_life frozen merges updated_at", a snapshot's
-- or a client's view: half_life 0 for none, then the decayed fields must be 0) into `env`.
local function parse_state_arg(key, text, env)
  local texts, err = split_words(key, 'state', text, STATE_FIELDS)
  if err then return nil, err end
  local half_life_at = HALF_LIFE_AT - DECAY_AT  -- positions in the state argument
  if texts[half_life_at] == '0' then  -- half_life 0: no decay, so the decayed fields are zeros
    for i = 1, #DECAY_FIELDS do
      if texts[i] ~= '0' then
        return nil, error_for('INVALID', key, DECAY_FIELDS[i] .. ' must be 0 without a half_life, got '
          .. quoted(texts[i]))
      end
    end
    texts[half_life_at] = false
  end
  return parse_state(key, texts, 0, 'INVALID', env)
end

-- The configuration of `env` as field/value pairs for write_env's `extra`.
local function config_pairs(env)
  local config = {}
  if env.half_life then
    config = {'half_life', string.format('%.17g', env.half_life)}
  end
  if env.frozen then
    config[#config + 1] = 'frozen'
    config[#config + 1] = '1'
  end
  return config
end

-- Operations take a fixed number of keys and arguments; `forms` lists the accepted numbers of
-- keys and arguments, flat: {keys, args, keys, args, ...} (one table per call, not one per form).
local function check_arity(name, keys, args, forms)
  for i = 1, #forms, 2 do
    if #keys == forms[i] and #args == forms[i + 1] then
      return nil
    end
  end
  local accepted = {}
  for i = 1, #forms, 2 do
    accepted[#accepted + 1] = forms[i] .. ' key(s) and ' .. forms[i + 1] .. ' argument(s)'
  end
  return redis.error_reply('REWARDNORM_INVALID ' .. name .. ' expects ' .. table.concat(accepted, ' or ')
    .. ', got ' .. #keys .. ' and ' .. #args)
end

-- ---------------------------------------------------------------------------------------------
-- Per-prompt statistics (prompt_*.lua; shared_rewardnorm/_core/prompt_ops.py is the Python twin).
--
-- An env's prompts live beside its stats hash, in its hash slot: the prompt set's settings in
-- the hash "<ns>:{<env>}:prompts" (fields decay, buckets; absent: 1 and DEFAULT_PROMPT_BUCKETS),
-- and the prompts in `buckets` hashes "<ns>:{<env>}:p:<b>", b = crc32(prompt id) mod buckets
-- (computed by the client), one field per prompt. So a bucket stays small enough for Redis's
-- compact hash encoding (listpack: at most 128 fields of at most 64 bytes by default), which is
-- what keeps a prompt near 40 bytes.
--
-- A prompt's record: "<visits>,<count>,<mean><m2>[<weight>]": visits and count in decimal, then
-- each double as 11 characters of base 64 (digits '0'..'o', ASCII 48..111: the IEEE-754 bits,
-- sign and biased exponent in the first two characters, the 52 fraction bits in the other nine),
-- so every double round-trips exactly in a third of the room of '%.17g'. The weight is written
-- only when it differs from the count (a prompt set with decay): otherwise it is the count.
--
-- The set's identity, as an env's (IDENTITY_FIELDS): the settings hash's `epoch` (server
-- microseconds when the set was created) and `origin`: 'update', 'configure' or 'seed' (the
-- first write of that kind created it), 'replace' (a restore) or 'forget' (a whole set deleted:
-- both deliberate), or 'reseed' (a client found the set lost and began putting back the
-- records it knew, prompt_write's heal mode). A
-- client that knew one epoch and finds another of a creating origin, or none, knows the set was
-- lost (shared_rewardnorm/_core/prompt_outage.py).

local PROMPT_SETTINGS_SUFFIX = ':prompts'
local PROMPT_BUCKET_INFIX = ':p:'
local DEFAULT_PROMPT_BUCKETS = 16384
local MAX_PROMPT_BUCKETS = 1048576
local TWO_52 = 4503599627370496
local PROMPT_ORIGINS = {update = true, configure = true, seed = true, replace = true, reseed = true, forget = true}
-- Seconds a heal's marks (which prompts were put back, prompt_write.lua) outlive its last use,
-- and a forgotten set's tombstone (prompt_forget.lua) lives unless written to.
local HEAL_MARK_TTL = 86400
local TOMBSTONE_TTL = 86400

-- The 11 characters of a double (see above); x must be finite.
local function encode_double(x)
  local hi = 0
  if x < 0 or (x == 0 and 1 / x < 0) then
    hi = 2048
    x = -x
  end
  local frac = 0
  if x ~= 0 then
    local m, e = math.frexp(x)  -- x = m * 2^e, 0.5 <= m < 1
    if e >= -1021 then
      hi = hi + e + 1022
      frac = (m * 2 - 1) * TWO_52
    else  -- subnormal: biased exponent 0, the fraction is x in units of 2^-1074
      frac = math.ldexp(x, 1074)
    end
  end
  local d9 = frac % 64; frac = (frac - d9) / 64
  local d8 = frac % 64; frac = (frac - d8) / 64
  local d7 = frac % 64; frac = (frac - d7) / 64
  local d6 = frac % 64; frac = (frac - d6) / 64
  local d5 = frac % 64; frac = (frac - d5) / 64
  local d4 = frac % 64; frac = (frac - d4) / 64
  local d3 = frac % 64; frac = (frac - d3) / 64
  local d2 = frac % 64; frac = (frac - d2) / 64
  local d1 = frac
  local h2 = hi % 64
  return string.char(48 + (hi - h2) / 64, 48 + h2, 48 + d1, 48 + d2, 48 + d3, 48 + d4, 48 + d5, 48 + d6,
    48 + d7, 48 + d8, 48 + d9)
end

-- The double whose 11 characters start at `at` in `text`, or nil when they are not a finite
-- double's (fraction bits beyond 52, the exponent of inf/NaN). The caller has checked that every
-- character is a digit of the code ('0'..'o': one pattern match per record, not 22 comparisons).
local function decode_double(text, at)
  local b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11 = string.byte(text, at, at + 10)
  if not b11 or b3 > 63 then return nil end
  local hi = (b1 - 48) * 64 + b2 - 48
  local frac = ((((((((b3 - 48) * 64 + b4 - 48) * 64 + b5 - 48) * 64 + b6 - 48) * 64 + b7 - 48) * 64
    + b8 - 48) * 64 + b9 - 48) * 64 + b10 - 48) * 64 + b11 - 48
  local biased = hi % 2048
  if biased == 2047 then return nil end
  local x
  if biased == 0 then
    x = math.ldexp(frac, -1074)
  else
    x = math.ldexp(1 + frac / TWO_52, biased - 1023)
  end
  if hi >= 2048 then return -x end
  return x
end

-- A prompt's record as a table {visits, count, weight, mean, m2}, or nil plus an error reply
-- naming the bucket and the prompt.
local function parse_prompt(key, id, text)
  local first = string.find(text, ',', 1, true)
  local second = first and string.find(text, ',', first + 1, true)
  local rest = second and #text - second
  local visits, count, mean, m2
  if (rest == 22 or rest == 33) and string.find(text, '^[0-9]+,[0-9]+,[0-o]+$') then
    visits, count = tonumber(string.sub(text, 1, first - 1)), tonumber(string.sub(text, first + 1, second - 1))
    mean = decode_double(text, second + 1)
    m2 = mean and decode_double(text, second + 12)
  end
  local weight = count
  if m2 and rest == 33 then weight = decode_double(text, second + 23) end
  if not (weight and m2) or m2 < 0 or weight < 0 or visits > MAX_COUNT or count > MAX_COUNT then
    return nil, error_for('CORRUPT', key, 'prompt ' .. quoted(id) .. ' holds ' .. quoted(string.sub(text, 1, 60)))
  end
  return {visits, count, weight, mean, m2}
end

-- The record of {visits, count, weight, mean, m2}.
local function format_prompt(p)
  local text = string.format('%d,%d,', p[1], p[2]) .. encode_double(p[4]) .. encode_double(p[5])
  if p[3] ~= p[2] then
    return text .. encode_double(p[3])
  end
  return text
end

-- The prompt set's settings key -> the prefix of its bucket keys, or nil plus an error reply.
local function prompt_bucket_prefix(settings_key)
  local n = #PROMPT_SETTINGS_SUFFIX
  if string.sub(settings_key, -n) ~= PROMPT_SETTINGS_SUFFIX then
    return nil, error_for('INVALID', settings_key, 'is not a prompt set\'s settings key (it must end in "'
      .. PROMPT_SETTINGS_SUFFIX .. '")')
  end
  return string.sub(settings_key, 1, -n - 1) .. PROMPT_BUCKET_INFIX
end

-- Parse a bucket count (text): an integer from 1 to MAX_PROMPT_BUCKETS.
local function parse_bucket_count(key, text, kind)
  local buckets = type(text) == 'string' and string.find(text, '^[0-9]+$') and tonumber(text)
  if not buckets or buckets < 1 or buckets > MAX_PROMPT_BUCKETS then
    return nil, error_for(kind, key, 'buckets must be an integer from 1 to ' .. MAX_PROMPT_BUCKETS .. ', got '
      .. quoted(text))
  end
  return buckets
end

-- Parse a decay (text): a number in (0, 1].
local function parse_decay(key, text, kind)
  local decay = parse_finite(text)
  if not decay or decay <= 0 or decay > 1 then
    return nil, error_for(kind, key, 'decay must be a number in (0, 1], got ' .. quoted(text))
  end
  return decay
end

-- The prompt set's settings: {decay = number, buckets = number, stored = bool (whether the
-- settings hash has its bucket count)}, or nil plus an error reply.
local function read_prompt_settings(key)
  local stored, err = read_key(key, 'hash', 'HMGET', 'decay', 'buckets', IDENTITY_FIELDS[1], IDENTITY_FIELDS[2])
  if err then return nil, err end
  local settings = {decay = 1, buckets = DEFAULT_PROMPT_BUCKETS, stored = stored[2] ~= false,
    epoch = stored[3] or false, origin = stored[4] or false}
  if settings.epoch or settings.origin then
    if not settings.epoch or not string.find(settings.epoch, '^[0-9]+$') or string.len(settings.epoch) > 16
        or not PROMPT_ORIGINS[settings.origin] then
      return nil, error_for('CORRUPT', key, 'the identity must be an epoch (digits) and an origin (update, '
        .. 'configure, seed, replace, forget or reseed), got ' .. quoted(settings.epoch) .. ' ' .. quoted(settings.origin))
    end
  end
  if stored[1] then
    settings.decay, err = parse_decay(key, stored[1], 'CORRUPT')
    if err then return nil, err end
  end
  if stored[2] then
    settings.buckets, err = parse_bucket_count(key, stored[2], 'CORRUPT')
    if err then return nil, err end
  end
  return settings
end

-- Give the prompt set at `key` an identity of `origin` if it has none (the write that creates
-- it), or always with `renew` (a restore); `settings` (read_prompt_settings) follows.
local function stamp_prompt_set(key, settings, origin, renew)
  if settings.epoch and not renew then return end
  local _, time = server_time()
  settings.epoch, settings.origin = epoch_of(time), origin
  redis.call('HSET', key, IDENTITY_FIELDS[1], settings.epoch, IDENTITY_FIELDS[2], origin)
end

-- The settings of the prompt set at `key` (read_prompt_settings), after checking the bucket
-- count the client computed its buckets with (ARGV text) against the set's (a set that has none
-- stored takes the call's): how every call that names buckets starts.
local function read_prompt_set(key, text)
  local settings, err = read_prompt_settings(key)
  if err then return nil, err end
  local buckets
  buckets, err = parse_bucket_count(key, text, 'INVALID')
  if err then return nil, err end
  if buckets ~= settings.buckets then
    if settings.stored then
      return nil, error_for('INVALID', key, 'the prompt set has ' .. settings.buckets .. ' buckets, the call was made '
        .. 'for ' .. quoted(text) .. ' (read the settings again)')
    end
    settings.buckets = buckets  -- a set without a count (new, or lost): the first write fixes it
  end
  return settings
end

-- The bucket key of a prompt from the client's bucket number (text), checked against the count.
local function prompt_bucket_key(key, prefix, settings, text)
  -- canonical decimal only ('07' would name another key than '7')
  local bucket = (text == '0' or string.find(text, '^[1-9][0-9]*$')) and tonumber(text)
  if not bucket or bucket >= settings.buckets then
    return nil, error_for('INVALID', key, 'bucket must be an integer from 0 to ' .. (settings.buckets - 1)
      .. ', got ' .. quoted(text))
  end
  return prefix .. text
end
