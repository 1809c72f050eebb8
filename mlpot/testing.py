"""Physics test toolkit shipped with the package (DESIGN code habit 9).

Every model test uses these checks:

* ``finite_difference_forces`` / ``assert_forces_match_fd``: F = -dE/dR by central differences;
* ``assert_virial_matches_finite_strain``: Ξ = -dE/dε by central differences of a symmetric strain
  applied to positions and cell; ``assert_derivatives_match_fd``: both, with the usual float64 /
  float32 steps and tolerances;
* ``random_rotation``, ``assert_invariant`` (rotation, translation, permutation of atoms within
  each frame), ``assert_equivariant_vector`` / ``assert_equivariant_tensor`` (rank 1 and 2 outputs);
* ``assert_batch_consistent``: a batch gives the same outputs as its frames one at a time;
* ``split_batch``: the frames of a collated batch as one-frame batches.

All functions take a model (``model(batch) -> dict``) and a collated batch (keys of
``mlpot.data.keys``). Finite differences loop over coordinates: this is a test tool, meant for
small systems, and should be run in float64 (float32 checks use looser tolerances).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

from mlpot.data import keys as K
from mlpot.models.derivatives import compute_derivatives

__all__ = [
    "finite_difference_forces", "assert_forces_match_fd", "finite_strain_virial", "assert_virial_matches_finite_strain",
    "assert_derivatives_match_fd", "finite_difference_hessian", "assert_hessian_matches_fd",
    "random_rotation", "rotate_batch", "translate_batch", "permute_batch", "split_batch",
    "assert_invariant", "assert_equivariant_vector", "assert_equivariant_tensor", "assert_batch_consistent",
]

Batch = Dict[str, torch.Tensor]


def _energy(model, batch: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)[K.ENERGY].to(torch.float64)


def finite_difference_forces(model, batch: Batch, delta: float = 1e-4, atoms: Optional[Sequence[int]] = None) -> torch.Tensor:
    """-dE/dR by central differences, (n_atoms, 3) eV/Å; rows not in ``atoms`` stay zero."""
    positions = batch[K.POSITIONS]
    forces = torch.zeros(positions.shape, dtype=torch.float64)
    for atom in range(positions.shape[0]) if atoms is None else atoms:
        for axis in range(3):
            energies = []
            for sign in (1.0, -1.0):
                moved = positions.detach().clone()
                moved[atom, axis] += sign * delta
                energies.append(_energy(model, dict(batch, **{K.POSITIONS: moved})).sum())
            forces[atom, axis] = -(energies[0] - energies[1]) / (2 * delta)
    return forces


def assert_forces_match_fd(model, batch: Batch, *, delta: float = 1e-4, atol: float = 1e-6, rtol: float = 1e-5,
                           atoms: Optional[Sequence[int]] = None) -> None:
    """Autograd forces equal finite-difference forces (on ``atoms``, default all)."""
    analytic = compute_derivatives(model, batch, forces=True)[K.FORCES].detach().to(torch.float64)
    numeric = finite_difference_forces(model, batch, delta, atoms)
    rows = slice(None) if atoms is None else list(atoms)
    torch.testing.assert_close(analytic[rows], numeric[rows], atol=atol, rtol=rtol)


def finite_difference_hessian(model, batch: Batch, delta: float = 1e-5) -> torch.Tensor:
    """d²E/dR² per frame (n_frames, (3 N_max)²) eV/Å² in the HESSIAN layout (``mlpot.models.hessian``):
    central differences of the autograd forces, column k of every frame from one displaced pair that
    moves local coordinate k (atom k // 3, axis k % 3) of all frames at once (frames are independent)."""
    n_atoms, ptr = batch[K.N_ATOMS].tolist(), batch[K.PTR].tolist()
    size = 3 * max(n_atoms)
    out = torch.zeros(len(n_atoms), size, size, dtype=torch.float64)
    for column in range(size):
        forces = []
        for sign in (1.0, -1.0):
            moved = batch[K.POSITIONS].detach().clone().reshape(-1)
            for frame, (start, count) in enumerate(zip(ptr, n_atoms)):
                if column < 3 * count:
                    moved[3 * start + column] += sign * delta
            forces.append(compute_derivatives(model, dict(batch, **{K.POSITIONS: moved.reshape(-1, 3)}),
                                              forces=True)[K.FORCES].detach().to(torch.float64).reshape(-1))
        derivative = -(forces[0] - forces[1]) / (2 * delta)
        for frame, (start, count) in enumerate(zip(ptr, n_atoms)):
            if column < 3 * count:
                out[frame, : 3 * count, column] = derivative[3 * start: 3 * (start + count)]
    rows = [out[frame, : 3 * count, : 3 * count].reshape(-1) for frame, count in enumerate(n_atoms)]
    return torch.stack([torch.nn.functional.pad(row, (0, size * size - row.numel())) for row in rows])


def assert_hessian_matches_fd(model, batch: Batch, *, delta: float = 1e-5, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Autograd Hessians (``compute_derivatives(hessian=True)``) equal finite differences of the forces."""
    analytic = compute_derivatives(model, dict(batch), hessian=True)[K.HESSIAN].detach().to(torch.float64)
    torch.testing.assert_close(analytic, finite_difference_hessian(model, batch, delta), atol=atol, rtol=rtol)


def _strained(batch: Batch, strain: torch.Tensor) -> Batch:
    """Apply a per-frame strain (n_frames, 3, 3) to positions and cell."""
    positions = batch[K.POSITIONS].detach()
    deform = torch.eye(3, dtype=positions.dtype) + strain.to(positions.dtype)
    out = dict(batch)
    out[K.POSITIONS] = torch.bmm(positions.unsqueeze(1), deform[batch[K.BATCH]]).squeeze(1)
    out[K.CELL] = torch.bmm(batch[K.CELL].to(positions.dtype), deform)
    return out


def finite_strain_virial(model, batch: Batch, delta: float = 1e-5) -> torch.Tensor:
    """Ξ_ab = -dE/dε_ab by central differences of symmetric strains, (n_frames, 3, 3) eV."""
    n_frames = batch[K.CELL].shape[0]
    virial = torch.zeros(n_frames, 3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            strain = torch.zeros(n_frames, 3, 3, dtype=torch.float64)
            strain[:, a, b] += 0.5 * delta
            strain[:, b, a] += 0.5 * delta
            plus, minus = _energy(model, _strained(batch, strain)), _energy(model, _strained(batch, -strain))
            virial[:, a, b] = -(plus - minus) / (2 * delta)
    return virial


def assert_virial_matches_finite_strain(model, batch: Batch, *, delta: float = 1e-5, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Autograd virial equals the finite-strain derivative; stress = -virial / volume."""
    out = compute_derivatives(model, batch, forces=False, virial=True, stress=True)
    numeric = finite_strain_virial(model, batch, delta)
    torch.testing.assert_close(out[K.VIRIAL].detach().to(torch.float64), numeric, atol=atol, rtol=rtol)
    volume = torch.linalg.det(batch[K.CELL].to(torch.float64)).abs()
    periodic = volume > 1e-12
    expected = -numeric[periodic] / volume[periodic][:, None, None]
    torch.testing.assert_close(out[K.STRESS].detach().to(torch.float64)[periodic], expected, atol=atol, rtol=rtol)


def assert_derivatives_match_fd(model, batch: Batch, dtype: torch.dtype = torch.float64) -> None:
    """Forces and virial by finite differences for a model of precision ``dtype``: float64 with a
    1e-4 Å / 1e-5 strain step and ~1e-7 tolerances; float32 with 2e-3 steps and percent-level
    tolerances (forces on atoms 0, 3 and 9 only)."""
    if dtype == torch.float64:
        assert_forces_match_fd(model, batch, atol=1e-7, rtol=1e-5)
        assert_virial_matches_finite_strain(model, batch, atol=1e-7, rtol=1e-5)
    else:
        assert_forces_match_fd(model, batch, delta=2e-3, atol=5e-3, rtol=5e-2, atoms=[0, 3, 9])
        assert_virial_matches_finite_strain(model, batch, delta=2e-3, atol=2e-2, rtol=5e-2)


def random_rotation(dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    """A random proper rotation matrix (3, 3), det = +1, from the QR decomposition of a Gaussian matrix."""
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def rotate_batch(batch: Batch, rotation: torch.Tensor) -> Batch:
    """Rotate positions and cell rows: r -> R r (row vectors: r @ R^T)."""
    out = dict(batch)
    rot = rotation.to(batch[K.POSITIONS].dtype)
    out[K.POSITIONS] = batch[K.POSITIONS] @ rot.T
    out[K.CELL] = batch[K.CELL].to(rot.dtype) @ rot.T
    return out


def translate_batch(batch: Batch, shift: Sequence[float]) -> Batch:
    """Translate every atom by ``shift`` (3,) Å."""
    out = dict(batch)
    out[K.POSITIONS] = batch[K.POSITIONS] + torch.as_tensor(shift, dtype=batch[K.POSITIONS].dtype)
    return out


def permute_batch(batch: Batch, seed: int = 0, perm: Optional[torch.Tensor] = None) -> tuple:
    """Shuffle atoms within each frame (and the edge order). Returns (batch, perm) with new[k] = old[perm[k]];
    ``perm`` (n_atoms,) given: that order of the atoms (it must keep them grouped by frame)."""
    generator = torch.Generator().manual_seed(seed)
    frame = batch[K.BATCH]
    keys = frame.to(torch.float64) * 2 + torch.rand(len(frame), generator=generator, dtype=torch.float64)
    perm = torch.argsort(keys) if perm is None else perm  # stays grouped by frame
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(len(perm))
    out = {}
    n_atoms, n_edges = len(frame), batch[K.EDGE_INDEX].shape[1] if K.EDGE_INDEX in batch else 0
    edge_perm = torch.randperm(n_edges, generator=generator)
    for key, value in batch.items():
        level = K.KEYS[key].level if key in K.KEYS else None
        if key == K.EDGE_INDEX:
            out[key] = inverse[value][:, edge_perm]
        elif level == "atom" and value.shape[:1] == (n_atoms,):
            out[key] = value[perm]
        elif level == "edge":
            out[key] = value[edge_perm]
        else:
            out[key] = value
    return out, perm


def split_batch(batch: Batch) -> List[Batch]:
    """One-frame batches of a collated batch (atoms re-indexed from 0, BATCH = 0)."""
    frame_of_atom = batch[K.BATCH]
    n_frames = batch[K.CELL].shape[0]
    frames = []
    for f in range(n_frames):  # test tool: a loop over frames is fine
        atoms = torch.nonzero(frame_of_atom == f).squeeze(1)
        renumber = torch.full((len(frame_of_atom),), -1, dtype=torch.long)
        renumber[atoms] = torch.arange(len(atoms))
        edges = torch.nonzero(frame_of_atom[batch[K.EDGE_INDEX][0]] == f).squeeze(1) if K.EDGE_INDEX in batch else None
        one = {}
        for key, value in batch.items():
            level = K.KEYS[key].level if key in K.KEYS else None
            if key == K.EDGE_INDEX:
                one[key] = renumber[value[:, edges]]
            elif key == K.BATCH:
                one[key] = torch.zeros(len(atoms), dtype=value.dtype)
            elif key == K.PTR:
                one[key] = torch.tensor([0, len(atoms)], dtype=value.dtype)
            elif level == "atom":
                one[key] = value[atoms]
            elif level == "edge":
                one[key] = value[edges]
            elif level == "frame" or key.endswith("_weight"):
                one[key] = value[f : f + 1]
            else:
                one[key] = value
        frames.append(one)
    return frames


def _outputs(model, batch: Batch, keys: Iterable[str], derivatives: bool) -> Batch:
    if derivatives:
        out = compute_derivatives(model, batch, forces=True)
    else:
        with torch.no_grad():
            out = model(batch)
    return {k: out[k].detach() for k in keys}


def assert_invariant(model, batch: Batch, keys: Sequence[str] = (K.ENERGY, K.ATOM_ENERGY), *, rotation: bool = True,
                     translation: bool = True, permutation: bool = True, forces: bool = True,
                     atol: float = 1e-8, rtol: float = 1e-6, seed: int = 0) -> None:
    """Invariant outputs ``keys`` do not change under rotation, translation or permutation.

    With ``forces`` the forces are checked too: they rotate as vectors and permute with the atoms.
    """
    wanted = list(keys) + ([K.FORCES] if forces else [])
    reference = _outputs(model, batch, wanted, forces)
    if rotation:
        rot = random_rotation(torch.float64, seed)
        out = _outputs(model, rotate_batch(batch, rot), wanted, forces)
        for key in keys:
            torch.testing.assert_close(out[key], reference[key], atol=atol, rtol=rtol)
        if forces:
            torch.testing.assert_close(out[K.FORCES], reference[K.FORCES] @ rot.to(out[K.FORCES].dtype).T, atol=atol, rtol=rtol)
    if translation:
        out = _outputs(model, translate_batch(batch, [0.37, -1.21, 2.5]), wanted, forces)
        for key in wanted:
            torch.testing.assert_close(out[key], reference[key], atol=atol, rtol=rtol)
    if permutation:
        permuted, perm = permute_batch(batch, seed)
        out = _outputs(model, permuted, wanted, forces)
        n_atoms = len(batch[K.BATCH])
        for key in wanted:
            expected = reference[key][perm] if reference[key].shape[:1] == (n_atoms,) and key in K.KEYS and K.KEYS[key].level == "atom" else reference[key]
            torch.testing.assert_close(out[key], expected, atol=atol, rtol=rtol)


def _assert_rotates(model, batch, key, transform: Callable, atol, rtol, seed) -> None:
    with torch.no_grad():
        reference = model(batch)[key].detach()
        rot = random_rotation(torch.float64, seed)
        rotated = model(rotate_batch(batch, rot))[key].detach()
    torch.testing.assert_close(rotated, transform(reference, rot.to(reference.dtype)), atol=atol, rtol=rtol)


def assert_equivariant_vector(model, batch: Batch, key: str, *, atol: float = 1e-8, rtol: float = 1e-6, seed: int = 0) -> None:
    """Output ``key`` (..., 3) rotates as a vector: v(R r) = R v(r)."""
    _assert_rotates(model, batch, key, lambda v, rot: v @ rot.T, atol, rtol, seed)


def assert_equivariant_tensor(model, batch: Batch, key: str, *, atol: float = 1e-8, rtol: float = 1e-6, seed: int = 0) -> None:
    """Output ``key`` (..., 3, 3) rotates as a rank-2 tensor: T(R r) = R T(r) R^T."""
    _assert_rotates(model, batch, key, lambda t, rot: rot @ t @ rot.T, atol, rtol, seed)


def assert_batch_consistent(model, batch: Batch, keys: Sequence[str] = (K.ENERGY, K.ATOM_ENERGY), *, forces: bool = True,
                            atol: float = 1e-8, rtol: float = 1e-6) -> None:
    """Evaluating the batch equals evaluating its frames one at a time (and concatenating)."""
    wanted = list(keys) + ([K.FORCES] if forces else [])
    together = _outputs(model, batch, wanted, forces)
    singles = [_outputs(model, one, wanted, forces) for one in split_batch(batch)]
    for key in wanted:
        torch.testing.assert_close(together[key], torch.cat([s[key] for s in singles]), atol=atol, rtol=rtol)


def assert_excluded_pair_decoupled(descriptor, batch: Batch, *, shielded_type: int = 0, moved_type: int = 1,
                                   min_change: float = 1e-8) -> None:
    """With ``exclude_types`` [[shielded_type, moved_type]]: moving the first atom of ``moved_type``
    by 1e-3 Å (crossing no cutoff) leaves the descriptors of every ``shielded_type`` atom unchanged
    and changes those of the other atoms by more than ``min_change``."""
    from mlpot.models.base import edge_vectors

    types = batch[K.ATOM_TYPES]
    before, _ = descriptor(batch, edge_vectors(batch))
    moved = dict(batch)
    positions = batch[K.POSITIONS].clone()
    positions[int(torch.nonzero(types == moved_type)[0])] += 1e-3
    moved[K.POSITIONS] = positions
    after, _ = descriptor(moved, edge_vectors(moved))
    shielded = types == shielded_type
    torch.testing.assert_close(before[shielded], after[shielded])
    assert float((before[~shielded] - after[~shielded]).abs().max()) > min_change


def random_batch(n_frames: int = 2, n_atoms: Sequence[int] | int = 8, n_types: int = 2, *, cutoff: float = 3.5,
                 box: Sequence[float] | float = 5.0, periodic: bool = True, triclinic: bool = True, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> Batch:
    """A small collated batch of random structures for model tests.

    Atoms sit on a jittered grid (no pair closer than ~0.8 Å for the default sizes) in a box of
    edge ``box`` Å (skewed when ``triclinic``); neighbour lists at ``cutoff`` Å come from the data
    layer. Frames may have different sizes (``n_atoms`` as a list) and boxes (``box`` as a list).
    """
    import numpy as np

    from mlpot.data import AtomsDataset, collate

    rng = np.random.default_rng(seed)
    sizes = [n_atoms] * n_frames if isinstance(n_atoms, int) else list(n_atoms)
    boxes = [float(box)] * len(sizes) if isinstance(box, (int, float)) else [float(b) for b in box]
    frames = []
    for size, box in zip(sizes, boxes):
        per_side = int(np.ceil(size ** (1 / 3)))
        grid = np.stack(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        picked = grid[rng.permutation(len(grid))[:size]]
        fractional = (picked + 0.5 + rng.uniform(-0.2, 0.2, picked.shape)) / per_side
        cell = np.eye(3) * box
        if triclinic:
            cell = cell + rng.uniform(-0.15, 0.15, (3, 3)) * box * (1 - np.eye(3))
        frames.append({
            K.POSITIONS: fractional @ cell,
            K.CELL: cell if periodic else np.zeros((3, 3)),
            K.PBC: np.array([periodic] * 3),
            K.ATOM_TYPES: rng.integers(0, n_types, size).astype(np.int64),
        })
    dataset = AtomsDataset(frames, cutoff, type_map=[f"T{t}" for t in range(n_types)])
    return collate([dataset[i] for i in range(len(frames))], dtype=dtype)
