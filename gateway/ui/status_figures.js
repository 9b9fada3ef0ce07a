// The status page's arithmetic, apart from the page so that it can be read
// (and tested) on its own: /admin/status gives cumulative counters and
// histogram buckets; a rate is the difference between two polls over the
// time between them, a percentile is read from the buckets' differences.

/** Fixed-size ring of samples: the oldest is overwritten once it is full. */
export class Ring {
  constructor(capacity) {
    this.capacity = capacity;
    this.items = [];
    this.start = 0;
  }
  push(item) {
    if (this.items.length < this.capacity) this.items.push(item);
    else {
      this.items[this.start] = item;
      this.start = (this.start + 1) % this.capacity;
    }
  }
  toArray() {
    return this.items.slice(this.start).concat(this.items.slice(0, this.start));
  }
  clear() {
    this.items = [];
    this.start = 0;
  }
}

/** The q-quantile of per-bucket counts, interpolated as Prometheus does. */
export function quantile(q, bounds, counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    const c = counts[i];
    if (c > 0 && seen + c >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];
      const lo = i === 0 ? 0 : bounds[i - 1];
      return lo + (bounds[i] - lo) * ((rank - seen) / c);
    }
    seen += c;
  }
  return bounds[bounds.length - 1];
}

// A counter that went down means the gateway restarted: count from zero.
const grew = (now, before) => (now >= before ? now - before : now);

function bucketDelta(now, before) {
  if (!before || before.counts.length !== now.counts.length) return now.counts;
  return now.counts.map((n, i) => grew(n, before.counts[i]));
}

function sumTokens(tokens, kinds) {
  return kinds.reduce((sum, kind) => sum + (tokens[kind] || 0), 0);
}

/** One provider's figures between two status bodies (`before` may be null). */
export function providerRates(now, before, dt, bounds) {
  const prev = before || null;
  const requests = grew(now.requests, prev ? prev.requests : 0);
  const errors = grew(now.errors, prev ? prev.errors : 0);
  const ttfb = bucketDelta(now.ttfb, prev && prev.ttfb);
  const tokIn = grew(
    sumTokens(now.tokens, ["prompt"]),
    prev ? sumTokens(prev.tokens, ["prompt"]) : 0,
  );
  const tokOut = grew(
    sumTokens(now.tokens, ["completion"]),
    prev ? sumTokens(prev.tokens, ["completion"]) : 0,
  );
  return {
    rps: requests / dt,
    errorRate: requests ? errors / requests : null,
    p50: quantile(0.5, bounds, ttfb),
    p95: quantile(0.95, bounds, ttfb),
    tokIn: tokIn / dt,
    tokOut: tokOut / dt,
    inflight: now.in_flight,
  };
}

export function rates(now, before) {
  const dt = Math.max(now.time - before.time, 0.001);
  const old = Object.fromEntries(before.providers.map((p) => [p.name, p]));
  const providers = {};
  for (const p of now.providers)
    providers[p.name] = providerRates(p, old[p.name], dt, now.bounds.ttfb);
  const overhead = bucketDelta(now.overhead, before.overhead);
  return {
    time: now.time,
    providers,
    overheadP50: quantile(0.5, now.bounds.overhead, overhead),
    overheadP95: quantile(0.95, now.bounds.overhead, overhead),
  };
}
