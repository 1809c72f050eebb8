"""Random splits of a dataset into named parts (train / valid / test), reproducible from a seed.

``split_indices(n, sizes, seed)``: ``sizes`` maps part names (in order) to fractions summing to 1 or
to counts summing to n; the frames are permuted by ``torch.randperm`` with a ``torch.Generator``
seeded with ``seed`` and cut in that order: exactly ``torch.utils.data.random_split`` (fractions:
floor of each share, the remainder handed out one by one from the first part), which is what
NequIP's ``split_dataset`` does, so a NequIP config gets the same frames in each part.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Union

import torch

from mlpot.errors import ConfigError

__all__ = ["split_indices"]


def split_indices(n_frames: int, sizes: Mapping[str, Union[int, float]], seed: int, key=None) -> Dict[str, List[int]]:
    """Frame indices of every part (module docstring); ConfigError (at ``key``) for sizes that do not fit."""
    names = list(sizes)
    lengths = [sizes[name] for name in names]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in lengths):
        if sum(lengths) != n_frames:
            raise ConfigError(f"split sizes {dict(sizes)} sum to {sum(lengths)}, the dataset has {n_frames} frames", key=key)
    elif abs(sum(float(v) for v in lengths) - 1.0) > 1e-6 or any(float(v) < 0 for v in lengths):
        raise ConfigError(f"split fractions {dict(sizes)} must be non-negative and sum to 1 (or give frame counts)", key=key)
    parts = torch.utils.data.random_split(range(n_frames), lengths, generator=torch.Generator().manual_seed(int(seed)))
    return {name: [int(i) for i in part.indices] for name, part in zip(names, parts)}
