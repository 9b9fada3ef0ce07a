"""The hot path: one client request in, one upstream exchange, bytes back.

Read in this order:

- `endpoints`: the table of model-routed endpoints (path, upstream path,
  JSON or multipart, usage reported, response ids remembered).
- `router`: `provider/model` (or an alias, or an unprefixed model) to the
  provider runtimes that serve it.
- `forwarder`: `handle()` wraps every proxied request (request id, errors,
  metrics, access log, tracing); `forward()` reads and checks the body,
  routes it, and builds one `Attempt` per target (`rewrite`: the upstream
  request head from the client's raw header bytes, the `model` string
  replaced in the raw body; `request_body`, `multipart`: bounded decoding).
- `relay`: `dispatch()` tries the attempts in order (failover before the
  first byte), `send()` waits for the upstream head, `relay()` writes the
  head to the client; `body` relays the body (a known length copied, a
  stream moved in the upstream connection's parser callbacks).
- `upstream`, `upstream_conn`, `upstream_framing`, `upstream_types`: the keep-alive HTTP/1.1
  client (a pool per provider or replica, llhttp framing, timeouts).
- `replicas`, `replica_*`: several upstream servers behind one provider.
- Side copies that never change a byte: `usage` (tokens), `sse_filter`
  (the one opt-in edit: a usage chunk the client did not ask for).
- `passthrough`: `/providers/NAME/...` and follow-ups by response id.
"""
