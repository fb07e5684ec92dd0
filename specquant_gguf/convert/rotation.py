"""In-group Walsh–Hadamard rotation (FORMAT.md §4.1).

The runtime replaces every activation group v (G consecutive inputs) by its *unnormalised* Walsh–
Hadamard transform H·v (Sylvester order, in-place butterfly). The converter stores each weight group
as w·H/G, so that (w·H/G)·(H·v) = w·v (H is symmetric and H·H = G·I). The rotation spreads an
outlier over the whole group, which is what lets int4 activations survive.
"""
from __future__ import annotations

import torch


def is_power_of_two(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def hadamard(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Sylvester Hadamard matrix of order n (entries ±1, symmetric, H·H = n·I)."""
    if not is_power_of_two(n):
        raise ValueError(f"Hadamard order {n} is not a power of two")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def wht_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """Unnormalised WHT of each group of `group` values along the last dim, by the butterfly of §4.1.

    Each level computes (a + b, a − b) from the same operands as the C loop, so in fp32 the result is
    bit-identical to the runtime's (the levels are the same additions in the same order).
    """
    if x.shape[-1] % group:
        raise ValueError(f"length {x.shape[-1]} is not a multiple of the rotation block {group}")
    if not is_power_of_two(group):
        raise ValueError(f"rotation block {group} is not a power of two")
    shape = x.shape
    v = x.reshape(-1, group)
    h = 1
    while h < group:
        v = v.reshape(-1, group // (2 * h), 2, h)
        a, b = v[:, :, 0, :], v[:, :, 1, :]
        v = torch.stack((a + b, a - b), dim=2).reshape(-1, group)
        h *= 2
    return v.reshape(shape)


def rotate_weight(w: torch.Tensor, group: int) -> torch.Tensor:
    """Weight (C_out, C_in) -> each input group w_g·H/G (computed in float64, returned as float32)."""
    c_out, c_in = w.shape
    h = hadamard(group) / group
    out = (w.to(torch.float64).reshape(c_out, c_in // group, group) @ h).reshape(c_out, c_in)
    return out.to(torch.float32)


def unrotate_weight(w_rot: torch.Tensor, group: int) -> torch.Tensor:
    """Inverse of rotate_weight: w = w_rot·H (since H·H/G = I)."""
    c_out, c_in = w_rot.shape
    h = hadamard(group)
    return (w_rot.to(torch.float64).reshape(c_out, c_in // group, group) @ h).reshape(c_out, c_in).float()


def rotate_hessian(hess: torch.Tensor, group: int) -> torch.Tensor:
    """XᵀX of the inputs -> (XB)ᵀ(XB) = B·XᵀX·B of the rotated inputs, B = blockdiag(H) (H symmetric,
    unnormalised, as the runtime applies it): two batched matrix products, each applying H to the
    groups of one side, in the Hessian's own precision."""
    n = hess.shape[0]
    h = hadamard(group, hess.dtype)
    # one (n²/G x G) @ (G x G) product per side: a batched (n, n/G, G) @ (G, G) is many times slower
    right = (hess.reshape(-1, group) @ h).reshape(n, n)  # XᵀX·B
    right = right.t().contiguous()  # (XᵀX·B)ᵀ = B·XᵀX
    return (right.reshape(-1, group) @ h).reshape(n, n)  # B·XᵀX·B
