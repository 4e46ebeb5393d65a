"""Shape helpers of the neural causal model: values of N rows with S posterior samples each, Tensor[N, S, *f].

Values that are the same for every sample of a row are kept as Tensor[N, 1, *f] (or broadcast views) so that
mechanisms run once per row; these helpers broadcast, compact and select along the sample dimension.
"""

from torch import Tensor


def broadcast(x: Tensor, shape: tuple[int, ...], trailing: int) -> Tensor:
    """Broadcast x to `shape` plus its `trailing` feature dims, inserting missing batch dims after its own.

    Args:
        x: Tensor[*b, *f] where `b` is a prefix of `shape` (or ones) and `f` has `trailing` dims.
        shape: Target batch shape, e.g. (N, S).
        trailing: Number of feature dims of x (0 for values, 1 for feature vectors and logits).

    Returns:
        Tensor[*shape, *f] (a view).
    """
    batch = x.ndim - trailing
    x = x.reshape(*x.shape[:batch], *([1] * (len(shape) - batch)), *x.shape[batch:])
    return x.expand(*shape, *x.shape[len(shape) :])


def compact(x: Tensor) -> Tensor:
    """Tensor[N, S, *f] -> Tensor[N, 1, *f] when the sample dim is a broadcast (stride-0) view, else x."""
    return x[:, :1] if x.shape[1] == 1 or x.stride(1) == 0 else x


def take(x: Tensor, picks: Tensor) -> Tensor:
    """Select importance samples: x Tensor[N, K, *f] and picks LongTensor[N, S] give Tensor[N, S, *f]."""
    index = picks.reshape(*picks.shape, *([1] * (x.ndim - 2))).expand(*picks.shape, *x.shape[2:])
    return x.gather(1, index)
