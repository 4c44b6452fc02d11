#!/usr/bin/env node
// Verifies tests/vectors/vectors.json with this independent implementation; exit 1 on any mismatch.
import { readFileSync } from 'node:fs';
import { decode, encode } from './cbor.mjs';
import { decodeEnvelope, envelopeValid, hex, signedBytes, sha256, unhex, verifyCommitted, ed25519Verify } from './protocol.mjs';

const path = process.argv[2] ?? new URL('../../tests/vectors/vectors.json', import.meta.url).pathname;
const v = JSON.parse(readFileSync(path, 'utf8'));
const failures = [];
const check = (ok, what) => { if (!ok) failures.push(what); };
let sigs = 0;

for (const e of v.envelopes) {
  try {
    const wire = unhex(e.wire);
    const env = decodeEnvelope(wire);
    check(hex(encode(decode(wire))) === e.wire, `${e.kind}: not canonical`);
    check(hex(signedBytes(env)) === e.signed_bytes, `${e.kind}: signed bytes differ`);
    check(hex(sha256(wire)) === e.digest, `${e.kind}: digest differs`);
    const ok = envelopeValid(env);
    check(ok, `${e.kind}: signature does not verify`);
    if (ok) sigs++;
  } catch (err) { failures.push(`${e.kind}: ${err.message}`); }
}
let certs = 0;
try {
  const b = v.block;
  const committed = decode(unhex(b.committed_encoded));
  check(hex(encode(committed.get('block'))) === b.encoded, 'block encoding differs');
  const h = verifyCommitted(committed, b.committee);
  check(hex(h) === b.hash, 'block hash differs');
  certs++;
  // the view is signed: the same votes as view 0 must not verify
  committed.get('certificate').set('view', 0);
  let refused = false;
  try { verifyCommitted(committed, b.committee); } catch { refused = true; }
  check(refused, 'certificate verified with the wrong view');
} catch (err) { failures.push(`block: ${err.message}`); }
try {
  const rec = decode(unhex(v.peer_record.wire));
  const signed = encode(['cmfl-p2p/peer-record/1', rec.get('n'), rec.get('p'), rec.get('q'), rec.get('a')]);
  check(hex(signed) === v.peer_record.signed_bytes, 'peer record signed bytes differ');
  check(ed25519Verify(rec.get('p'), signed, rec.get('sig')), 'peer record signature');
} catch (err) { failures.push(`peer record: ${err.message}`); }
for (const c of v.cbor_canonical) {
  try { check(hex(encode(decode(unhex(c.hex)))) === c.hex, `cbor ${c.value}`); } catch (err) { failures.push(`cbor ${c.value}: ${err.message}`); }
}
for (const c of v.cbor_rejected) {
  let refused = false;
  try { decode(unhex(c.hex)); } catch { refused = true; }
  check(refused, `cbor accepted: ${c.why}`);
}
console.log(`envelope signatures verified: ${sigs}/${v.envelopes.length}; certificates verified: ${certs}; ` +
  `cbor examples: ${v.cbor_canonical.length} canonical, ${v.cbor_rejected.length} rejected; failures: ${failures.length}`);
for (const f of failures) console.log(`FAIL ${f}`);
process.exit(failures.length ? 1 : 0);
