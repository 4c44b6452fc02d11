#!/usr/bin/env node
// A js-libp2p peer that joins a live CMFL network, written from docs/protocol.md: TCP, Noise,
// yamux, gossipsub /meshsub/1.1.0 with strict signing and message id = from || seqno. It reads
// every topic and checks every envelope (§4-§5), syncs the chain over /cmfl/sync/1 from height
// 0 and checks each block (§6: hash link, certificate, score vectors, evidence, joins), and
// with --hostile sends forged, malformed, out-of-profile and non-member envelopes, one kind to
// each peer (so no single peer sees enough of them to ban us before it has checked them all).
//
//   node live_peer.mjs --genesis G --key-file K --peer MULTIADDR... [--rounds 10]
//                      [--timeout 240] [--hostile] [--hostile-at 3]
//                      [--flip-layout-byte N] [--fail-fast]
//
// --flip-layout-byte N verifies against a signed layout with byte N flipped (a check that a
// one-byte disagreement with docs/protocol.md §4 fails the run); --fail-fast stops at the
// first failure.
//
// Prints one JSON report on stdout; progress on stderr. Exit 0 iff nothing failed to verify.
import './node20.mjs'; // before any libp2p module
import { readFileSync } from 'node:fs';
import { createLibp2p } from 'libp2p';
import { tcp } from '@libp2p/tcp';
import { noise } from '@chainsafe/libp2p-noise';
import { yamux } from '@chainsafe/libp2p-yamux';
import { gossipsub } from '@libp2p/gossipsub';
import { RPC } from '@libp2p/gossipsub/message';
import { identify } from '@libp2p/identify';
import { ping } from '@libp2p/ping';
import { generateKeyPairFromSeed, generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import { decode, encode } from './cbor.mjs';
import { decodeEnvelope, ed25519Verify, envelopeValid, flipSignedLayoutByte, hex, isPeerRecord, sha256, signedBytes, verifyCommitted, verifyPeerRecord } from './protocol.mjs';
import { networkIdOf, parseGenesisJson } from './genesis.mjs';

// ---- arguments -------------------------------------------------------------------------------
const args = { peer: [], rounds: 10, timeout: 240, hostile: false, hostileAt: 3, flipLayoutByte: -1, failFast: false };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  const next = () => process.argv[++i];
  if (a === '--genesis') args.genesis = next();
  else if (a === '--key-file') args.keyFile = next();
  else if (a === '--peer') args.peer.push(next());
  else if (a === '--rounds') args.rounds = Number(next());
  else if (a === '--timeout') args.timeout = Number(next());
  else if (a === '--hostile') args.hostile = true;
  else if (a === '--hostile-at') args.hostileAt = Number(next());
  else if (a === '--flip-layout-byte') args.flipLayoutByte = Number(next());
  else if (a === '--fail-fast') args.failFast = true;
  else { console.error(`unknown argument ${a}`); process.exit(2); }
}
if (!args.genesis || !args.keyFile || args.peer.length === 0) {
  console.error('usage: live_peer.mjs --genesis G --key-file K --peer MULTIADDR... [--rounds N] [--hostile]');
  process.exit(2);
}
if (args.flipLayoutByte >= 0) flipSignedLayoutByte(args.flipLayoutByte);
const say = (...m) => console.error(`[js ${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...m);
const t0 = Date.now();

// ---- protocol constants (docs/protocol.md) ----------------------------------------------------
const genesisText = readFileSync(args.genesis, 'utf8');
const genesis = parseGenesisJson(genesisText);
const NETWORK_ID = networkIdOf(genesisText);
const PREFIX = hex(NETWORK_ID).slice(0, 16);
const TOPIC_KINDS = {
  updates: ['update'],
  committee: ['scores', 'pledge', 'pre_prepare', 'prepare', 'commit', 'view_change', 'new_view'],
  blocks: ['block', 'evidence', 'metrics'],
  membership: ['join'],
};
const RELAYED = new Set(['committee']);
const topicName = (t) => `/cmfl/${PREFIX}/${t}`;
const TOPIC_OF = Object.fromEntries(Object.keys(TOPIC_KINDS).map((t) => [topicName(t), t]));
const SYNC = '/cmfl/sync/1';
const FLOAT_KINDS = new Set(['update', 'scores', 'block', 'metrics']);
const DTYPE_WIDTH = { float32: 4, float64: 8, int64: 8 };

// ---- the report ---------------------------------------------------------------------------------
const report = {
  network_id: hex(NETWORK_ID), peer_id: null, peers_dialled: 0,
  gossip: { messages: 0, by_topic: {}, by_kind: {}, envelope_signatures_verified: 0,
    embedded_signatures_verified: 0, value_hashes_checked: 0, tensors_checked: 0, max_round: -1,
    stale_received: 0, stale_max_age: 0 },
  chain: { blocks_verified: 0, height: -1, head: null, certificate_signatures_verified: 0,
    score_vector_signatures_verified: 0, evidence_signatures_verified: 0,
    join_signatures_verified: 0, update_references: 0, update_references_seen_on_gossip: 0,
    gossip_blocks_matching_chain: 0, sync_requests: 0 },
  hostile: { sent: [] },
  pings: { ok: 0, failed: 0, max_ms: 0, samples_ms: [] },
  disconnections: 0,
  failures: [],
};
const fail = (what) => { if (report.failures.length < 50) report.failures.push(what); say('FAIL', what); };
const bump = (obj, key) => { obj[key] = (obj[key] ?? 0) + 1; };

// ---- envelope checks (§4, §5) -----------------------------------------------------------------
const updateDigests = new Set();
const gossipBlocks = new Map(); // height -> block hash hex (from `block` envelopes)

function isFloat(x) { return x !== null && typeof x === 'object' && typeof x.float === 'number'; }
function containsFloat(x) {
  if (isFloat(x)) return true;
  if (Array.isArray(x)) return x.some(containsFloat);
  if (x instanceof Map) return [...x.values()].some(containsFloat);
  return false;
}

function checkTensorMap(m, where) {
  if (!(m instanceof Map)) return fail(`${where}: tensor map is not a map`);
  for (const [name, t] of m) {
    const dtype = t.get('dtype'), shape = t.get('shape'), data = t.get('data');
    const width = DTYPE_WIDTH[dtype];
    if (!width || !Array.isArray(shape) || !(data instanceof Uint8Array)) { fail(`${where}: tensor ${name} malformed`); continue; }
    const n = shape.reduce((a, b) => a * b, 1);
    if (data.length !== n * width) { fail(`${where}: tensor ${name} has ${data.length} bytes, not ${n}x${width}`); continue; }
    if (dtype === 'float32') { // little-endian: every element finite when read as <f4
      const dv = new DataView(data.buffer, data.byteOffset, data.length);
      for (let i = 0; i < n; i++) if (!Number.isFinite(dv.getFloat32(4 * i, true))) { fail(`${where}: tensor ${name} not finite as little-endian`); break; }
    }
    report.gossip.tensors_checked++;
  }
}

// An embedded message [sender, signature, body] is that sender's signature over the envelope of
// `kind` with the embedding message's network id and round and `body` as payload (§5).
function checkEmbedded(list, kind, env, where) {
  for (const e of list ?? []) {
    const [sender, sig, body] = e;
    const inner = { kind, networkId: env.networkId, round: env.round, sender, payload: body };
    if (ed25519Verify(sender, signedBytes(inner), sig)) report.gossip.embedded_signatures_verified++;
    else fail(`${where}: embedded ${kind} of ${sender.slice(-8)} does not verify`);
    if (kind === 'view_change') checkPrepared(body.get('prepared'), env, `${where}/view_change`);
  }
}
function checkPrepared(prepared, env, where) {
  if (prepared === null || prepared === undefined) return;
  checkValue(prepared, where);
  checkEmbedded(prepared.get('prepares'), 'prepare', env, where);
}
function checkValue(p, where) {
  if (!p.has('value')) return;
  if (hex(sha256(p.get('value'))) !== hex(p.get('value_hash'))) fail(`${where}: value_hash is not SHA-256 of value`);
  else report.gossip.value_hashes_checked++;
  const block = decode(p.get('value'));
  if (hex(encode(block)) !== hex(p.get('value'))) fail(`${where}: value is not a canonical block`);
}

function checkGossip(topic, from, data) {
  const g = report.gossip;
  g.messages++;
  bump(g.by_topic, topic);
  let env;
  try { env = decodeEnvelope(data); } catch (err) { return fail(`${topic}: undecodable envelope: ${err.message}`); }
  bump(g.by_kind, env.kind);
  const where = `${env.kind}@${env.round} of ${String(env.sender).slice(-8)}`;
  if (hex(encode(decode(data))) !== hex(data)) fail(`${where}: not canonical`);
  if (!TOPIC_KINDS[topic].includes(env.kind)) fail(`${where}: kind on topic ${topic}`);
  if (!RELAYED.has(topic) && from !== env.sender) fail(`${where}: pubsub from ${from.slice(-8)} is not the sender`);
  if (hex(env.networkId) !== hex(NETWORK_ID)) fail(`${where}: another network`);
  if (!FLOAT_KINDS.has(env.kind) && containsFloat(env.payload)) fail(`${where}: float in payload`);
  if (!envelopeValid(env)) return fail(`${where}: signature does not verify`);
  g.envelope_signatures_verified++;
  if (!['block', 'evidence', 'metrics', 'join'].includes(env.kind)) {
    // A round-scoped message of a round the chain has already decided is stale (issue #17: a
    // freshly grafted peer was pushed hundreds of them); counted, not a failure.
    if (env.round < report.chain.height) { g.stale_received++; g.stale_max_age = Math.max(g.stale_max_age, report.chain.height - env.round); }
    g.max_round = Math.max(g.max_round, env.round);
  }
  const p = env.payload;
  try {
    switch (env.kind) {
      case 'update':
        updateDigests.add(hex(sha256(data)));
        if (p.has('model') === p.has('blob')) fail(`${where}: not exactly one of model and blob`);
        if (p.has('model')) checkTensorMap(p.get('model'), where);
        break;
      case 'scores':
        for (const [, digest, distance] of p.get('scores')) {
          if (!isFloat(distance) || distance.float < 0) fail(`${where}: a distance that is not a float >= 0`);
          if (!(digest instanceof Uint8Array) || digest.length !== 32) fail(`${where}: bad digest`);
        }
        break;
      case 'pre_prepare': checkValue(p, where); break;
      case 'view_change': checkPrepared(p.get('prepared'), env, where); break;
      case 'new_view': checkValue(p, where); checkEmbedded(p.get('view_changes'), 'view_change', env, where); break;
      case 'block': {
        const h = hex(sha256(encode(p.get('block'))));
        gossipBlocks.set(p.get('block').get('height'), h);
        break;
      }
      case 'evidence':
        for (const w of p) { // two envelopes, or two peer records (a twin)
          if (isPeerRecord(w)) { verifyPeerRecord(w); g.embedded_signatures_verified++; continue; }
          const e = decodeEnvelope(w);
          if (envelopeValid(e)) g.embedded_signatures_verified++; else fail(`${where}: evidence envelope does not verify`);
        }
        break;
      default: break;
    }
  } catch (err) { fail(`${where}: payload: ${err.message}`); }
}

// ---- the chain (§6), fetched over /cmfl/sync/1 (§7) ----------------------------------------------
const chain = {
  next: 0, prevHash: NETWORK_ID,
  committee: [...genesis.get('committee')].sort(),
};

function verifyEnvelopeBytes(wire, kind, height, signers, where) {
  const env = decodeEnvelope(wire);
  if (env.kind !== kind) throw new Error(`${where}: a ${env.kind}, not a ${kind}`);
  if (hex(env.networkId) !== hex(NETWORK_ID)) throw new Error(`${where}: another network`);
  if (height !== null && env.round !== height) throw new Error(`${where}: round ${env.round} != ${height}`);
  if (signers && !signers.includes(env.sender)) throw new Error(`${where}: signer not on the committee`);
  if (!envelopeValid(env)) throw new Error(`${where}: signature does not verify`);
  return env;
}

function verifyBlock(committedBytes) {
  const committed = decode(committedBytes);
  if (hex(encode(committed)) !== hex(committedBytes)) throw new Error('committed block not canonical');
  const block = committed.get('block');
  const h = block.get('height');
  const where = `block ${h}`;
  if (h !== chain.next) throw new Error(`${where}: expected height ${chain.next}`);
  if (hex(block.get('prev_hash')) !== hex(chain.prevHash)) throw new Error(`${where}: prev_hash does not link`);
  if (hex(block.get('network_id')) !== hex(NETWORK_ID)) throw new Error(`${where}: another network`);
  if ([...block.get('committee')].sort().join() !== chain.committee.join()) throw new Error(`${where}: committee is not the one its parent named`);
  const hash = verifyCommitted(committed, chain.committee); // throws on a bad certificate
  report.chain.certificate_signatures_verified += committed.get('certificate').get('commits').length;
  for (const sv of block.get('score_vectors')) {
    verifyEnvelopeBytes(sv, 'scores', h, chain.committee, `${where} score vector`);
    report.chain.score_vector_signatures_verified++;
  }
  for (const pair of block.get('evidence')) {
    for (const w of pair) { // two envelopes, or two peer records (a twin)
      if (isPeerRecord(w)) verifyPeerRecord(w);
      else verifyEnvelopeBytes(w, decodeEnvelope(w).kind, null, null, `${where} evidence`);
      report.chain.evidence_signatures_verified++;
    }
  }
  for (const [change, , joinBytes] of block.get('membership')) {
    if (change === 'join') { verifyEnvelopeBytes(joinBytes, 'join', null, null, `${where} join`); report.chain.join_signatures_verified++; }
  }
  for (const ref of block.get('updates')) {
    report.chain.update_references++;
    if (updateDigests.has(hex(ref[1]))) report.chain.update_references_seen_on_gossip++;
  }
  const gh = gossipBlocks.get(h);
  if (gh !== undefined) {
    if (gh !== hex(hash)) throw new Error(`${where}: the gossiped block differs from the synced one`);
    report.chain.gossip_blocks_matching_chain++;
  }
  chain.next = h + 1;
  chain.prevHash = hash;
  chain.committee = [...block.get('next_committee')].sort();
  report.chain.blocks_verified++;
  report.chain.height = h;
  report.chain.head = hex(hash);
}

const frame = (b) => { const out = new Uint8Array(4 + b.length); new DataView(out.buffer).setUint32(0, b.length); out.set(b, 4); return out; };

async function request(peerId, obj, limit) {
  report.chain.sync_requests++;
  const signal = AbortSignal.timeout(30000);
  const stream = await node.dialProtocol(peerId, SYNC, { signal });
  try {
    stream.send(frame(encode(obj)));
    const chunks = [];
    let have = 0, want = null;
    for await (const chunk of stream) {
      const c = chunk instanceof Uint8Array ? chunk : chunk.subarray();
      chunks.push(c); have += c.length;
      if (want === null && have >= 4) {
        const all = Buffer.concat(chunks);
        want = all.readUInt32BE(0);
        if (want > limit) throw new Error(`response of ${want} bytes > ${limit}`);
      }
      if (want !== null && have >= 4 + want) break;
    }
    const all = Buffer.concat(chunks);
    if (want === null || all.length < 4 + want) throw new Error('response truncated');
    return decode(new Uint8Array(all.subarray(4, 4 + want)));
  } finally {
    stream.abort(new Error('done'));
  }
}

async function syncOnce() {
  const peers = node.getPeers().filter((p) => dialled.has(p.toString()));
  if (peers.length === 0) return;
  const peer = peers[report.chain.sync_requests % peers.length];
  try {
    const head = await request(peer, new Map([['t', 'head']]), 256);
    if (head.get('t') !== 'head') throw new Error(`answer ${head.get('t')}`);
    const top = head.get('height');
    while (top !== null && chain.next <= top) {
      const ans = await request(peer, new Map([['t', 'blocks'], ['start', chain.next], ['count', Math.min(64, top - chain.next + 1)]]), 4 * 1024 * 1024);
      if (ans.get('t') !== 'blocks') throw new Error(`answer ${ans.get('t')}: ${ans.get('reason')}`);
      const blocks = ans.get('blocks');
      if (blocks.length === 0) break;
      for (const b of blocks) verifyBlock(b);
    }
  } catch (err) {
    if (/prev_hash|certificate|signature|committee|network|height|differs|canonical|votes|signer/.test(err.message)) fail(`sync: ${err.message}`);
    else say('sync attempt failed:', err.message);
  }
}

// ---- hostile envelopes (sent to one peer each, signed by us at the pubsub layer) ------------------
async function sign(privateKey, kind, round, sender, payload) {
  const env = { kind, networkId: NETWORK_ID, round, sender, payload };
  env.signature = await privateKey.sign(signedBytes(env));
  return env;
}
const wire = (env) => encode(new Map([['k', env.kind], ['n', env.networkId], ['p', env.payload], ['r', env.round], ['s', env.sender], ['sig', env.signature]]));
let seqno = BigInt(Date.now()) * 1000000n;

async function sendTo(peerIdStr, topic, data) {
  const seq = new Uint8Array(8);
  new DataView(seq.buffer).setBigUint64(0, ++seqno);
  const msg = { from: node.peerId.toMultihash().bytes, data, seqno: seq, topic: topicName(topic) };
  const prefix = new TextEncoder().encode('libp2p-pubsub:');
  const body = RPC.Message.encode(msg);
  const toSign = new Uint8Array(prefix.length + body.length); toSign.set(prefix); toSign.set(body, prefix.length);
  msg.signature = await privateKey.sign(toSign); // no `key`: an Ed25519 key is read out of `from`
  return node.services.pubsub.sendRpc(peerIdStr, { subscriptions: [], messages: [msg] });
}

async function hostile() {
  const peers = [...dialled].filter((p) => node.getPeers().some((q) => q.toString() === p));
  if (peers.length < 4) { fail(`hostile: only ${peers.length} connected peers`); return; }
  const r = report.gossip.max_round; // the round in progress
  const me = node.peerId.toString();
  const vote = (view) => new Map([['view', view], ['value_hash', new Uint8Array(32).fill(7)]]);
  const plan = [];
  // 1. forged: a well-formed prepare whose signature is off by one bit (round r+1: not stale)
  const forged = await sign(privateKey, 'prepare', r + 1, me, vote(0));
  forged.signature = Uint8Array.from(forged.signature); forged.signature[5] ^= 1;
  plan.push(['forged-signature', 'committee', wire(forged)]);
  // 2. invalid CBOR: a six-entry map cut after its first key
  plan.push(['undecodable', 'updates', Uint8Array.of(0xa6, 0x61, 0x6b, 0x66)]);
  // 3. out of profile: a correctly signed prepare whose view is a float (floats only in §3's kinds)
  plan.push(['malformed', 'committee', wire(await sign(privateKey, 'prepare', r + 1, me, vote({ float: 0.0 })))]);
  // 4. non-member: a correctly signed prepare by a key no genesis names (for round r and r+1:
  //    "not-member" is benign for another round than the receiver's, so one of the two is loud)
  const stranger = await generateKeyPair('Ed25519');
  const strangerId = peerIdFromPrivateKey(stranger).toString();
  for (const rr of [r, r + 1]) plan.push(['not-member', 'committee', wire(await sign(stranger, 'prepare', rr, strangerId, vote(0)))]);
  // 5. non-canonical: a correctly signed prepare whose round is written in a 9-byte head
  //    (canonical is the shortest), the map assembled by hand in canonical key order
  const e5 = await sign(privateKey, 'prepare', r + 1, me, vote(0));
  const longRound = new Uint8Array(9); longRound[0] = 0x1b; new DataView(longRound.buffer).setBigUint64(1, BigInt(r + 1));
  const parts = [Uint8Array.of(0xa6), encode('k'), encode(e5.kind), encode('n'), encode(e5.networkId), encode('p'),
    encode(e5.payload), encode('r'), longRound, encode('s'), encode(e5.sender), encode('sig'), encode(e5.signature)];
  plan.push(['non-canonical', 'committee', new Uint8Array(Buffer.concat(parts))]);
  const target = { 'forged-signature': 0, undecodable: 1, malformed: 2, 'not-member': 3, 'non-canonical': 0 };
  for (const [code, topic, data] of plan) {
    const to = peers[target[code]];
    const ok = await sendTo(to, topic, data);
    report.hostile.sent.push({ expect: code, topic, to, round: r, bytes: data.length, sent: ok });
    say(`hostile ${code} on ${topic} to ${to.slice(-8)}: ${ok ? 'sent' : 'NOT sent'}`);
  }
  report.hostile.at_height = report.chain.height;
  report.hostile.at = Date.now();
}

// For each peer we sent a hostile envelope to: the PRUNEs it sent us after, and whether it is
// still in our mesh (it scored us negative, so gossipsub v1.1 says it must prune us).
function pruneReport() {
  if (report.hostile.at === undefined) return;
  const targets = [...new Set(report.hostile.sent.map((x) => x.to))];
  report.hostile.pruned_by = Object.fromEntries(targets.map((t) => {
    const after = prunes.filter((p) => p.from === t && p.at >= report.hostile.at);
    const inMesh = Object.keys(TOPIC_KINDS).filter((topic) =>
      node.services.pubsub.getMeshPeers(topicName(topic)).includes(t));
    return [t, { prunes: after.length, topics: [...new Set(after.map((p) => p.topic))].sort(),
      first_ms: after.length ? after[0].at - report.hostile.at : null, still_in_our_mesh: inMesh }];
  }));
  report.prunes_before_hostile = prunes.filter((p) => p.at < report.hostile.at).length;
}

// ---- the node ------------------------------------------------------------------------------------
const seed = Buffer.from(readFileSync(args.keyFile, 'utf8').trim(), 'hex');
const privateKey = await generateKeyPairFromSeed('Ed25519', new Uint8Array(seed));
const msgIdFn = (msg) => { // §2: from bytes || seqno bytes (8, big-endian)
  const from = msg.from.toMultihash().bytes;
  const seq = new Uint8Array(8);
  new DataView(seq.buffer).setBigUint64(0, msg.sequenceNumber);
  const id = new Uint8Array(from.length + 8); id.set(from); id.set(seq, from.length);
  return id;
};
const node = await createLibp2p({
  start: false,
  privateKey,
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  // One slow ping is no reason to drop a peer (§1, liveness): we ping and measure ourselves.
  connectionMonitor: { enabled: false },
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ globalSignaturePolicy: 'StrictSign', msgIdFn, fallbackToFloodsub: false,
      allowPublishToZeroTopicPeers: true, D: 6, Dlo: 4, Dhi: 12, heartbeatInterval: 1000 }),
  },
});
node.services.pubsub.protocols = ['/meshsub/1.1.0']; // §2: the only pubsub protocol
// Every PRUNE we receive, to see from outside whether a peer that scored us negative prunes us.
const prunes = [];
const handlePrune = node.services.pubsub.handlePrune.bind(node.services.pubsub);
node.services.pubsub.handlePrune = async (id, prune) => {
  for (const p of prune) prunes.push({ from: id, topic: TOPIC_OF[p.topicID] ?? p.topicID, at: Date.now() });
  return handlePrune(id, prune);
};
// RPCs from our peers that js-libp2p cannot decode (it drops them with a debug line only).
const decodeRpc = node.services.pubsub.decodeRpc.bind(node.services.pubsub);
report.rpc_decode_errors = { count: 0, first: [] };
node.services.pubsub.decodeRpc = (bytes) => {
  try { return decodeRpc(bytes); } catch (err) {
    report.rpc_decode_errors.count++;
    if (report.rpc_decode_errors.first.length < 3) report.rpc_decode_errors.first.push(`${err.name}: ${err.message} (${bytes.length} bytes: ${hex(bytes.subarray(0, 48))})`);
    throw err;
  }
};
await node.start();
report.peer_id = node.peerId.toString();
say(`peer ${report.peer_id} on network ${PREFIX}`);

const dialled = new Set();
node.addEventListener('peer:disconnect', (e) => { report.disconnections++; say(`disconnected from ${e.detail.toString().slice(-8)}`); });
for (const t of Object.keys(TOPIC_KINDS)) {
  node.services.pubsub.subscribe(topicName(t));
  node.services.pubsub.topicValidators.set(topicName(t), () => 'accept');
}
node.services.pubsub.addEventListener('message', (e) => {
  const m = e.detail;
  const topic = TOPIC_OF[m.topic];
  if (!topic) return;
  if (m.type !== 'signed') return fail(`unsigned pubsub message on ${topic}`);
  checkGossip(topic, m.from.toString(), m.data);
});

async function dialAll() {
  for (const a of args.peer) {
    const ma = multiaddr(a);
    const pid = a.split('/p2p/')[1];
    if (node.getPeers().some((p) => p.toString() === pid)) continue;
    try { await node.dial(ma, { signal: AbortSignal.timeout(15000) }); dialled.add(pid); report.peers_dialled = dialled.size; }
    catch (err) { say(`dial ${pid.slice(-8)}: ${err.message}`); }
  }
}

const pinging = new Set();
async function pingAll() { // one ping in flight per peer; a failure closes nothing
  await Promise.all(node.getPeers().map(async (p) => {
    const id = p.toString();
    if (pinging.has(id)) return;
    pinging.add(id);
    try {
      const ms = await node.services.ping.ping(p, { signal: AbortSignal.timeout(20000) });
      report.pings.ok++; report.pings.max_ms = Math.max(report.pings.max_ms, ms);
      if (report.pings.samples_ms.length < 500) report.pings.samples_ms.push(ms);
    } catch (err) {
      report.pings.failed++;
      if ((report.pings.errors ??= []).length < 5) report.pings.errors.push(`${id.slice(-8)}: ${err.name}: ${err.message}`.slice(0, 160));
    } finally { pinging.delete(id); }
  }));
}

const deadline = Date.now() + args.timeout * 1000;
let hostileDone = !args.hostile;
let lastPing = 0;
while (Date.now() < deadline) {
  await dialAll();
  await syncOnce();
  if (!hostileDone && report.chain.height >= args.hostileAt && report.gossip.max_round >= 0) {
    await hostile();
    hostileDone = true;
  }
  if (Date.now() - lastPing > 5000) { lastPing = Date.now(); pingAll(); }
  const afterHostile = !args.hostile || (report.hostile.at_height !== undefined && report.chain.height >= report.hostile.at_height + 2);
  if (report.chain.blocks_verified >= args.rounds && hostileDone && afterHostile) break;
  if (args.failFast && report.failures.length) break;
  await new Promise((r) => setTimeout(r, 1000));
}
if (report.chain.blocks_verified < args.rounds) fail(`only ${report.chain.blocks_verified} blocks verified before the deadline`);
pruneReport();
report.seconds = (Date.now() - t0) / 1000;
report.pings.samples_ms.sort((a, b) => a - b);
report.pings.median_ms = report.pings.samples_ms[Math.floor(report.pings.samples_ms.length / 2)] ?? null;
delete report.pings.samples_ms;
console.log(JSON.stringify(report));
await Promise.race([node.stop(), new Promise((r) => setTimeout(r, 5000))]);
process.exit(report.failures.length ? 1 : 0);
