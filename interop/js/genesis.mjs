// The network id of docs/protocol.md §2 from a genesis.json file: SHA-256 of the canonical
// CBOR of the genesis document. JSON does not tell 1 from 1.0, so the file is read with its
// number syntax kept: a number written with a '.' or an exponent is a CBOR float, any other
// an integer (docs/protocol.md, "The genesis file").
import { encode } from './cbor.mjs';
import { sha256 } from './protocol.mjs';

export function parseGenesisJson(text) {
  let pos = 0;
  const ws = () => { while (/\s/.test(text[pos] ?? '')) pos++; };
  function value() {
    ws();
    const c = text[pos];
    if (c === '{') {
      pos++; const m = new Map(); ws();
      if (text[pos] === '}') { pos++; return m; }
      for (;;) {
        ws(); const k = value(); if (typeof k !== 'string') throw new Error('genesis: key not a string');
        ws(); if (text[pos++] !== ':') throw new Error('genesis: expected :');
        if (m.has(k)) throw new Error(`genesis: duplicate key ${k}`);
        m.set(k, value()); ws();
        const d = text[pos++];
        if (d === '}') return m;
        if (d !== ',') throw new Error('genesis: expected , or }');
      }
    }
    if (c === '[') {
      pos++; const a = []; ws();
      if (text[pos] === ']') { pos++; return a; }
      for (;;) {
        a.push(value()); ws();
        const d = text[pos++];
        if (d === ']') return a;
        if (d !== ',') throw new Error('genesis: expected , or ]');
      }
    }
    if (c === '"') {
      const start = pos;
      pos++;
      while (text[pos] !== '"') { if (text[pos] === '\\') pos++; pos++; if (pos > text.length) throw new Error('genesis: open string'); }
      pos++;
      return JSON.parse(text.slice(start, pos));
    }
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, pos)) { pos += word.length; return v; }
    }
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(pos));
    if (!m) throw new Error(`genesis: unexpected ${c} at ${pos}`);
    pos += m[0].length;
    if (m[1] !== undefined || m[2] !== undefined) return { float: Number(m[0]) };
    const n = Number(m[0]);
    if (!Number.isSafeInteger(n)) throw new Error('genesis: integer too large');
    return n;
  }
  const v = value(); ws();
  if (pos !== text.length) throw new Error('genesis: trailing text');
  return v;
}

export function networkIdOf(genesisText) {
  return sha256(encode(parseGenesisJson(genesisText)));
}
