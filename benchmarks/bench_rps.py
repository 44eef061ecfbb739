"""RPS-L2 fit and explain(top_k=10) next to their floors, measured in the same run.

- fit vs sklearn LogisticRegression(lbfgs) on the same features, with the equivalent C
  (``(1/n) sum L + lam ||w||^2`` is ``C sum L + ||w||^2 / 2`` with ``C = 1 / (2 lam n)``),
  fit to the model's predicted labels.
- explain top-k vs one bare torch matmul of the same shapes ((n_test, d+1) @ (d+1, n_train)).
- peak RSS growth of explain top-k vs the size of the train feature matrix.

Usage: python benchmarks/bench_rps.py [--n-train 50000] [--dim 512] [--classes 10] [--n-test 1000]
"""

from __future__ import annotations

import warnings

import torch
from _common import head_workload_args, peak_rss, synthetic_head, timeit, write_results
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from skrep import RepresenterPoints


def main() -> None:
    a = head_workload_args(__doc__)
    head, F, Ft = synthetic_head(a.n_train, a.n_test, a.dim, a.classes)
    with torch.no_grad():
        y = head(torch.as_tensor(F)).argmax(1).numpy()
    lam = 3e-3
    C = 1.0 / (2 * lam * a.n_train)

    t_fit, rps = timeit(lambda: RepresenterPoints(head, lam=lam, device=a.device, batch_size=8192).fit(F, y), a.repeat)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t_sk, sk = timeit(lambda: LogisticRegression(C=C, max_iter=1000).fit(F, y), a.repeat)
        # sklearn stops at tol=1e-4; the representer theorem needs a stationary point to many
        # digits, so show sklearn asked for more precision too
        t_sk_tight, sk_tight = timeit(lambda: LogisticRegression(C=C, tol=1e-8, max_iter=10000).fit(F, y), 1)

    rps.explain(Ft[:10], top_k=10)  # warm-up
    t_explain, _ = timeit(lambda: rps.explain(Ft, top_k=10), a.repeat)
    A = torch.cat([torch.as_tensor(Ft), torch.ones(a.n_test, 1)], 1)
    B = rps.train_features_.T.contiguous()
    t_mm, _ = timeit(lambda: A @ B, a.repeat)

    with peak_rss() as mem:
        rps.explain(Ft, top_k=10)
    feat_bytes = rps.train_features_.numel() * rps.train_features_.element_size()
    results = {
        "shape": {"n_train": a.n_train, "dim": a.dim, "classes": a.classes, "n_test": a.n_test, "lam": lam},
        "fit_s": t_fit,
        "sklearn_lbfgs_fit_s": t_sk,
        "sklearn_lbfgs_iters": int(sk.n_iter_[0]),
        "fit_ratio": t_fit / t_sk,
        "sklearn_lbfgs_tol1e-8_fit_s": t_sk_tight,
        "sklearn_lbfgs_tol1e-8_iters": int(sk_tight.n_iter_[0]),
        "fit_ratio_vs_tol1e-8": t_fit / t_sk_tight,
        "newton_steps": rps.n_iter_,
        "grad_norm": rps.grad_norm_,
        "explain_topk_s": t_explain,
        "bare_matmul_s": t_mm,
        "explain_ratio": t_explain / t_mm,
        "explain_peak_rss_mb": mem["delta"] / 2**20,
        "train_features_mb": feat_bytes / 2**20,
        "memory_ratio": mem["delta"] / feat_bytes,
        "targets": {"fit_ratio": "<= 1.0", "explain_ratio": "<= 2.0", "memory_ratio": "< 2.0"},
    }
    write_results("bench_rps", results)


if __name__ == "__main__":
    main()
