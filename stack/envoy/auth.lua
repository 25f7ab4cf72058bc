-- API-key check for Envoy's Lua filter: lets a request through only with a configured key.
--
-- A key is accepted in X-API-Key, as "Authorization: Bearer KEY" or as the password of Basic
-- auth (any user name), the same forms the agent accepts. The keys and the kind of refusal
-- come from the route's metadata under "envoy.filters.http.lua": api_keys (a list of
-- strings) and grpc (true on the OTLP/gRPC listener). No key, a wrong key or an empty key
-- list is refused: HTTP 401, or gRPC status 16 (UNAUTHENTICATED) on a gRPC listener.
-- Nothing here logs a header value.
--
-- The decision is the pure function decide(), which needs no Envoy and is tested under
-- luajit; envoy_on_request() only reads the headers and metadata and sends the refusal.

local bit = require("bit")

local M = {}

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for i = 1, #B64 do
  B64_VALUE[B64:byte(i)] = i - 1
end
local PAD = ("="):byte()

--- Standard base64 (with padding) decoded, or nil when the text is not valid base64.
function M.base64_decode(text)
  if #text == 0 or #text % 4 ~= 0 then
    return nil
  end
  local out = {}
  for i = 1, #text, 4 do
    local a, b, c, d = text:byte(i, i + 3)
    local last = i + 3 == #text
    local va, vb = B64_VALUE[a], B64_VALUE[b]
    local vc = (c == PAD and last and d == PAD) and 0 or B64_VALUE[c]
    local vd = (d == PAD and last) and 0 or B64_VALUE[d]
    if va == nil or vb == nil or vc == nil or vd == nil then
      return nil
    end
    local n = ((va * 64 + vb) * 64 + vc) * 64 + vd
    out[#out + 1] = string.char(math.floor(n / 65536) % 256)
    if c ~= PAD then
      out[#out + 1] = string.char(math.floor(n / 256) % 256)
    end
    if d ~= PAD then
      out[#out + 1] = string.char(n % 256)
    end
  end
  return table.concat(out)
end

--- The key a request presents, or nil: X-API-Key first, then Bearer, then Basic's password.
function M.presented_key(x_api_key, authorization)
  if x_api_key ~= nil and x_api_key ~= "" then
    return x_api_key
  end
  if authorization == nil then
    return nil
  end
  local scheme, value = authorization:match("^%s*(%S+)%s+(.-)%s*$")
  if scheme == nil or value == "" then
    return nil
  end
  scheme = scheme:lower()
  if scheme == "bearer" then
    return value
  end
  if scheme == "basic" then
    local decoded = M.base64_decode(value)
    if decoded == nil then
      return nil
    end
    local password = decoded:match("^[^:]*:(.*)$")
    if password == nil or password == "" then
      return nil
    end
    return password
  end
  return nil
end

--- Whether two strings are equal, in a time that depends only on the length of `key`.
function M.equal(presented, key)
  local diff = (#presented == #key) and 0 or 1
  for i = 1, #key do
    diff = bit.bor(diff, bit.bxor(presented:byte(i) or 0, key:byte(i)))
  end
  return diff == 0
end

--- True when the request may pass: it presents one of `keys`. An empty list refuses all.
function M.decide(x_api_key, authorization, keys)
  local presented = M.presented_key(x_api_key, authorization)
  if presented == nil or type(keys) ~= "table" then
    return false
  end
  local found = false
  for _, key in ipairs(keys) do
    if type(key) == "string" and key ~= "" and M.equal(presented, key) then
      found = true
    end
  end
  return found
end

local REFUSAL = "missing or invalid API key"

--- Refuse the request the way its listener's clients understand: gRPC status 16 or HTTP 401.
function M.refuse(handle, grpc)
  if grpc then
    handle:respond({
      [":status"] = "200",
      ["content-type"] = "application/grpc",
      ["grpc-status"] = "16",
      ["grpc-message"] = REFUSAL,
    }, "")
  else
    handle:respond({
      [":status"] = "401",
      ["content-type"] = "text/plain; charset=utf-8",
      ["www-authenticate"] = 'Bearer realm="proveai"',
    }, REFUSAL .. "\n")
  end
end

function envoy_on_request(handle)
  local metadata = handle:metadata()
  local headers = handle:headers()
  local keys = metadata:get("api_keys") or {}
  if not M.decide(headers:get("x-api-key"), headers:get("authorization"), keys) then
    M.refuse(handle, metadata:get("grpc") == true)
  end
end

return M
