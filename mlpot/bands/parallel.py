"""Worker processes over k-points: DeePseudopot's ``num_cores`` (spec deepseudopot.md §4.8).

The parent evaluates the network and builds each system's local matrix V (k-independent); every
worker holds its own copy of the plane-wave systems (built once, at start-up, from the parsed
inputs: basis, kinetic diagonals, SO/NL caches) and, per call, takes V for a contiguous group of
k-points, solves them in chunks and returns its loss, its bands and ∂L/∂V. The parent sums the
∂L/∂V and back-propagates once into the network: the gradient is the serial one (up to the order of
floating-point sums). Workers use the ``spawn`` start method (forking a process with live OpenMP
thread pools can deadlock) and ``threads`` torch threads each (``blas_threads_per_worker``).

Use as a context manager, or call :meth:`KPointPool.close`.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import List, Optional, Sequence

import numpy as np
import torch

__all__ = ["KPointPool"]

_STATE: dict = {}  # per worker process: the plane-wave systems and their references


def _init_worker(specs: list, chunk: int, threads: int) -> None:
    from mlpot.bands.hamiltonian import PlaneWaveSystem

    torch.set_num_threads(threads)
    systems = [PlaneWaveSystem(spec["system"], **spec["options"]) for spec in specs]
    _STATE.update(systems=systems, chunk=chunk, references=[
        (None if pw.system.ref_bands is None else torch.as_tensor(pw.system.ref_bands, dtype=pw.dtype),
         torch.as_tensor(pw.system.kweights, dtype=pw.dtype),
         None if pw.system.band_weights is None else torch.as_tensor(pw.system.band_weights, dtype=pw.dtype))
        for pw in systems])


def _work(index: int, k_indices: List[int], local: np.ndarray, permutation: Optional[np.ndarray],
          rel_band: Optional[int], params: np.ndarray, grad: bool):
    from mlpot.bands.engine import chunk_pass

    pw = _STATE["systems"][index]
    pw.set_params(params)
    ref, kweights, band_weights = _STATE["references"][index]
    leaf = torch.from_numpy(local).requires_grad_(grad)
    perm = None if permutation is None else torch.from_numpy(permutation)
    loss, bands = chunk_pass(pw, leaf, k_indices, _STATE["chunk"], ref, kweights, band_weights, rel_band, perm, grad)
    grad_local = leaf.grad.numpy() if grad and leaf.grad is not None else None
    return loss, grad_local, bands.numpy()


class KPointPool:
    """``workers`` processes sharing the k-points of every system (contiguous groups).

    Args:
        systems: the parent's :class:`PlaneWaveSystem` objects (their inputs and options are sent
            to the workers, which rebuild them).
        workers: number of processes.
        chunk: k-points per eigensolver call / backward inside a worker.
        threads: torch threads per worker.
    """

    def __init__(self, systems: Sequence, workers: int, chunk: int = 8, threads: int = 1):
        specs = [dict(system=pw.system, options=dict(
            species=pw.species, params=pw.params, basis_mode=pw.basis_mode, spin_orbit=pw.spin_orbit,
            non_local=pw.non_local, double_bands=pw.double_bands, cache_fixed=pw.cache_fixed,
            compat_units=pw.compat_units, dtype=pw.dtype, miller=pw.miller, eigen_driver=pw.eigen_driver))
            for pw in systems]
        self.workers = int(workers)
        self.groups = [[g.tolist() for g in np.array_split(np.arange(pw.n_k), self.workers) if len(g)]
                       for pw in systems]
        self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(specs, int(chunk), int(threads)))

    def run(self, locals_: Sequence[torch.Tensor], permutations: Sequence[Optional[torch.Tensor]],
            rel_bands: Sequence[Optional[int]], params: np.ndarray, grad: bool):
        """Per system ``(loss, ∂L/∂V or None, bands (n_k, n_bands))`` for the local matrices ``locals_``."""
        futures = []
        for i, (local, groups) in enumerate(zip(locals_, self.groups)):
            perm = None if permutations[i] is None else permutations[i].cpu().numpy()
            array = local.detach().cpu().numpy()
            futures.append([self.executor.submit(_work, i, ks, array, perm, rel_bands[i], np.asarray(params), grad)
                            for ks in groups])
        out = []
        for local, parts in zip(locals_, futures):
            results = [f.result() for f in parts]
            loss = sum(r[0] for r in results)
            grad_local = None
            parts_grad = [r[1] for r in results if r[1] is not None]
            if grad and parts_grad:
                grad_local = torch.from_numpy(np.sum(parts_grad, axis=0)).to(local.dtype)
            bands = torch.from_numpy(np.concatenate([r[2] for r in results]))
            out.append((loss, grad_local, bands))
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "KPointPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
