// js-libp2p 3 uses Promise.withResolvers (Node >= 22); on Node 20 this adds it (the only newer
// API its packages use: grep'd over node_modules, libp2p 3.3.11). Imported first by live_peer.mjs.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers() {
    let resolve, reject;
    const promise = new this((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  };
}
