// The CBOR profile of docs/protocol.md §3, written from the document alone: a strict decoder
// (canonical form only) and the canonical encoder. Values: BigInt-free numbers (safe ints),
// Uint8Array, string, Array, Map (text keys), true/false/null, and {float: x} for floats.

export class ProfileError extends Error {}

export function decode(buf) {
  let pos = 0;
  const end = buf.length;
  const need = (n) => { if (pos + n > end) throw new ProfileError('truncated'); };
  function arg(ib) {
    const ai = ib & 31;
    if (ai < 24) return ai;
    if (ai >= 24 && ai <= 27) {
      const w = 1 << (ai - 24);
      need(w);
      let v = 0n;
      for (let i = 0; i < w; i++) v = (v << 8n) | BigInt(buf[pos + i]);
      pos += w;
      const min = w === 1 ? 24n : 1n << BigInt(4 * w);
      if (v < min) throw new ProfileError('non-canonical argument');
      if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new ProfileError('integer too large for this verifier');
      return Number(v);
    }
    if (ai === 31) throw new ProfileError('indefinite-length');
    throw new ProfileError('reserved');
  }
  function item(depth) {
    need(1);
    const ib = buf[pos++];
    const major = ib >> 5;
    if (major === 7) return simple(ib);
    const a = arg(ib);
    if (major === 0) return a;
    if (major === 1) return -1 - a;
    if (major === 2 || major === 3) {
      need(a);
      const raw = buf.subarray(pos, pos + a);
      pos += a;
      if (major === 2) return new Uint8Array(raw);
      return new TextDecoder('utf-8', { fatal: true }).decode(raw);
    }
    if (major === 6) throw new ProfileError('tag');
    if (depth >= 16) throw new ProfileError('too-deep');
    if (major === 4) {
      const out = [];
      for (let i = 0; i < a; i++) out.push(item(depth + 1));
      return out;
    }
    const m = new Map();
    let prev = null;
    for (let i = 0; i < a; i++) {
      const start = pos;
      if (pos < end && (buf[pos] >> 5) !== 3) throw new ProfileError('bad-key');
      const key = item(depth + 1);
      const enc = buf.subarray(start, pos);
      if (prev && keyCompare(prev, enc) >= 0) throw new ProfileError('unsorted or duplicate keys');
      prev = enc;
      m.set(key, item(depth + 1));
    }
    return m;
  }
  function simple(ib) {
    const ai = ib & 31;
    if (ai === 20) return false;
    if (ai === 21) return true;
    if (ai === 22) return null;
    if (ai >= 25 && ai <= 27) {
      const w = 1 << (ai - 24);
      need(w);
      const dv = new DataView(buf.buffer, buf.byteOffset + pos, w);
      const v = w === 2 ? half(dv.getUint16(0)) : w === 4 ? dv.getFloat32(0) : dv.getFloat64(0);
      pos += w;
      if (!Number.isFinite(v)) throw new ProfileError('non-finite-float');
      if (w > 2 && floatBytes(v).length - 1 < w) throw new ProfileError('non-canonical float');
      return { float: v };
    }
    throw new ProfileError('simple-value');
  }
  const v = item(0);
  if (pos !== end) throw new ProfileError('trailing-bytes');
  return v;
}

function keyCompare(a, b) {
  if (a.length !== b.length) return a.length - b.length;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return 0;
}

function half(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

function toHalf(v) { // the half bits of v if exact, else null
  const buf = new DataView(new ArrayBuffer(4));
  buf.setFloat32(0, v);
  if (buf.getFloat32(0) !== v) return null;
  // by construction: sign, exponent, mantissa
  const sign = v < 0 || Object.is(v, -0) ? 0x8000 : 0;
  const a = Math.abs(v);
  if (a === 0) return sign;
  let e = Math.floor(Math.log2(a));
  if (e < -14) { // subnormal
    const f = a / 2 ** -24;
    return Number.isInteger(f) && f < 1024 ? sign | f : null;
  }
  if (2 ** e > a) e -= 1;
  if (2 ** (e + 1) <= a) e += 1;
  if (e > 15) return null;
  const f = (a / 2 ** e - 1) * 1024;
  return Number.isInteger(f) ? sign | ((e + 15) << 10) | f : null;
}

function floatBytes(v) { // shortest exact float encoding (head byte included)
  const h = toHalf(v);
  if (h !== null) return Uint8Array.of(0xf9, h >> 8, h & 0xff);
  const dv = new DataView(new ArrayBuffer(8));
  dv.setFloat32(0, v);
  if (dv.getFloat32(0) === v) return Uint8Array.of(0xfa, ...new Uint8Array(dv.buffer, 0, 4));
  dv.setFloat64(0, v);
  return Uint8Array.of(0xfb, ...new Uint8Array(dv.buffer));
}

function head(major, n) {
  const m = major << 5;
  if (n < 24) return [m | n];
  if (n < 256) return [m | 24, n];
  if (n < 65536) return [m | 25, n >> 8, n & 255];
  if (n < 2 ** 32) return [m | 26, (n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
  const b = [m | 27];
  let big = BigInt(n);
  const bytes = [];
  for (let i = 0; i < 8; i++) { bytes.unshift(Number(big & 255n)); big >>= 8n; }
  return b.concat(bytes);
}

export function encode(v) {
  const out = [];
  (function put(x) {
    if (x === null) out.push(0xf6);
    else if (x === true) out.push(0xf5);
    else if (x === false) out.push(0xf4);
    else if (typeof x === 'number') {
      if (!Number.isSafeInteger(x)) throw new ProfileError('not a safe integer');
      out.push(...(x >= 0 ? head(0, x) : head(1, -1 - x)));
    } else if (x instanceof Uint8Array) { out.push(...head(2, x.length)); for (const b of x) out.push(b); }
    else if (typeof x === 'string') { const b = new TextEncoder().encode(x); out.push(...head(3, b.length)); for (const c of b) out.push(c); }
    else if (Array.isArray(x)) { out.push(...head(4, x.length)); x.forEach(put); }
    else if (x instanceof Map) {
      const entries = [...x.entries()].map(([k, val]) => {
        if (typeof k !== 'string') throw new ProfileError('map key not text');
        return [encode(k), val];
      });
      entries.sort((a, b) => keyCompare(a[0], b[0]));
      out.push(...head(5, entries.length));
      for (const [k, val] of entries) { for (const c of k) out.push(c); put(val); }
    } else if (x && typeof x.float === 'number') {
      if (!Number.isFinite(x.float)) throw new ProfileError('non-finite float');
      out.push(...floatBytes(x.float));
    } else throw new ProfileError('outside the profile');
  })(v);
  return Uint8Array.from(out);
}
