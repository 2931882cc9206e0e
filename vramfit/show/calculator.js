// The report's what-fits calculator: the fitted model evaluated in the browser, offline.
// A transcription of vramfit's Python, which stays the source of truth (tests/test_report_page.py checks the page
// against `vramfit predict` and `vramfit suggest` in headless Chromium):
//   features / count_params   vramfit/fit/features.py (with the recipe's switches), gpt/config.py
//   family features           vramfit/fit/features.py model_facts, family_features (a FAMILY model: both families),
//                             gpt/config.py GPTConfig (nanochat's counts, windows, value embeddings, Muon's stacks)
//   optimizer state           gpt/config.py GPTConfig.optimizer_state_bytes (GPT-2, fp32 weights)
//   switches allowed          vramfit/fit/profile.py Profile.check_recipe
//   predict / breakdown       vramfit/fit/memmodel.py MemoryModel (both regimes, both transients)
//   DDP buckets               vramfit/plan/ddp.py DdpMemoryModel (with more than one GPU)
//   ms/iter                   vramfit/fit/throughput.py time_features, ThroughputModel.predict, predict_ms
//   largest batch             vramfit/plan/suggest.py _fitting (same batch candidates, prediction + margin)
//   sizes                     vramfit/units.py parse_size, format_size
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("vf-data").textContent);
  const $ = (id) => document.getElementById(id);
  const SHAPE = ["n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size"];
  const PHYSICS = ["params", "logits", "acts", "attn", "embed"];
  const RECIPE_PHYSICS = [...PHYSICS, "state", "accum_grads", "ckpt_inputs"];
  const FAMILY = [...PHYSICS, "grads", "chat_logits", "chat_acts", "kv_acts", "mlp_acts", "ve_acts", "chat_embed",
                  "chat_attn"];
  const STEP = ["grads", "muon_stack", "muon_square", "adam_largest"]; // the FAMILY step piece's extra columns
  const LOSS_TERMS = ["logits", "embed", "chat_logits", "chat_embed"]; // those of FAMILY; PHYSICS has the first two
  const MLP_SAVED = {gelu: 2, relu2: 2, swiglu: 4};
  const REBLOCK = ["params", "state", "recompute", "grads", "inputs", "acts"]; // the recompute piece's columns
  const RECOMPUTE_AT = ["first", "deepest"]; // block 0 | the deepest checkpointed block
  const BREAKDOWN = {"params+optimizer": ["params", "grads", "state", "accum_grads"], "logits": ["logits", "chat_logits"],
                     "activations": ["acts", "embed", "chat_acts", "kv_acts", "mlp_acts", "ve_acts", "chat_embed",
                                     "ckpt_inputs"],
                     "attention": ["attn", "chat_attn"]};
  const OPT_KINDS = ["fused", "foreach", "loop", "muon", "sgd", "adafactor"];
  const UNITS = {"": 1, "B": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40};
  const SIZE = /^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(I?B)?\s*$/i;

  function roundHalfEven(x) { // Python's round()
    const f = Math.floor(x), d = x - f;
    return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1);
  }

  function parseSize(text) { // units.parse_size, then the named cards
    const m = SIZE.exec(text);
    if (m) {
      const unit = m[2].toUpperCase();
      if (unit || !m[3] || m[3].toUpperCase() !== "IB") return roundHalfEven(parseFloat(m[1]) * UNITS[unit]);
    }
    const name = String(text).trim().toLowerCase();
    if (Object.prototype.hasOwnProperty.call(DATA.cards, name)) return DATA.cards[name];
    throw new Error(`cannot parse size '${text}' (examples: 8G, 7.5GiB, 8000M, 512MiB`
                    + (Object.keys(DATA.cards).length ? ", or a card: " + Object.keys(DATA.cards).join(", ") : "")
                    + ")");
  }

  function formatSize(n, precision = 2) { // units.format_size
    const sign = n < 0 ? "-" : "";
    n = Math.abs(n);
    for (const [unit, scale] of [["TiB", 2 ** 40], ["GiB", 2 ** 30], ["MiB", 2 ** 20], ["KiB", 2 ** 10]]) {
      if (n >= scale) return `${sign}${(n / scale).toFixed(precision)} ${unit}`;
    }
    return `${sign}${n.toFixed(0)} B`;
  }

  function countParams(L, C, T, V, nonEmbedding = false) { // gpt.config.count_params, bias=True
    const ln = C + C;
    const attn = 3 * C * C + 3 * C + C * C + C;
    const mlp = 4 * C * C + 4 * C + 4 * C * C + C;
    const total = V * C + T * C + L * (2 * ln + attn + mlp) + ln;
    return nonEmbedding ? total - T * C : total;
  }

  function stateBytes(s, optimizer) { // GPTConfig.optimizer_state_bytes: GPT-2 with biases, 4 B per value
    const L = s.n_layer, C = s.n_embd, P = countParams(L, C, s.block_size, s.vocab_size);
    if (optimizer === "sgd") return 4 * P; // one momentum buffer
    if (optimizer === "adafactor") { // rows + cols of each matrix, every entry of each vector (param_shapes)
      const perLayer = 16 * C + 4 * C + 9 * C; // 4 matrices; 2 LayerNorms' weight and bias; the biases
      return 4 * ((s.vocab_size + C) + (s.block_size + C) + L * perLayer + 2 * C);
    }
    if (optimizer === "muon") return 8 * P - 8 * 12 * L * C * C + 4 * L * (12 * C * C + 12 * C); // + r*c + max(r, c)
    return 8 * P; // AdamW: exp_avg and exp_avg_sq
  }

  function chatConfig(s, o) { // GPTConfig of a nanochat shape under its options `o` (gpt/config.py)
    const L = s.n_layer, H = s.n_head, C = s.n_embd, T = s.block_size, Q = C / H, KV = o.n_kv_head || H;
    const kv = KV * Q, F = o.mlp === "swiglu" ? Math.floor(8 * C / 3) : 4 * C;
    const V = Math.ceil(s.vocab_size / o.vocab_multiple) * o.vocab_multiple;
    const ve = [...Array(L).keys()].filter((i) => o.value_embeds && i % 2 === (L - 1) % 2); // value_embed_layers
    const mats = []; // block_matrices
    for (let i = 0; i < L; i++) {
      mats.push([C, C], [kv, C], [kv, C], [C, C]);
      if (ve.includes(i)) mats.push([KV, 12]); // VE_GATE_CHANNELS
      if (o.mlp === "swiglu") mats.push([F, C], [F, C], [C, F]); else mats.push([F, C], [C, F]);
    }
    const short = Math.ceil(Math.floor(T / 4) / 128) * 128; // window_sizes: a quarter, up to FA3's tile
    const windows = [...Array(L).keys()].map((i) => (i === L - 1 || o.window_pattern[i % o.window_pattern.length] === "L"
                                                      ? T : short));
    const scalars = [...(o.resid_scalars ? [[0, L], [0, L]] : []), ...(o.smear ? [[1, 24], [0, 1]] : []),
                     ...(o.backout ? [[0, 1]] : [])]; // param_shapes' scalars (SMEAR_CHANNELS = 24)
    const shapes = {embedding: [[V, C]], value_embeds: ve.map(() => [V, kv]), matrices: mats, head: [[V, C]], scalars};
    return {L, H, C, T, Q, KV, kv, F, V, ve, mats, windows, shapes, mlp: o.mlp, smear: o.smear};
  }

  function gpt2Shapes(s) { // GPTConfig.param_shapes of GPT-2 (biases)
    const L = s.n_layer, C = s.n_embd, V = s.vocab_size, T = s.block_size;
    const layer = [[3 * C, C], [C, C], [4 * C, C], [C, 4 * C]], norm = [[0, C], [0, C]];
    const vectors = [];
    for (let i = 0; i < L; i++) vectors.push(...norm, ...norm, [0, 3 * C], [0, C], [0, 4 * C], [0, C]);
    return {embedding: [[V, C], [T, C]], value_embeds: [], matrices: [].concat(...Array(L).fill(layer)), head: [],
            scalars: [...vectors, ...norm]};
  }

  const numel = (shape) => (shape[0] ? shape[0] * shape[1] : shape[1]);

  function modelFacts(s, arch, family) { // features.model_facts: what the FAMILY columns need of one model
    const [optimizer, dtype] = family;
    const chat = arch.arch === "nanochat", cfg = chat ? chatConfig(s, arch) : null;
    const shapes = chat ? cfg.shapes : gpt2Shapes(s);
    const width = (g) => (chat && dtype === "bfloat16" && (g === "embedding" || g === "value_embeds") ? 2 : 4);
    let weights = 0, state = 0;
    for (const [g, list] of Object.entries(shapes)) {
      const count = list.reduce((a, sh) => a + numel(sh), 0);
      weights += count * width(g);
      if (optimizer === "sgd") state += count * width(g);
      else if (optimizer === "adafactor") state += list.reduce((a, [r, c]) => a + (r ? r + c : c), 0) * width(g);
      else if (optimizer === "muon" && g === "matrices") {
        state += list.reduce((a, [r, c]) => a + r * c + Math.max(r, c), 0) * width(g);
      } else state += 2 * count * width(g);
    }
    state += weights;
    if (chat) state += 2 * 10 * s.block_size * Math.floor(cfg.Q / 2) * (dtype === "bfloat16" ? 2 : 4); // rotary
    const stacks = new Map(); // muon_stacks, in sorted shape order; the largest (first on ties) by k x rows x cols
    for (const [r, c] of [...shapes.matrices].sort((a, b) => a[0] - b[0] || a[1] - b[1])) {
      stacks.set(`${r},${c}`, [r, c, (stacks.get(`${r},${c}`)?.[2] || 0) + 1]);
    }
    let big = [0, 0, 0];
    for (const st of stacks.values()) if (st[2] * st[0] * st[1] > big[2] * big[0] * big[1]) big = st;
    const muon = optimizer === "muon", hidden = chat ? cfg.F : 4 * s.n_embd;
    let adamLargest = 0;
    for (const [g, list] of Object.entries(shapes)) {
      if (g !== "matrices") for (const [r, c] of list) adamLargest = Math.max(adamLargest, Math.max(r, 1) * c);
    }
    return {state: state / 12, grads: weights / 4, chat: chat ? 1 : 0, kv: chat ? cfg.kv : 0, hidden,
            mlp: chat ? cfg.F * MLP_SAVED[cfg.mlp] : 0, ve: chat ? cfg.ve.length * cfg.kv : 0,
            masked: chat ? cfg.windows.filter((w) => w < s.block_size).length : 0,
            muon_stack: muon ? big[2] * big[0] * big[1] : 0,
            muon_square: muon ? big[2] * Math.min(big[0], big[1]) ** 2 : 0, adam_largest: muon ? adamLargest : 0};
  }

  function familyFeatures(s, arch, family) { // features.family_features for one point
    const t = modelFacts(s, arch, family), N = s.batch_size * s.block_size, g2 = 1 - t.chat;
    const L = s.n_layer, C = s.n_embd, T = s.block_size, V = s.vocab_size;
    const base = features(s, null);
    for (const k of PHYSICS) base[k] *= g2;
    return {...base, params: t.state, grads: t.grads, chat_logits: t.chat * N * V, chat_acts: t.chat * N * L * C,
            kv_acts: N * L * t.kv, mlp_acts: N * L * t.mlp, ve_acts: N * t.ve, chat_embed: t.chat * N * C,
            chat_attn: T * T * t.masked, layer: g2 * N * C, chat_layer: t.chat * N * t.hidden,
            muon_stack: t.muon_stack, muon_square: t.muon_square, adam_largest: t.adam_largest,
            n_params: paramCount(s, arch)};
  }

  function paramCount(s, arch) { // GPTConfig.n_params
    if (arch.arch !== "nanochat") return countParams(s.n_layer, s.n_embd, s.block_size, s.vocab_size);
    return Object.values(chatConfig(s, arch).shapes).reduce((a, list) => a + list.reduce((b, sh) => b + numel(sh), 0), 0);
  }

  function flopsPerToken(s, arch) { // GPTConfig.flops_per_token: nanochat's estimate_flops
    const cfg = chatConfig(s, arch);
    const linear = cfg.mats.reduce((a, [r, c]) => a + r * c, 0) + cfg.V * cfg.C + (cfg.smear ? 24 : 0);
    return 6 * linear + cfg.windows.reduce((a, w) => a + 12 * cfg.H * cfg.Q * Math.min(w, cfg.T), 0);
  }

  function ckptBlocks(L, every) { return every > 0 ? Math.ceil(L / every) : 0; } // blocks 0, k, 2k, ...

  function columns(e, s, sw) { // MemoryModel.columns: PHYSICS (with the switches), or FAMILY of the shape's family
    return e.model.family ? familyFeatures(s, e.archs[s.arch], e.model.family) : features(s, sw);
  }

  function features(s, sw) { // fit.features.features (with `sw`, the switches: switch_columns)
    const N = s.batch_size * s.block_size;
    const f = {params: countParams(s.n_layer, s.n_embd, s.block_size, s.vocab_size), tokens: N,
               logits: N * s.vocab_size, acts: N * s.n_layer * s.n_embd,
               attn: N * s.n_layer * s.n_head * s.block_size, embed: N * s.n_embd};
    if (!sw) return f;
    const L = s.n_layer, C = s.n_embd, T = s.block_size, P = f.params, ckpt = ckptBlocks(L, sw.every);
    const block = (P - countParams(0, C, T, s.vocab_size)) / Math.max(L, 1); // one block's parameters
    const on = sw.every > 0 ? 1 : 0, k = Math.max(sw.every, 1), deepest = k * Math.floor((L - 1) / k);
    const V = s.vocab_size, projection = 4 * C * C + C; // recompute_columns: + the MLP's output projection
    const grads = (done) => on * ((sw.grad_accum > 1 ? P + V * C : P - done * block - T * C) + projection);
    return {...f, acts: N * (L - ckpt) * C, attn: N * (L - ckpt) * s.n_head * T,
            state: stateBytes(s, sw.optimizer), accum_grads: sw.grad_accum > 1 ? P : 0,
            ckpt_inputs: N * ckpt * C, recompute: ckpt > 0 ? N * C : 0,
            grads_first: grads(1), inputs_first: 0, acts_first: 0, grads_deepest: grads(deepest + 1),
            inputs_deepest: on * N * C * (ckpt - 1), acts_deepest: on * N * C * (deepest - (ckpt - 1))};
  }

  function dot(names, coef, f) {
    let acc = 0;
    names.forEach((name, i) => { acc += f[name] * coef[i]; });
    return acc;
  }

  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  const hasSwitches = (m) => m.features.includes("state"); // MemoryModel.switches

  const isFamily = (m) => same(m.features, FAMILY);

  function isPhysics(m) {
    return m.regimes === 2 && (same(m.features, PHYSICS) || same(m.features, RECIPE_PHYSICS) || isFamily(m));
  }

  function transients(m, f) { // MemoryModel._transients: (at the loss, inside a block)
    const c = (name) => m.coef[m.features.indexOf(name)];
    const loss = LOSS_TERMS.filter((t) => m.features.includes(t)).reduce((a, t) => a + c(t) * f[t], 0);
    return [loss, isFamily(m) ? m.layer_coef[0] * f.layer + m.layer_coef[1] * f.chat_layer : m.layer_coef * f.embed];
  }

  const layerOn = (m) => (Array.isArray(m.layer_coef) ? m.layer_coef.some((g) => g > 0) : m.layer_coef > 0);
  const hasStep = (m) => m.step_coef > 0 || (m.step_extra || []).some((c) => c > 0); // MemoryModel.has_step

  function recomputePiece(m, f) { // memmodel._recompute: the larger over the blocks where it can peak
    const at = (where) => REBLOCK.reduce((acc, name, i) => acc + m.reblock_coef[i]
                                         * f[i < 3 ? name : `${name}_${where}`], 0); // 3 shared columns
    return Math.max(...RECOMPUTE_AT.map(at));
  }

  function stepPiece(m, f) { // MemoryModel._step (with switches: the state, and block 0's recompute where checkpointed)
    let out = m.step_intercept + m.step_coef * f.params;
    if (isFamily(m)) out += dot(STEP, m.step_extra, f);
    if (hasSwitches(m)) {
      out += m.step_state_coef * f.state;
      if (f.recompute > 0) out = Math.max(out, m.step_intercept + recomputePiece(m, f));
    }
    return out;
  }

  function parts(m, f) { // MemoryModel.parts: [backward piece, optimizer-step piece]
    let lin = m.intercept + dot(m.features, m.coef, f);
    if (isPhysics(m) && layerOn(m)) {
      const [lossT, layerT] = transients(m, f);
      lin = lin - lossT + Math.max(lossT, layerT);
    }
    return [lin, hasStep(m) ? stepPiece(m, f) : -Infinity];
  }

  function breakdown(m, f) { // MemoryModel.breakdown for one point
    const [lin, step] = parts(m, f);
    if (step > lin) {
      return {regime: "optimizer step", constant: m.step_intercept, "params+optimizer": stepPiece(m, f) - m.step_intercept,
              logits: 0, activations: 0, attention: 0};
    }
    const row = {regime: "backward", constant: m.intercept};
    for (const [part, terms] of Object.entries(BREAKDOWN)) {
      let acc = 0;
      for (const t of terms) if (m.features.includes(t)) acc += m.coef[m.features.indexOf(t)] * f[t];
      row[part] = acc;
    }
    if (isPhysics(m) && layerOn(m)) {
      const [lossT, layerT] = transients(m, f);
      if (layerT > lossT) {
        row.logits = 0;
        row.activations = layerT;
        for (const t of BREAKDOWN.activations) {
          if (m.features.includes(t) && !LOSS_TERMS.includes(t)) row.activations += m.coef[m.features.indexOf(t)] * f[t];
        }
      }
    }
    return row;
  }

  function predict(entry, f, gpus) { // MemoryModel.predict, + DdpMemoryModel's buckets and NCCL with gpus > 1
    const [lin, step] = parts(entry.model, f);
    const base = Math.max(lin, step);
    return gpus > 1 ? base + entry.ddp_bytes_per_param * f.params + entry.ddp_comm_bytes : base;
  }

  function msPerIter(tp, s, sw, archs) { // throughput.time_features (with the switches: per optimizer step) + predict
    const N = s.batch_size * s.block_size, L = s.n_layer, C = s.n_embd, T = s.block_size;
    const pNonEmb = countParams(L, C, T, s.vocab_size, true);
    const arch = archs[s.arch], chat = arch.arch === "nanochat"; // nanochat: its own FLOPs count
    let f = {flops: chat ? N * flopsPerToken(s, arch) : 6 * pNonEmb * N + 12 * L * C * T * N, logits: N * s.vocab_size,
             acts: N * L * C, tokens: N, params: countParams(L, C, T, s.vocab_size)};
    if (tp.features.includes("micro")) {
      const a = sw.grad_accum, ckpt = ckptBlocks(L, sw.every);
      f = {...f, flops: a * f.flops, logits: a * f.logits, acts: a * f.acts, micro: a,
           recompute: a * ckpt * N * (24 * C * C + 4 * C * T), recompute_acts: a * ckpt * N * C,
           blocks: a * L, recompute_blocks: a * ckpt};
      for (const k of OPT_KINDS) f["opt_" + k] = sw.optimizer === k ? f.params : 0;
    }
    return Math.max(tp.slowdown * (tp.intercept + dot(tp.features, tp.coef, f)), 1e-3);
  }

  function need(entry, s, gpus, sw) {
    return predict(entry, columns(entry, s, sw), gpus) * (1 + entry.margin_rel);
  }

  function largestBatch(entry, s, gpus, budget, sw) { // suggest's largest fitting batch for a fixed shape
    if (budget <= 0 || budget <= entry.model.intercept * (1 + entry.margin_rel)) return null;
    let best = null;
    for (const b of DATA.batches) if (need(entry, {...s, batch_size: b}, gpus, sw) <= budget) best = b;
    return best;
  }

  function readSwitches(e) { // the recipe's switches, as Profile.check_recipe allows them (null: none to price)
    const accum = $("vf-grad_accum").value.trim(), ck = $("vf-checkpoint").value.trim().toLowerCase();
    const opt = $("vf-optimizer").value.trim().toLowerCase();
    if (!/^\d+$/.test(accum) || Number(accum) < 1) throw new Error(`grad_accum must be an integer >= 1, got '${accum}'`);
    const every = {none: 0, "0": 0, all: 1, "1": 1}[ck] ?? (/^\d+$/.test(ck) ? Number(ck) : null);
    if (every === null) throw new Error(`checkpoint must be none, all or a block interval k >= 1, got '${ck}'`);
    const sw = {grad_accum: Number(accum), every: every, optimizer: opt};
    const own = e.recipe;
    if (!e.optimizers) {
      if (sw.grad_accum !== own.grad_accum || every !== own.every || opt !== own.optimizer) {
        throw new Error(`this profile was fitted on one recipe (grad_accum ${own.grad_accum}, checkpoint `
                        + `${own.checkpoint}, optimizer ${own.optimizer}): it cannot price other switches`);
      }
      return null;
    }
    if (!e.optimizers.includes(opt)) throw new Error(`this profile measured the optimizers ${e.optimizers.join(", ")}, not ${opt}`);
    return sw;
  }

  function readInputs() {
    const s = {};
    for (const k of SHAPE) {
      const raw = $("vf-" + k).value.trim();
      if (!/^\d+$/.test(raw) || Number(raw) < 1) throw new Error(`${k} must be a positive integer, got '${raw}'`);
      s[k] = Number(raw);
    }
    if (s.n_embd % s.n_head) throw new Error(`n_embd (${s.n_embd}) must be divisible by n_head (${s.n_head})`);
    s.arch = $("vf-arch").value;
    const o = entry().archs[s.arch];
    if (o.arch === "nanochat") { // GPTConfig._check_nanochat's size rules
      const kv = o.n_kv_head || s.n_head;
      if (s.n_head % kv) throw new Error(`n_kv_head must divide n_head (${s.n_head}), got ${kv}`);
      if ((s.n_embd / s.n_head) % 2) throw new Error(`the head dimension n_embd/n_head (${s.n_embd / s.n_head}) must be even (rotary embeddings)`);
      if (o.smear && s.n_embd < 24) throw new Error("smear reads 24 channels: n_embd must be >= 24");
    }
    const gpus = $("vf-gpus").value.trim();
    if (!/^\d+$/.test(gpus) || Number(gpus) < 1) throw new Error(`GPUs must be >= 1, got '${gpus}'`);
    const vram = parseSize($("vf-vram").value), reserve = parseSize($("vf-reserve").value || "0");
    return {shape: s, gpus: Number(gpus), vram, reserve, budget: vram - reserve, sw: readSwitches(entry())};
  }

  function show(id, text, bytes) {
    const el = $(id);
    el.textContent = text;
    if (bytes !== undefined) el.dataset.bytes = String(bytes);
  }

  function entry() { return DATA.models[Number($("vf-model").value)]; }

  function update() {
    const e = entry();
    let inp;
    try {
      inp = readInputs();
      $("vf-error").textContent = "";
    } catch (err) {
      $("vf-error").textContent = "error: " + err.message;
      $("vf-outputs").hidden = true;
      return;
    }
    $("vf-outputs").hidden = false;
    const {shape, gpus, budget, sw} = inp;
    const f = columns(e, shape, sw);
    const pred = predict(e, f, gpus), margin = pred * e.margin_rel, needB = pred * (1 + e.margin_rel);
    const row = breakdown(e.model, f);
    if (gpus > 1) {
      row["ddp buckets"] = e.ddp_bytes_per_param * f.params;
      row["nccl buffers"] = e.ddp_comm_bytes;
    }
    show("vf-budget", formatSize(budget), budget);
    show("vf-predicted", formatSize(pred), Math.trunc(pred));
    show("vf-margin", formatSize(margin), Math.trunc(margin));
    show("vf-need", formatSize(needB), Math.trunc(needB));
    show("vf-headroom", formatSize(budget - needB), Math.trunc(budget - needB));
    const nParams = f.n_params ?? f.params; // a FAMILY model's params column counts state bytes
    show("vf-params", (nParams / 1e6).toFixed(2) + "M", nParams);
    show("vf-regime", row.regime);
    const fits = needB <= budget;
    const verdict = $("vf-verdict");
    verdict.textContent = fits ? "fits" : "does not fit";
    verdict.dataset.fits = String(fits);
    verdict.className = fits ? "vf-yes" : "vf-no";
    const body = $("vf-breakdown");
    body.replaceChildren();
    for (const [part, v] of Object.entries(row)) {
      if (part === "regime") continue;
      const tr = document.createElement("tr");
      tr.dataset.part = part;
      tr.dataset.bytes = String(Math.trunc(v));
      tr.innerHTML = "<th></th><td></td>";
      tr.children[0].textContent = part;
      tr.children[1].textContent = formatSize(v);
      body.appendChild(tr);
    }
    const best = largestBatch(e, shape, gpus, budget, sw);
    show("vf-largest", best === null ? "none fits" : String(best));
    $("vf-largest").dataset.batch = best === null ? "" : String(best);
    const tp = e.throughput;
    if (tp && gpus === 1) {
      const ms = msPerIter(tp, shape, sw, e.archs), tokens = f.tokens * (sw ? sw.grad_accum : 1);
      show("vf-ms", ms.toFixed(1));
      $("vf-ms").dataset.value = String(ms);
      show("vf-tps", Math.round(tokens / (ms / 1000)).toLocaleString("en-US"));
      $("vf-tps").dataset.value = String(tokens / (ms / 1000));
    } else {
      show("vf-ms", tp ? "one GPU only" : "no throughput model");
      show("vf-tps", "-");
      delete $("vf-ms").dataset.value;
      delete $("vf-tps").dataset.value;
    }
    drawChart(e, shape, gpus, budget, sw);
  }

  function cellColor(ratio) { // green (fits easily) -> yellow (at the budget) -> red (2x the budget and more)
    const t = Math.max(0, Math.min(1, ratio <= 1 ? ratio / 2 : 0.5 + (ratio - 1) / 2));
    const hue = 120 * (1 - t);
    return `hsl(${hue}, 70%, ${ratio <= 1 ? 55 : 45}%)`;
  }

  function drawChart(e, shape, gpus, budget, sw) {
    const canvas = $("vf-chart"), g = canvas.getContext("2d");
    const blocks = DATA.chart_blocks, batches = DATA.chart_batches;
    const left = 52, top = 10, right = 10, bottom = 36;
    const w = (canvas.width - left - right) / batches.length, h = (canvas.height - top - bottom) / blocks.length;
    const x = (j) => left + j * w, y = (i) => top + (blocks.length - 1 - i) * h;
    g.clearRect(0, 0, canvas.width, canvas.height);
    const fit = blocks.map((T, i) => batches.map((B, j) => {
      const n = need(e, {...shape, block_size: T, batch_size: B}, gpus, sw);
      g.fillStyle = cellColor(n / budget);
      g.fillRect(x(j), y(i), Math.ceil(w), Math.ceil(h));
      return n <= budget;
    }));
    g.strokeStyle = "#000";
    g.lineWidth = 2;
    g.beginPath(); // the budget contour: every edge between a cell that fits and one that does not
    blocks.forEach((_, i) => batches.forEach((_, j) => {
      if (j + 1 < batches.length && fit[i][j] !== fit[i][j + 1]) { g.moveTo(x(j + 1), y(i)); g.lineTo(x(j + 1), y(i) + h); }
      if (i + 1 < blocks.length && fit[i][j] !== fit[i + 1][j]) { g.moveTo(x(j), y(i)); g.lineTo(x(j) + w, y(i)); }
    }));
    g.stroke();
    const bi = blocks.indexOf(shape.block_size), bj = batches.indexOf(shape.batch_size);
    if (bi >= 0 && bj >= 0) {
      g.fillStyle = "#000";
      g.beginPath();
      g.arc(x(bj) + w / 2, y(bi) + h / 2, Math.max(3, Math.min(w, h) / 3), 0, 2 * Math.PI);
      g.fill();
    }
    g.fillStyle = "#222";
    g.font = "11px sans-serif";
    g.textAlign = "right";
    blocks.forEach((T, i) => g.fillText(String(T), left - 4, y(i) + h / 2 + 4));
    g.textAlign = "center";
    const step = Math.max(1, Math.round(batches.length / 16));
    batches.forEach((B, j) => { if (j % step === 0) g.fillText(String(B), x(j) + w / 2, top + blocks.length * h + 13); });
    g.fillText("batch_size", left + (canvas.width - left - right) / 2, canvas.height - 4);
    g.save();
    g.translate(11, top + blocks.length * h / 2);
    g.rotate(-Math.PI / 2);
    g.fillText("block_size", 0, 0);
    g.restore();
    $("vf-chart-caption").textContent = `${shape.arch === "gpt2" ? "" : shape.arch + " "}`
      + `${shape.n_layer}L ${shape.n_head}H ${shape.n_embd}C V=${shape.vocab_size}`
      + `${gpus > 1 ? ` on ${gpus} GPUs (DDP)` : ""}: green fits ${formatSize(budget)} with the margin, red does not;`
      + " black line: the budget; dot: this block and batch.";
    canvas.onmousemove = (ev) => {
      const r = canvas.getBoundingClientRect();
      const px = (ev.clientX - r.left) * canvas.width / r.width, py = (ev.clientY - r.top) * canvas.height / r.height;
      const j = Math.floor((px - left) / w), i = blocks.length - 1 - Math.floor((py - top) / h);
      if (j < 0 || j >= batches.length || i < 0 || i >= blocks.length) { canvas.title = ""; return; }
      const n = need(e, {...shape, block_size: blocks[i], batch_size: batches[j]}, gpus, sw);
      canvas.title = `block ${blocks[i]}, batch ${batches[j]}: ${formatSize(n)} with margin`;
    };
  }

  function setDefaults() {
    const e = entry(), d = e.defaults;
    for (const k of SHAPE) $("vf-" + k).value = String(d[k]);
    const archSelect = $("vf-arch");
    archSelect.replaceChildren(...Object.keys(e.archs).map((a) => new Option(a, a)));
    archSelect.value = d.arch;
    $("vf-vram").value = d.vram;
    $("vf-reserve").value = d.reserve;
    $("vf-gpus").value = String(d.gpus);
    $("vf-grad_accum").value = String(e.recipe.grad_accum);
    $("vf-checkpoint").value = e.recipe.checkpoint;
    $("vf-optimizer").value = e.recipe.optimizer;
    document.querySelectorAll(".vf-prov").forEach((el) => { el.hidden = el.dataset.model !== $("vf-model").value; });
  }

  $("vf-model").addEventListener("change", () => { setDefaults(); update(); });
  for (const id of [...SHAPE, "arch", "vram", "reserve", "gpus", "grad_accum", "checkpoint", "optimizer"]) {
    $("vf-" + id).addEventListener("input", update);
  }
  setDefaults();
  update();
  document.body.dataset.calculator = "ready";
})();
