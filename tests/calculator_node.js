// Runs vramfit/show/calculator.js in Node with the few DOM calls it makes stubbed, for tests/test_nanochat_suggest.py
// (where no browser is installed): argv[2] the script, argv[3] the page data (JSON), argv[4] the cases (JSON: input
// values by input id); prints, per case, the outputs' data attributes as JSON.
"use strict";
const fs = require("fs");
const [script, data, cases] = process.argv.slice(2).map((p) => fs.readFileSync(p, "utf8"));
const els = {}, handlers = {};
const canvasContext = new Proxy({}, {get: (t, p) => (p in t ? t[p] : () => {}), set: (t, p, v) => { t[p] = v; return true; }});
function el(id) {
  if (!els[id]) {
    els[id] = {id, value: "", textContent: "", dataset: {}, hidden: false, className: "", children: [], width: 640,
               height: 300, addEventListener: (_, f) => { handlers[id] = f; },
               replaceChildren(...kids) { this.children = kids; }, appendChild(c) { this.children.push(c); },
               getContext: () => canvasContext, getBoundingClientRect: () => ({left: 0, top: 0, width: 1, height: 1})};
  }
  return els[id];
}
global.document = {getElementById: el, querySelectorAll: () => [], body: {dataset: {}},
                   createElement: () => ({dataset: {}, children: [{}, {}], set innerHTML(_) {}})};
global.Option = function (text, value) { this.text = text; this.value = value; };
el("vf-data").textContent = data;
el("vf-model").value = "0";
eval(script); // eslint-disable-line no-eval
const out = [];
for (const c of JSON.parse(cases)) {
  for (const [k, v] of Object.entries(c)) el("vf-" + k).value = String(v);
  handlers["vf-n_layer"]();
  const read = (id) => el("vf-" + id).dataset;
  out.push({error: el("vf-error").textContent, predicted: Number(read("predicted").bytes),
            params: Number(read("params").bytes), largest: read("largest").batch, ms: Number(read("ms").value),
            breakdown: Object.fromEntries(el("vf-breakdown").children.map((tr) => [tr.dataset.part, Number(tr.dataset.bytes)]))});
}
console.log(JSON.stringify(out));
