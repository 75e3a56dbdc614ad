"""What corrupts an LR beyond its operator: magnitude (Rician) noise and a smooth bias field.

Kept apart from the operators (`bundle.data.operators`, linear and deterministic) and from the random draws
(`bundle.data.degradation`), which combine the three.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["bias_field", "rician_noise", "robust_max"]


def robust_max(x: torch.Tensor, q: float = 0.995) -> float:
    """The q-quantile of a volume's values (on a strided subsample of at most ~1M voxels): its robust max."""
    flat = torch.as_tensor(x).detach().reshape(-1).float()
    if flat.numel() > 1_000_000:
        flat = flat[:: flat.numel() // 1_000_000 + 1]
    return float(torch.quantile(flat, q))


def rician_noise(
    x: torch.Tensor, sigma: float, generator: torch.Generator | None = None, reference: float | None = None
) -> torch.Tensor:
    """The magnitude of the volume plus complex Gaussian noise, |x + n1 + i n2|: never negative, real.

    `x` may be complex (a partial-Fourier LR before its magnitude is taken, as a scanner's receiver adds the noise
    before the magnitude image is made); a real `x` gives sqrt((x + n1)^2 + n2^2). `sigma` is relative to
    `reference` (default: the robust max of |x|), so 0.02 is 2% of the bright tissue for volumes scaled to about
    [0, 1]. Noise is drawn on the CPU from `generator` (reproducible); sigma 0 gives |x| (x itself when real).
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x.abs() if x.is_complex() else x
    ref = robust_max(x.abs() if x.is_complex() else x) if reference is None else float(reference)
    std = sigma * max(ref, 1e-6)
    real = x.real if x.is_complex() else x
    imag = x.imag if x.is_complex() else torch.zeros_like(x)
    noise = torch.randn((2, *x.shape), generator=generator, dtype=torch.float32).to(device=x.device, dtype=real.dtype)
    return torch.sqrt((real + std * noise[0]) ** 2 + (imag + std * noise[1]) ** 2)


def _bias_polynomial(spatial: Sequence[int], coefficients: Sequence[float]) -> torch.Tensor:
    """sum_k c_k * term_k over the grid, coordinates in [-1, 1] per axis; terms: x, y, z, P2(x), P2(y), P2(z),
    xy, xz, yz (P2(t) = (3t^2 - 1) / 2)."""
    cx, cy, cz = (torch.linspace(-1.0, 1.0, int(n), dtype=torch.float32) if n > 1 else torch.zeros(1) for n in spatial)
    c = [float(v) for v in coefficients]
    if len(c) != 9:
        raise ValueError(f"a bias field needs 9 polynomial coefficients, got {len(c)}")

    def p2(t: torch.Tensor) -> torch.Tensor:
        return 1.5 * t * t - 0.5

    x, y, z = cx[:, None, None], cy[None, :, None], cz[None, None, :]
    # three planes summed into one volume: two full passes instead of one per term
    p = (c[0] * x + c[3] * p2(x) + c[1] * y + c[4] * p2(y) + c[6] * x * y) + (c[7] * x * z + c[2] * z + c[5] * p2(z))
    return p.add_(c[8] * y * z)


def bias_field(spatial: Sequence[int], strength: float, coefficients: Sequence[float]) -> torch.Tensor:
    """A smooth multiplicative field (X, Y, Z) = exp(log(1 + strength) * p / max|p|), p a quadratic polynomial.

    The field lies in [1 / (1 + strength), 1 + strength] and reaches one of the bounds; strength 0 gives ones.
    """
    if strength < 0:
        raise ValueError(f"bias strength must be >= 0, got {strength}")
    if strength == 0:
        return torch.ones(*[int(n) for n in spatial])
    p = _bias_polynomial(spatial, coefficients)
    low, high = torch.aminmax(p)
    peak = max(-float(low), float(high))
    if peak < 1e-12:
        return torch.ones_like(p)
    return p.mul_(math.log1p(strength) / peak).exp_()
