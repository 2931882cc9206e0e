// The report's what-fits calculator: the fitted model evaluated in the browser, offline.
// A transcription of vramfit's Python, which stays the source of truth (tests/test_report_page.py checks the page
// against `vramfit predict` and `vramfit suggest` in headless Chromium):
//   features / count_params   vramfit/fit/features.py, gpt/config.py
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
  const BREAKDOWN = {"params+optimizer": ["params"], "logits": ["logits"], "activations": ["acts", "embed"],
                     "attention": ["attn"]};
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

  function features(s) { // fit.features.features
    const N = s.batch_size * s.block_size;
    return {params: countParams(s.n_layer, s.n_embd, s.block_size, s.vocab_size), tokens: N,
            logits: N * s.vocab_size, acts: N * s.n_layer * s.n_embd,
            attn: N * s.n_layer * s.n_head * s.block_size, embed: N * s.n_embd};
  }

  function dot(names, coef, f) {
    let acc = 0;
    names.forEach((name, i) => { acc += f[name] * coef[i]; });
    return acc;
  }

  function isPhysics(m) {
    return m.regimes === 2 && m.features.length === PHYSICS.length && m.features.every((x, i) => x === PHYSICS[i]);
  }

  function transients(m, f) { // MemoryModel._transients: (at the loss, inside a block)
    const c = (name) => m.coef[m.features.indexOf(name)];
    return [c("logits") * f.logits + c("embed") * f.embed, m.layer_coef * f.embed];
  }

  function parts(m, f) { // MemoryModel.parts: [backward piece, optimizer-step piece]
    let lin = m.intercept + dot(m.features, m.coef, f);
    if (isPhysics(m) && m.layer_coef > 0) {
      const [lossT, layerT] = transients(m, f);
      lin = lin - lossT + Math.max(lossT, layerT);
    }
    return [lin, m.step_coef > 0 ? m.step_intercept + m.step_coef * f.params : -Infinity];
  }

  function breakdown(m, f) { // MemoryModel.breakdown for one point
    const [lin, step] = parts(m, f);
    if (step > lin) {
      return {regime: "optimizer step", constant: m.step_intercept, "params+optimizer": m.step_coef * f.params,
              logits: 0, activations: 0, attention: 0};
    }
    const row = {regime: "backward", constant: m.intercept};
    for (const [part, terms] of Object.entries(BREAKDOWN)) {
      let acc = 0;
      for (const t of terms) if (m.features.includes(t)) acc += m.coef[m.features.indexOf(t)] * f[t];
      row[part] = acc;
    }
    if (isPhysics(m) && m.layer_coef > 0) {
      const [lossT, layerT] = transients(m, f);
      if (layerT > lossT) {
        row.logits = 0;
        row.activations = m.coef[m.features.indexOf("acts")] * f.acts + layerT;
      }
    }
    return row;
  }

  function predict(entry, f, gpus) { // MemoryModel.predict, + DdpMemoryModel's buckets and NCCL with gpus > 1
    const [lin, step] = parts(entry.model, f);
    const base = Math.max(lin, step);
    return gpus > 1 ? base + entry.ddp_bytes_per_param * f.params + entry.ddp_comm_bytes : base;
  }

  function msPerIter(tp, s) { // throughput.time_features + ThroughputModel.predict + predict_ms
    const N = s.batch_size * s.block_size, L = s.n_layer, C = s.n_embd, T = s.block_size;
    const pNonEmb = countParams(L, C, T, s.vocab_size, true);
    const f = {flops: 6 * pNonEmb * N + 12 * L * C * T * N, logits: N * s.vocab_size, acts: N * L * C, tokens: N,
               params: countParams(L, C, T, s.vocab_size)};
    return Math.max(tp.slowdown * (tp.intercept + dot(tp.features, tp.coef, f)), 1e-3);
  }

  function need(entry, s, gpus) {
    return predict(entry, features(s), gpus) * (1 + entry.margin_rel);
  }

  function largestBatch(entry, s, gpus, budget) { // suggest's largest fitting batch for a fixed shape
    if (budget <= 0 || budget <= entry.model.intercept * (1 + entry.margin_rel)) return null;
    let best = null;
    for (const b of DATA.batches) if (need(entry, {...s, batch_size: b}, gpus) <= budget) best = b;
    return best;
  }

  function readInputs() {
    const s = {};
    for (const k of SHAPE) {
      const raw = $("vf-" + k).value.trim();
      if (!/^\d+$/.test(raw) || Number(raw) < 1) throw new Error(`${k} must be a positive integer, got '${raw}'`);
      s[k] = Number(raw);
    }
    if (s.n_embd % s.n_head) throw new Error(`n_embd (${s.n_embd}) must be divisible by n_head (${s.n_head})`);
    const gpus = $("vf-gpus").value.trim();
    if (!/^\d+$/.test(gpus) || Number(gpus) < 1) throw new Error(`GPUs must be >= 1, got '${gpus}'`);
    const vram = parseSize($("vf-vram").value), reserve = parseSize($("vf-reserve").value || "0");
    return {shape: s, gpus: Number(gpus), vram, reserve, budget: vram - reserve};
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
    const {shape, gpus, budget} = inp;
    const f = features(shape);
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
    show("vf-params", (f.params / 1e6).toFixed(2) + "M", f.params);
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
    const best = largestBatch(e, shape, gpus, budget);
    show("vf-largest", best === null ? "none fits" : String(best));
    $("vf-largest").dataset.batch = best === null ? "" : String(best);
    const tp = e.throughput;
    if (tp && gpus === 1) {
      const ms = msPerIter(tp, shape);
      show("vf-ms", ms.toFixed(1));
      $("vf-ms").dataset.value = String(ms);
      show("vf-tps", Math.round(f.tokens / (ms / 1000)).toLocaleString("en-US"));
      $("vf-tps").dataset.value = String(f.tokens / (ms / 1000));
    } else {
      show("vf-ms", tp ? "one GPU only" : "no throughput model");
      show("vf-tps", "-");
      delete $("vf-ms").dataset.value;
      delete $("vf-tps").dataset.value;
    }
    drawChart(e, shape, gpus, budget);
  }

  function cellColor(ratio) { // green (fits easily) -> yellow (at the budget) -> red (2x the budget and more)
    const t = Math.max(0, Math.min(1, ratio <= 1 ? ratio / 2 : 0.5 + (ratio - 1) / 2));
    const hue = 120 * (1 - t);
    return `hsl(${hue}, 70%, ${ratio <= 1 ? 55 : 45}%)`;
  }

  function drawChart(e, shape, gpus, budget) {
    const canvas = $("vf-chart"), g = canvas.getContext("2d");
    const blocks = DATA.chart_blocks, batches = DATA.chart_batches;
    const left = 52, top = 10, right = 10, bottom = 36;
    const w = (canvas.width - left - right) / batches.length, h = (canvas.height - top - bottom) / blocks.length;
    const x = (j) => left + j * w, y = (i) => top + (blocks.length - 1 - i) * h;
    g.clearRect(0, 0, canvas.width, canvas.height);
    const fit = blocks.map((T, i) => batches.map((B, j) => {
      const n = need(e, {...shape, block_size: T, batch_size: B}, gpus);
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
    $("vf-chart-caption").textContent = `${shape.n_layer}L ${shape.n_head}H ${shape.n_embd}C V=${shape.vocab_size}`
      + `${gpus > 1 ? ` on ${gpus} GPUs (DDP)` : ""}: green fits ${formatSize(budget)} with the margin, red does not;`
      + " black line: the budget; dot: this block and batch.";
    canvas.onmousemove = (ev) => {
      const r = canvas.getBoundingClientRect();
      const px = (ev.clientX - r.left) * canvas.width / r.width, py = (ev.clientY - r.top) * canvas.height / r.height;
      const j = Math.floor((px - left) / w), i = blocks.length - 1 - Math.floor((py - top) / h);
      if (j < 0 || j >= batches.length || i < 0 || i >= blocks.length) { canvas.title = ""; return; }
      const n = need(e, {...shape, block_size: blocks[i], batch_size: batches[j]}, gpus);
      canvas.title = `block ${blocks[i]}, batch ${batches[j]}: ${formatSize(n)} with margin`;
    };
  }

  function setDefaults() {
    const e = entry(), d = e.defaults;
    for (const k of SHAPE) $("vf-" + k).value = String(d[k]);
    $("vf-vram").value = d.vram;
    $("vf-reserve").value = d.reserve;
    $("vf-gpus").value = String(d.gpus);
    document.querySelectorAll(".vf-prov").forEach((el) => { el.hidden = el.dataset.model !== $("vf-model").value; });
  }

  $("vf-model").addEventListener("change", () => { setDefaults(); update(); });
  for (const id of [...SHAPE, "vram", "reserve", "gpus"]) $("vf-" + id).addEventListener("input", update);
  setDefaults();
  update();
  document.body.dataset.calculator = "ready";
})();
