"""A loss law L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022) fitted to stored `vramfit train` runs.

N is the total parameter count, D the tokens seen. Every logged point of a run's curve is one observation (the
eval val losses where a run has at least 2, else its training losses), so a few short runs give dozens of
observations, but only runs of different sizes identify A and alpha: at least `MIN_RUNS` runs with at least
`MIN_SIZES` distinct parameter counts are required. The fit is least squares on log-loss (each observation counts
relatively), with E = exp(e), A = exp(a), B = exp(b) so all are positive, the exponents bounded to
[0.05, 2] and E below the lowest observed loss; several starts, the best kept.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vramfit.corpus import corpus_id
from vramfit.errors import VramfitError
from vramfit.paths import Protected, check_output, write_text

MIN_RUNS = 3  # stored train runs on one corpus
MIN_SIZES = 2  # distinct parameter counts among them
MIN_OBS = 8  # curve points in all
SKIP_FRACTION = 0.1  # the first 10 % of each run's curve (warm-up, the initial plateau) is left out
LAWS_DIR = Path("results") / "losslaw"
# Hoffmann et al. (2022), approach 3 (MassiveText, BPE): for ranking only, its absolute loss means nothing here
CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
TOKENS_PER_PARAM = 20.0  # compute-optimal tokens per parameter (Hoffmann et al. 2022)


@dataclass
class LossLaw:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    corpus_id: str = ""
    data_dir: str = ""
    n_runs: int = 0
    n_obs: int = 0
    rmse_log: float = math.nan  # root mean squared error of log-loss on the fitted observations

    def predict(self, N, D) -> np.ndarray:
        """Predicted loss after D tokens for a model of N parameters (elementwise)."""
        N = np.asarray(N, dtype=np.float64)
        D = np.maximum(np.asarray(D, dtype=np.float64), 1.0)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LossLaw:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, path: str | Path, protected: Protected | None = None) -> Path:
        """The law's JSON, atomically, never over a `protected` file ({label: path})."""
        return write_text(check_output(path, protected or {}, "--loss-out"), json.dumps(self.to_dict(), indent=1),
                          "--loss-out")


def chinchilla() -> LossLaw:
    return LossLaw(**CHINCHILLA, corpus_id="chinchilla")


def fit_loss_law(N, D, loss, n_runs: int | None = None) -> LossLaw:
    """Fit E + A/N^alpha + B/D^beta to observations (arrays of parameters, tokens, loss)."""
    from scipy.optimize import least_squares

    N, D, y = (np.asarray(v, dtype=np.float64) for v in (N, D, loss))
    ok = np.isfinite(y) & (y > 0) & (N > 0) & (D > 0)
    N, D, y = N[ok], D[ok], y[ok]
    if len(y) < MIN_OBS:
        raise VramfitError(f"not enough curve points to fit a loss law: have {len(y)}, need {MIN_OBS}")
    if len(np.unique(N)) < MIN_SIZES:
        raise VramfitError(f"not enough model sizes to fit a loss law: have {len(np.unique(N))} distinct "
                           f"parameter counts, need {MIN_SIZES}")
    logN, logD, logy = np.log(N), np.log(D), np.log(y)
    e_max = math.log(float(y.min())) - 1e-6

    def resid(p):
        e, a, b, al, be = p
        pred = np.logaddexp(np.logaddexp(e, a - al * logN), b - be * logD)
        return pred - logy

    lo, hi = [-10.0, -20.0, -20.0, 0.05, 0.05], [e_max, 40.0, 40.0, 2.0, 2.0]
    best = None
    for e0, a0, b0, al0, be0 in itertools.product([e_max - 0.5, e_max - 2.0], [1.0, 6.0], [2.0, 8.0],
                                                  [0.2, 0.5], [0.2, 0.5]):
        x0 = np.clip([e0, a0, b0, al0, be0], np.array(lo) + 1e-9, np.array(hi) - 1e-9)
        r = least_squares(resid, x0, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    e, a, b, al, be = best.x
    rmse = float(np.sqrt(np.mean(best.fun**2)))
    return LossLaw(math.exp(e), math.exp(a), math.exp(b), float(al), float(be), n_runs=n_runs or 0, n_obs=len(y),
                   rmse_log=rmse)


def run_curve(run: dict) -> tuple[np.ndarray, np.ndarray]:
    """(tokens seen, loss) of one stored run: val losses of its evals if it has >= 2, else training losses."""
    tps = float(run["tokens_per_step"])
    evals = [e for e in run.get("evals") or [] if e[0] > 0]
    pts = [(e[0], e[2]) for e in evals] if len(evals) >= 2 else [(x[0], x[1]) for x in run.get("losses") or []]
    pts = [(it, lo) for it, lo in pts if it > 0 and lo is not None and math.isfinite(lo)]
    if not pts:
        return np.zeros(0), np.zeros(0)
    last = max(it for it, _ in pts)
    pts = [(it, lo) for it, lo in pts if it >= SKIP_FRACTION * last]
    return np.array([it * tps for it, _ in pts], dtype=np.float64), np.array([lo for _, lo in pts], dtype=np.float64)


def stored_runs(db: str | Path) -> list[dict]:
    """Every `train` run in the database that recorded a loss curve: its extra fields plus shape and point_id."""
    from vramfit.store import Store

    path = Path(db)
    if not path.is_file():
        raise VramfitError(f"no database at {path} (run `vramfit sweep` or `vramfit train --suggestion N`)")
    with Store(path, readonly=True) as store:
        rows = store.train_runs()
    out = []
    for d in rows:
        if not d.get("corpus_id") or not d.get("tokens_per_step") or not (d.get("losses") or d.get("evals")):
            continue
        if not d.get("params"):
            from gpt.config import count_params

            d["params"] = int(count_params(d["n_layer"], d["n_embd"], d["block_size"], d["vocab_size"]))
        out.append(d)
    return out


def fit_runs(runs: list[dict]) -> LossLaw:
    """Fit the loss law to runs of ONE corpus; a clear error below MIN_RUNS."""
    if len(runs) < MIN_RUNS:
        name = runs[0].get("data_dir", "?") if runs else "this corpus"
        raise VramfitError(f"not enough runs to fit a loss law on {name}: have {len(runs)} stored train run(s), "
                           f"need {MIN_RUNS} of at least {MIN_SIZES} sizes (train more: `vramfit train --suggestion N`)"
                           )
    Ns, Ds, ys = [], [], []
    for r in runs:
        D, y = run_curve(r)
        Ns.append(np.full(len(D), float(r["params"])))
        Ds.append(D)
        ys.append(y)
    law = fit_loss_law(np.concatenate(Ns), np.concatenate(Ds), np.concatenate(ys), n_runs=len(runs))
    law.corpus_id, law.data_dir = str(runs[0]["corpus_id"]), str(runs[0].get("data_dir", ""))
    return law


def fit_store_runs(db: str | Path, data_dir: str | Path | None = None) -> list[LossLaw | VramfitError]:
    """One loss law per corpus among the stored runs (only `data_dir`'s corpus when given); errors as values."""
    runs = stored_runs(db)
    want = None
    if data_dir is not None:
        want = corpus_id(data_dir)
        if want is None:
            raise VramfitError(f"no prepared corpus in {data_dir} (missing meta.json)")
    by_corpus: dict[str, list[dict]] = {}
    for r in runs:
        by_corpus.setdefault(r["corpus_id"], []).append(r)
    if want is not None:
        by_corpus = {want: by_corpus.get(want, [])}
    if not by_corpus:
        raise VramfitError(f"not enough runs to fit a loss law: {db} has no train runs with a loss curve, need "
                           f"{MIN_RUNS} on one corpus (`vramfit train --suggestion N` stores them)")
    out: list[LossLaw | VramfitError] = []
    for cid, group in sorted(by_corpus.items()):
        try:
            out.append(fit_runs(group))
        except VramfitError as exc:
            out.append(VramfitError(f"corpus {cid}: {exc}" if not group else str(exc)))
    return out


def law_path(law_or_id: LossLaw | str, laws_dir: str | Path = LAWS_DIR) -> Path:
    cid = law_or_id.corpus_id if isinstance(law_or_id, LossLaw) else law_or_id
    return Path(laws_dir) / f"{cid}.json"


def load_law(path: str | Path) -> LossLaw:
    path = Path(path)
    try:
        return LossLaw.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):  # missing, not UTF-8 / JSON, wrong shape
        raise VramfitError(f"{path} is not a vramfit loss-law file (run `vramfit fit --loss`)") from None


def law_for_corpus(data_dir: str | Path, laws_dir: str | Path = LAWS_DIR) -> LossLaw | None:
    """The fitted loss law of `data_dir`'s corpus, if `fit --loss` saved one."""
    cid = corpus_id(data_dir)
    if cid is None:
        return None
    path = law_path(cid, laws_dir)
    return load_law(path) if path.is_file() else None
