"""RPS-LJE next to RPS-L2 in the same run: fit, and explain(top_k=10).

Target: LJE's explain within 1.2x of RPS-L2's explain. LJE's training side is W_i (k x d per
point, from the explicit head Hessian), so explaining class c costs <W_i[:, c], f_t> per pair,
as much as RPS-L2's alpha_ic <f_i, f_t>.

Usage: python benchmarks/bench_lje.py [--n-train 50000] [--dim 512] [--classes 10] [--n-test 1000]
"""

from __future__ import annotations

import torch
from _common import head_workload_args, peak_rss, synthetic_head, timeit, write_results

from skrep import RepresenterLJE, RepresenterPoints


def main() -> None:
    a = head_workload_args(__doc__)
    head, F, Ft = synthetic_head(a.n_train, a.n_test, a.dim, a.classes)
    with torch.no_grad():
        y = head(torch.as_tensor(F)).argmax(1).numpy()
    # make the labels disagree with the head on 5% of the points, as real training labels do
    flip = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(y), generator=flip)[: len(y) // 20].numpy()
    y[idx] = (y[idx] + 1) % a.classes

    kw = dict(device=a.device, batch_size=8192)
    t_fit_rps, rps = timeit(lambda: RepresenterPoints(head, **kw).fit(F, y), 1)
    with peak_rss() as fit_mem:
        t_fit_lje, lje = timeit(lambda: RepresenterLJE(head, **kw).fit(F, y), 1)
    rps.explain(Ft[:10], top_k=10)
    lje.explain(Ft[:10], top_k=10)
    t_rps, _ = timeit(lambda: rps.explain(Ft, top_k=10), a.repeat)
    t_lje, E = timeit(lambda: lje.explain(Ft, top_k=10), a.repeat)
    W = lje.train_embedding_.u
    results = {
        "shape": {"n_train": a.n_train, "dim": a.dim, "classes": a.classes, "n_test": a.n_test},
        "rps_fit_s": t_fit_rps,
        "lje_fit_s": t_fit_lje,
        "lje_solver": lje.solver_,
        "lje_fit_peak_rss_mb": fit_mem["delta"] / 2**20,
        "lje_train_side_mb": W.numel() * W.element_size() / 2**20,
        "rps_explain_topk_s": t_rps,
        "lje_explain_topk_s": t_lje,
        "explain_ratio": t_lje / t_rps,
        "targets": {"explain_ratio": "<= 1.2"},
    }
    write_results("bench_lje", results)


if __name__ == "__main__":
    main()
