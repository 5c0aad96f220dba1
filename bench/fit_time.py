"""Benchmark: sequence-temperature fit time on CPU, against baselines in the same run.

Usage: .venv/bin/python bench/fit_time.py [--sizes 10000,30000,100000] [--tokens 200]

Synthetic generations (top-5 logprobs, labels drawn from the confidence at a
planted T*) so the fitted T can be compared with the truth. Baselines over the
same objective and data:
  * reference: torch LBFGS lr=0.01, max_iter=50 with autograd (the recipe
    DESIGN.md warns about), run at the smallest size only since it is slow;
  * golden: golden-section search on log T using loss values only.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from monitor.calibration import fit_sequence_temperature
from monitor.calibration._sequence_objective import NumpyObjective, prepare
from monitor.calibration.synthetic import synthetic_token_batch

T_TRUE = 1.5


def golden(batch, labels, tol: float = 1e-5) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    obj = NumpyObjective(prepare(batch, labels, "geometric_mean"))
    a, b = math.log(0.05), math.log(20.0)
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = obj(c)[0], obj(d)[0]
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = obj(c)[0]
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = obj(d)[0]
    return math.exp((a + b) / 2), time.perf_counter() - t0, obj.evaluations


def reference_lbfgs(batch, labels) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The reference recipe, autograd through the same renormalised top-K objective."""
    import torch

    t0 = time.perf_counter()
    data = prepare(batch, labels, "geometric_mean")
    dense = torch.from_numpy(data.dense)
    dc = torch.from_numpy(data.dc)
    sp, sd = torch.from_numpy(data.sparse_pos), torch.from_numpy(data.sparse_d)
    lengths = torch.from_numpy(np.diff(data.offsets))
    seg = torch.repeat_interleave(torch.arange(lengths.shape[0]), lengths)
    y = torch.from_numpy(labels).float()
    theta = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([theta], lr=0.01, max_iter=50)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        u = torch.exp(-theta)
        z = 1 + torch.exp(dense * u).sum(0)
        z = z.index_add(0, sp, torch.exp(sd * u))
        lp = dc * u - torch.log(z)
        g = torch.zeros(lengths.shape[0]).index_add(0, seg, lp) / lengths
        q = torch.exp(g).clamp(1e-7, 1 - 1e-7)
        loss = torch.nn.functional.binary_cross_entropy(q, y)
        loss.backward()
        return loss

    opt.step(closure)
    return math.exp(float(theta.detach())), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--no-reference", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"T* = {T_TRUE}, {args.tokens} tokens/generation, K=5, CPU (numpy engine)")
    header = (
        f"{'generations':>11} {'positions':>10} {'fit s':>7} {'passes':>6} {'T fit':>8} "
        f"{'T err':>7} {'golden s':>8} {'evals':>5} {'T golden':>8} {'speedup':>7}"
    )
    print(header)
    for i, n in enumerate(sizes):
        batch, labels = synthetic_token_batch(n, args.tokens, 5, T_TRUE, seed=100 + i)
        fit = fit_sequence_temperature(batch, labels)
        tg, sec_g, evals = golden(batch, labels)
        print(
            f"{n:>11,} {batch.n_positions:>10,} {fit.seconds:>7.2f} {fit.iterations:>6} "
            f"{fit.temperature:>8.4f} {fit.temperature / T_TRUE - 1:>+7.2%} {sec_g:>8.2f} "
            f"{evals:>5} {tg:>8.4f} {sec_g / fit.seconds:>6.1f}x"
        )
        if i == 0 and not args.no_reference:
            t_ref, sec_ref = reference_lbfgs(batch, labels)
            print(
                f"{'':>11} reference LBFGS(lr=0.01, max_iter=50): {sec_ref:.2f} s "
                f"({sec_ref / fit.seconds:.1f}x slower), T = {t_ref:.4f} "
                f"vs optimum {fit.temperature:.4f}"
            )


if __name__ == "__main__":
    main()
