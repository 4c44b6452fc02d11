// Envelope, block and certificate checks from docs/protocol.md §4-§6 (no libp2p needed).
import { createHash, createPublicKey, verify } from 'node:crypto';
import { decode, encode } from './cbor.mjs';

export const DOMAIN = 'cmfl-p2p/envelope/1';
const ALPHABET = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
const PEER_ID_PREFIX = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];

export const hex = (b) => Buffer.from(b).toString('hex');
export const unhex = (s) => new Uint8Array(Buffer.from(s, 'hex'));
export const sha256 = (b) => new Uint8Array(createHash('sha256').update(b).digest());

export function base58decode(s) {
  let n = 0n;
  for (const c of s) {
    const i = ALPHABET.indexOf(c);
    if (i < 0) throw new Error('not base58');
    n = n * 58n + BigInt(i);
  }
  const bytes = [];
  while (n > 0n) { bytes.unshift(Number(n & 255n)); n >>= 8n; }
  for (const c of s) { if (c === '1') bytes.unshift(0); else break; }
  return Uint8Array.from(bytes);
}

export function publicKeyOf(peerId) {
  const raw = base58decode(peerId);
  if (raw.length !== 38 || PEER_ID_PREFIX.some((b, i) => raw[i] !== b)) throw new Error('not an Ed25519 peer id');
  return raw.subarray(6);
}

export function ed25519Verify(peerId, message, signature) {
  const der = Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), Buffer.from(publicKeyOf(peerId))]);
  const key = createPublicKey({ key: der, format: 'der', type: 'spki' });
  return verify(null, Buffer.from(message), key, Buffer.from(signature));
}

const KEYS = ['k', 'n', 'p', 'r', 's', 'sig'];
export const KINDS = ['update', 'scores', 'pre_prepare', 'prepare', 'commit', 'view_change', 'new_view', 'block', 'evidence', 'join', 'metrics', 'pledge'];

export function decodeEnvelope(wire) {
  const m = decode(wire);
  if (!(m instanceof Map) || m.size !== 6 || !KEYS.every((k) => m.has(k))) throw new Error('not an envelope map');
  const env = { kind: m.get('k'), networkId: m.get('n'), payload: m.get('p'), round: m.get('r'), sender: m.get('s'), signature: m.get('sig') };
  if (!KINDS.includes(env.kind)) throw new Error('unknown kind');
  if (!(env.networkId instanceof Uint8Array) || env.networkId.length !== 32) throw new Error('bad network id');
  if (!Number.isSafeInteger(env.round) || env.round < 0) throw new Error('bad round');
  if (!(env.signature instanceof Uint8Array) || env.signature.length !== 64) throw new Error('bad signature length');
  return env;
}

// A verifier whose signed layout differs from the specified one by one byte (tests only:
// `live_peer.mjs --flip-layout-byte N` must then fail against a live network).
let flipAt = -1;
export function flipSignedLayoutByte(offset) { flipAt = offset; }

export function signedBytes(env) {
  const bytes = Uint8Array.from(encode([DOMAIN, env.kind, env.networkId, env.round, env.sender, env.payload]));
  if (flipAt >= 0) bytes[flipAt] ^= 1;
  return bytes;
}

export function envelopeValid(env) {
  return ed25519Verify(env.sender, signedBytes(env), env.signature);
}

export function quorum(n) { const f = Math.max(0, Math.floor((n - 1) / 3)); return Math.floor((n + f) / 2) + 1; }

// Checks a committed block map {block, certificate} against the committee the parent named;
// returns the block hash. Throws on any failure.
export function verifyCommitted(committed, committee) {
  const block = committed.get('block');
  const cert = committed.get('certificate');
  const blockBytes = encode(block);
  const hash = sha256(blockBytes);
  const view = cert.get('view');
  const seen = new Set();
  for (const [member, sig] of cert.get('commits')) {
    if (!committee.includes(member)) throw new Error(`signer ${member} not on the committee`);
    if (seen.has(member)) throw new Error('signer counted twice');
    const commit = { kind: 'commit', networkId: block.get('network_id'), round: block.get('height'), sender: member,
      payload: new Map([['view', view], ['value_hash', hash]]) };
    if (!ed25519Verify(member, signedBytes(commit), sig)) throw new Error(`bad certificate signature of ${member}`);
    seen.add(member);
  }
  if (seen.size < quorum(committee.length)) throw new Error(`certificate has ${seen.size} votes, needs ${quorum(committee.length)}`);
  return hash;
}

// A signed peer record (§7, /cmfl/peers/2): {"a", "n", "p", "q", "v": 1, "sig"}; throws if bad.
export function verifyPeerRecord(wire) {
  const rec = decode(wire);
  if (!(rec instanceof Map) || rec.size !== 6 || rec.get('v') !== 1) throw new Error('not a peer record');
  const signed = encode(['cmfl-p2p/peer-record/1', rec.get('n'), rec.get('p'), rec.get('q'), rec.get('a')]);
  if (!ed25519Verify(rec.get('p'), signed, rec.get('sig'))) throw new Error('peer record signature does not verify');
  return rec;
}

export function isPeerRecord(wire) {
  try { const m = decode(wire); return m instanceof Map && m.has('v') && m.has('q'); } catch { return false; }
}
