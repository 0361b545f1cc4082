"""Paired significance tests over queries, for claims that one system beats another.

    paired_test(per_query_a, per_query_b)   # {"n", "mean_a", "mean_b", "diff", "t", "p", "wins", "losses"}

Two systems run on the same queries give one difference per query (e.g. of nDCG@10). ``p`` is the
two-sided p-value of a paired randomisation test (Fisher's sign flip, as Smucker, Allan and
Carterette, CIKM 2007, recommend for IR): under the null hypothesis each difference is as likely
positive as negative, so the mean difference is compared with the means of ``rounds`` random sign
flips (seeded: the same inputs give the same p). ``t`` is the paired t statistic beside it. Runs of
several seeds are pooled by keying the queries ``(seed, qid)``.
"""

from __future__ import annotations

import math
from typing import Hashable, Mapping

import numpy as np

from tandem.errors import UsageError


def paired_test(a: Mapping[Hashable, float], b: Mapping[Hashable, float], rounds: int = 20_000,
                seed: int = 0) -> dict[str, float]:
    """Is ``a`` better than ``b`` over the queries both score? A paired randomisation test and a paired t.

    Args:
        a, b: query -> score (nDCG@10 per query, say); only the queries in both count.
        rounds: random sign flips of the randomisation test.

    Returns:
        ``n`` queries, ``mean_a``, ``mean_b``, ``diff`` (mean of a - b), ``t``, two-sided ``p``
        (randomisation; 1.0 when every difference is 0), ``wins`` and ``losses`` of ``a``.
    """
    keys = sorted((k for k in a if k in b), key=str)  # one order whatever the dicts': the sign flips are positional
    if not keys:
        raise UsageError("paired test: the two systems share no query")
    x = np.asarray([float(a[k]) for k in keys])
    y = np.asarray([float(b[k]) for k in keys])
    d = x - y  # (n,)
    n = len(d)
    diff = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    t = diff / (sd / math.sqrt(n)) if sd > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    if not np.any(d):
        p = 1.0
    else:
        rng = np.random.default_rng(seed)
        extreme = 0
        for start in range(0, rounds, 2000):  # bounded memory for many pooled queries
            signs = rng.integers(0, 2, size=(min(2000, rounds - start), n)) * 2 - 1  # (r, n)
            extreme += int(np.sum(np.abs(signs @ d) / n >= abs(diff) - 1e-12))
        # the observed assignment counts as one of the rounds, so p is never 0
        p = float((extreme + 1) / (rounds + 1))
    return {"n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "diff": diff, "t": float(t), "p": p,
            "wins": int(np.sum(d > 0)), "losses": int(np.sum(d < 0))}


def one_sided_p(test: Mapping[str, float]) -> float:
    """The one-sided p of "a beats b" from a :func:`paired_test` result."""
    return test["p"] / 2 if test["diff"] > 0 else 1.0 - test["p"] / 2


def describe_test(test: Mapping[str, float], a: str, b: str) -> str:
    """One line for logs and reports: ``a - b = +0.0123 (p = 0.004, 61 wins / 40 losses over 300 queries)``."""
    return (f"{a} - {b} = {test['diff']:+.4f} nDCG@10 (paired randomisation p = {test['p']:.3g}; "
            f"{test['wins']} wins / {test['losses']} losses over {test['n']} queries)")
