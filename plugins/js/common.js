// Helpers shared by the JavaScript policies: the JS counterparts of the bits
// of `wsched-sdk` (plugins/sdk-rust) that the Rust reference policies use.
//
// The JS policies are line-for-line ports of the Rust ones and a test expects
// byte-identical replay results, so every helper here reproduces the Rust
// behaviour exactly, including the corner cases JS would do differently by
// default (string trimming, number parsing, numeric sort, ordered maps).

// No `wsched:policy/host` import here: componentize-js binds the WIT imports
// only in the entry module, so the host's functions are passed in instead
// (see `warn`).

/// `wsched_sdk::log` at warn level, given the host's `log` and `logEnabled`:
/// ask the host first so a message it would drop costs no boundary crossing.
export function warn(host, message) {
  if (host.logEnabled('warn')) {
    host.log('warn', message);
  }
}

/// `wsched_sdk::take_gpus`: the first `k` GPUs of `free` (sorted, so the
/// lowest-numbered ones), removed from it; `undefined` when fewer than `k`
/// are free or `k` is 0 (a gang is all or nothing).
export function takeGpus(free, k) {
  if (k === 0 || free.length < k) {
    return undefined;
  }
  return free.splice(0, k);
}

/// Numeric ascending order. `Array.prototype.sort` without a comparator
/// compares as strings (10 < 9), which would pick different GPUs than Rust.
export function byNumber(a, b) {
  return a - b;
}

/// A GPU id list from the host as a plain, growable Array: the bindings hand
/// numeric lists over as `Uint32Array`s, which cannot be spliced or grown.
export function toArray(list) {
  return Array.isArray(list) ? list : Array.from(list);
}

// Rust's `str::trim` strips Unicode White_Space; JS's `String.prototype.trim`
// also strips U+FEFF and keeps U+0085. Config errors echo the trimmed text,
// so use Rust's set.
const RUST_WS = '[\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const RUST_TRIM = new RegExp(`^${RUST_WS}+|${RUST_WS}+$`, 'g');

/// `str::trim` as Rust does it.
export function rustTrim(s) {
  return s.replace(RUST_TRIM, '');
}

// The grammar of Rust's `f64::from_str`: decimal only, no surrounding
// whitespace, `inf`/`infinity`/`nan` in any case. `Number()` would also take
// "", " 1", "0x10", "0b1" and "Infinity" only in that exact case.
const RUST_F64 = /^[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)$/i;

/// `s.parse::<f64>()`: the value, or `undefined` where Rust gives an error.
/// For accepted decimal text `Number()` rounds exactly as Rust does (both are
/// correctly rounded), so the thresholds are bit-identical.
export function parseRustF64(s) {
  if (!RUST_F64.test(s)) {
    return undefined;
  }
  const body = s.replace(/^[+-]/, '').toLowerCase();
  const negative = s.startsWith('-');
  if (body === 'nan') {
    return NaN;
  }
  if (body === 'inf' || body === 'infinity') {
    return negative ? -Infinity : Infinity;
  }
  return Number(s);
}

/// A map ordered by key, the part of Rust's `BTreeMap` the policies use:
/// both walk their jobs in id order (ids grow with submission, so id order is
/// submission order). Keys are the host's u64 job ids, i.e. BigInt.
///
/// A `Map` for lookups plus parallel sorted `keys`/`vals` arrays, so that a
/// walk in order is a plain indexed loop with no lookup per entry (this runs
/// in an interpreter: SpiderMonkey in Wasm has no JIT). Ids mostly arrive in
/// increasing order, so an insert is usually an append; otherwise a binary
/// search and a splice, O(live jobs) at worst, like the rest of a decision.
export class OrderedMap {
  constructor() {
    this.map = new Map();
    this.keys = [];
    this.vals = [];
  }

  get size() {
    return this.keys.length;
  }

  get(key) {
    return this.map.get(key);
  }

  /// Insert or replace; a replaced key keeps its place (as in a BTreeMap).
  set(key, value) {
    const keys = this.keys;
    const n = keys.length;
    if (this.map.has(key)) {
      this.vals[this.lowerBound(key)] = value;
    } else if (n === 0 || keys[n - 1] < key) {
      keys.push(key);
      this.vals.push(value);
    } else {
      const i = this.lowerBound(key);
      keys.splice(i, 0, key);
      this.vals.splice(i, 0, value);
    }
    this.map.set(key, value);
  }

  delete(key) {
    if (this.map.delete(key)) {
      const i = this.lowerBound(key);
      this.keys.splice(i, 1);
      this.vals.splice(i, 1);
    }
  }

  /// Remove the first `count` entries (the smallest keys), e.g. the jobs
  /// FIFO just started: one splice rather than one per job.
  dropFirst(count) {
    for (let i = 0; i < count; i++) {
      this.map.delete(this.keys[i]);
    }
    this.keys.splice(0, count);
    this.vals.splice(0, count);
  }

  /// Index of the first key not less than `key`.
  lowerBound(key) {
    const keys = this.keys;
    let lo = 0;
    let hi = keys.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (keys[mid] < key) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }
}
