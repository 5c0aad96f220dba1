-- wrk script: POST a small OpenAI chat request (JSON) on every request.
--   wrk -t2 -c64 -d10s -s bench/post.lua http://127.0.0.1:PORT/v1/chat/completions
-- Env: WRK_STREAM=1 asks for a stream; WRK_TASK sets X-Thermostat-Task.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local stream = os.getenv("WRK_STREAM") == "1"
local task = os.getenv("WRK_TASK")
if task then wrk.headers["X-Thermostat-Task"] = task end
wrk.body = '{"model":"m","messages":[{"role":"user","content":"What is 2+2?"}],'
  .. '"max_tokens":200' .. (stream and ',"stream":true' or '') .. '}'
