"""Which default ranking gives answers people would train? Candidate rankings against nanoGPT's reference configs.

    python experiments/rank_defaults.py [--model results/models/X.json | --no-profile --capability 8.6]
                                        [--budgets 4G,8G,12G,16G,24G,40G,80G] [--top 5]

For each budget and corpus (tiny-shakespeare's 65 characters with its 1.0M training tokens, and GPT-2's BPE
vocabulary with no corpus cap) it runs each candidate ranking and reports, over its top 5: whether any answer has
batch 1; how many are a "larger model at a much smaller batch" than the reference (more params, under half its
tokens per step); and whether the reference is in the top 5 or dominated by an answer (params, tokens per step
and block all at least the reference's). References: nanoGPT's train_shakespeare_char (6 x 384, block 256,
batch 64) for the character corpus and GPT-2 124M (12 x 768, block 1024, batch 12) for BPE; they are checked only
on budgets where the model says the reference fits with 25 % to spare. Without --model the planner's synthetic
model (tests/planner_data.py) is used; --no-profile calibrates the dry-run model (cached, see `suggest`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402

from vramfit.fit.features import features  # noqa: E402
from vramfit.plan import suggest as sg  # noqa: E402
from vramfit.units import parse_size  # noqa: E402

REFS = {65: ("nanoGPT shakespeare_char", (6, 6, 384, 256, 64, 65), 1_003_854),
        50304: ("GPT-2 124M", (12, 12, 768, 1024, 12, 50304), None)}
CANDIDATES = [("params", "params", None, None), ("balanced", "balanced", None, None),
              ("tokens", "tokens", None, None)] + [
    (f"trainable F={f}, halved for a {g:g}x larger model", "trainable", f, g) for f in (8192, 16384, 32768)
    for g in (2, 4, 1e9)]


def load(args):
    if args.no_profile:
        from vramfit.dryrun.estimate import parse_capability, parse_recipe
        from vramfit.plan.noprofile import DryRunPlanner

        out = {}
        for vocab in REFS:
            with DryRunPlanner(parse_recipe("dtype=bfloat16,optimizer=fused"), parse_capability(args.capability),
                               vocab) as p:
                out[vocab] = p.model()[:2]
                print(p.summary())
        return out
    if args.model:
        from vramfit.fit.profile import Profile

        doc = Profile.load(args.model)
        return dict.fromkeys(REFS, (doc.model, doc.margin_rel))
    from planner_data import synthetic_points

    from vramfit.fit.memmodel import fit_points

    report = fit_points(synthetic_points(), target="nvml")
    return dict.fromkeys(REFS, (report.model, report.margin_rel))


def row(name, items, ref, ref_need, budget):
    L, H, C, T, B, V = ref
    P_ref = int(features(L, H, C, T, B, V)["params"][0])
    N_ref = B * T
    batch1 = any(s.batch_size == 1 for s in items)
    bigger_smaller = sum(s.params > P_ref and s.tokens_per_step < N_ref / 2 for s in items)
    fits = ref_need * 1.25 <= budget
    covered = any((s.n_layer, s.n_embd, s.block_size) == (L, C, T) and s.batch_size >= B for s in items) or any(
        s.params >= P_ref and s.tokens_per_step >= N_ref and s.block_size >= T for s in items)
    top = items[0] if items else None
    desc = (f"{top.n_layer}x{top.n_embd} T{top.block_size} B{top.batch_size} {top.params / 1e6:.1f}M "
            f"{top.tokens_per_step:,} tok" if top else "-")
    return (f"| {name} | {'yes' if batch1 else 'no'} | {bigger_smaller} | "
            f"{('yes' if covered else 'NO') if fits else '(no room)'} | {desc} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--capability", default="8.0")
    ap.add_argument("--budgets", default="4G,8G,12G,16G,24G,40G,80G")
    ap.add_argument("--top", type=int, default=5)
    args = ap.parse_args()
    models = load(args)
    default_floor, default_gain = sg.TOKENS_FLOOR, sg.RELAX_GAIN
    for vocab, (ref_name, ref, corpus) in REFS.items():
        model, margin = models[vocab]
        ref_need = float(model.predict(features(*(np.asarray([v]) for v in ref)))[0]) * (1 + margin)
        print(f"\n## vocab {vocab}, reference {ref_name} {ref} (needs {ref_need / 2**30:.2f} GiB), corpus tokens "
              f"{corpus}")
        for budget_text in args.budgets.split(","):
            budget = parse_size(budget_text)
            print(f"\n### {budget_text}\n| ranking | batch 1 in top | bigger model, < half the tokens | reference "
                  "in or dominated | #1 |\n|---|---|---|---|---|")
            for name, objective, floor, gain in CANDIDATES:
                sg.TOKENS_FLOOR, sg.RELAX_GAIN = floor or default_floor, gain or default_gain
                try:
                    items = sg.suggest(model, margin, budget, objective=objective, top=args.top,
                                       vocab_size=[vocab], corpus_tokens=corpus)
                except Exception as exc:  # noqa: BLE001 - a budget below the constant: report and go on
                    print(f"| {name} | {exc} | | | |")
                    continue
                print(row(name, items, ref, ref_need, budget))
    sg.TOKENS_FLOOR, sg.RELAX_GAIN = default_floor, default_gain


if __name__ == "__main__":
    main()
