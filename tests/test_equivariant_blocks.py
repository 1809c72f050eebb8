"""The equivariant building blocks NequIP and MACE share, and the two implementations kept of one
contraction pinned together (DESIGN habit 14).

* NequIP's pair-wise ``EdgeTensorProductScatter`` (flat layout, mixed multiplicities, both edge
  directions per pair) and MACE's padded-slot ``ChannelwiseTensorProduct`` (channels-last) give the
  same uvu convolution on the same features, harmonics and weights, with the same path order;
* the channels-last layout of the shared ``IrrepsLinear`` / ``TypeSelfConnection`` (MACE's
  ``ChannelLinear`` / ``ElementLinear``) equals their flat layout (NequIP's), and ``ElementLinear``
  is ``TypeSelfConnection`` with one-hot attributes;
* one ZBL kernel: NequIP's and MACE's ZBL terms are the kernel of ``mlpot.models.pair`` with each
  family's constants and envelope;
* one restricted unpickler: the per-family allow-lists of ``mlpot.models.safe_pickle``.
"""

import pickle
import zipfile

import pytest
import torch
from e3nn import o3

from mlpot.errors import CheckpointError
from mlpot.models.equivariant.blocks import EdgeTensorProductScatter, IrrepsLinear, TypeSelfConnection
from mlpot.models.equivariant.mace.linear import ChannelLinear, ElementLinear, irreps_of, to_flat
from mlpot.models.equivariant.mace.neighbours import PaddedEdges
from mlpot.models.equivariant.mace.tensor_product import ChannelwiseTensorProduct
from mlpot.models.equivariant.mace.zbl import ZBLRepulsion
from mlpot.models.equivariant.nequip.zbl import ZBL
from mlpot.models.pair import ZBL_MACE, ZBL_UNIVERSAL, zbl_pair_energy
from mlpot.models.safe_pickle import AllowList, PickledObject, load_archive_pickle, module_state

F64 = torch.float64
IR = lambda text: [o3.Irrep(ir) for ir in text.split()]  # noqa: E731


@pytest.mark.parametrize("blocks_in, l_max, target", [("0e 1o", 2, "0e 1o 2e"), ("0e 0o 1o 1e 2e", 2, "0e 0o 1o 1e 2e 2o"),
                                                      ("0e", 3, "0e 1o 2e 3o")])
def test_nequip_and_mace_tensor_products_agree(blocks_in, l_max, target):
    channels, n, n_edges = 3, 6, 25
    blocks_in, target = IR(blocks_in), IR(target)
    sh_irreps = o3.Irreps.spherical_harmonics(l_max)
    mace = ChannelwiseTensorProduct(blocks_in, channels, [ir for _, ir in sh_irreps], target, F64)
    nequip = EdgeTensorProductScatter(irreps_of(channels, blocks_in), sh_irreps, irreps_of(channels, target), constant_l0=True)
    assert [ir for _, ir in nequip.irreps_mid] == mace.blocks_out  # the same paths in the same order
    generator = torch.Generator().manual_seed(3)
    h = torch.randn(n, sum(ir.dim for ir in blocks_in), channels, dtype=F64, generator=generator)
    vectors = torch.randn(n_edges, 3, dtype=F64, generator=generator)
    sh = o3.spherical_harmonics(sh_irreps, vectors, True, normalization="component")
    weights = torch.randn(n_edges, mace.weight_numel, dtype=F64, generator=generator)  # MACE: (path, channel) in path order
    centre, neighbour = torch.randint(0, n, (2, n_edges), generator=generator)
    edges = PaddedEdges(centre, neighbour, n)
    by_mace = to_flat(mace(h, edges.pad(sh), edges.pad(weights), edges), mace.blocks_out)
    # NequIP's e3nn weight layout follows its instruction (creation) order; MACE's the sorted path order
    order = [k for _, _, k in nequip.instructions]
    e3nn_weights = weights.view(n_edges, -1, channels)[:, order].reshape(n_edges, -1)
    by_nequip = nequip(to_flat(h, blocks_in), sh, nequip.e3nn_weights(e3nn_weights), centre, neighbour)
    torch.testing.assert_close(by_nequip, by_mace, atol=1e-12, rtol=0)


def test_channels_last_linear_maps_equal_the_flat_ones():
    blocks_in, blocks_out, c_in, c_out = IR("0e 1o 1o 2e"), IR("0e 1o 2e 1e"), 4, 5
    channels_last = ChannelLinear(blocks_in, c_in, blocks_out, c_out, F64)
    flat = IrrepsLinear(irreps_of(c_in, blocks_in), irreps_of(c_out, blocks_out), dtype=F64)
    flat.weight.data.copy_(channels_last.weight.data)
    x = torch.randn(7, sum(ir.dim for ir in blocks_in), c_in, dtype=F64)
    torch.testing.assert_close(to_flat(channels_last(x), blocks_out), flat(to_flat(x, blocks_in)), atol=1e-13, rtol=0)
    element = ElementLinear(blocks_in, c_in, 3, blocks_out, c_out, F64)
    per_type = TypeSelfConnection(irreps_of(c_in, blocks_in), 3, irreps_of(c_out, blocks_out), dtype=F64)
    per_type.weight.data.copy_(element.weight.data)
    types = torch.tensor([0, 0, 1, 2, 2, 2, 2])
    one_hot = torch.eye(3, dtype=F64)
    torch.testing.assert_close(to_flat(element(x, [2, 1, 4]), blocks_out), per_type(to_flat(x, blocks_in), types, one_hot),
                               atol=1e-13, rtol=0)
    reference = o3.FullyConnectedTensorProduct(irreps_of(c_in, blocks_in), "3x0e", irreps_of(c_out, blocks_out)).to(F64)
    reference.weight.data.copy_(element.weight.data)
    torch.testing.assert_close(per_type(to_flat(x, blocks_in), types, one_hot), reference(to_flat(x, blocks_in), one_hot[types]),
                               atol=1e-13, rtol=0)


@pytest.mark.parametrize("r", [0.5, 0.8, 1.3])
def test_both_zbl_terms_are_the_shared_kernel(r):
    z_h, z_o = torch.tensor([1.0], dtype=F64), torch.tensor([8.0], dtype=F64)
    distance = torch.tensor([r], dtype=F64)
    universal = zbl_pair_energy(distance, z_h, z_o, 14.399645, ZBL_UNIVERSAL)
    nequip = ZBL(["H", "O"], "metal", 6.0)(distance, distance / 4.0, torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([1]),
                                          both_directions=True)
    envelope = 1 - 28 * (r / 4) ** 6 + 48 * (r / 4) ** 7 - 21 * (r / 4) ** 8
    torch.testing.assert_close(nequip.sum(), universal[0] * envelope, rtol=1e-13, atol=0)
    mace_kernel = zbl_pair_energy(distance, z_h, z_o, 14.3996, ZBL_MACE)
    edges = torch.tensor([0, 1]), torch.tensor([1, 0])
    mace = ZBLRepulsion([1, 8], 5, F64)(distance.repeat(2), *edges, edges[0], 2)
    x = r / (0.31 + 0.66)  # ASE covalent radii of H and O
    envelope = (1 - 21 * x ** 5 + 35 * x ** 6 - 15 * x ** 7) * (x < 1)
    torch.testing.assert_close(mace.sum(), mace_kernel[0] * envelope, rtol=1e-13, atol=0)
    # mace-torch's variant screens differently (Z^0.3, a_0 = 0.4543 * 0.529 Å): its own constants, one kernel
    assert not torch.allclose(mace_kernel, universal * 14.3996 / 14.399645, rtol=1e-2)


class _Payload:
    def __reduce__(self):
        import os

        return os.system, ("true",)


def _archive(tmp_path, obj, name="a.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    archive = zipfile.ZipFile(path)
    root = archive.namelist()[0].split("/")[0]
    return archive, root


def test_restricted_unpickler_records_allowed_classes_only(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(2, 3))
    module.register_buffer("table", torch.arange(3.0), persistent=False)
    archive, root = _archive(tmp_path, module)
    allow = AllowList(packages=("torch.nn.modules",))
    tree = load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", "a.pt", allow)
    assert isinstance(tree, PickledObject) and tree.qualname == "torch.nn.modules.container.Sequential"
    state = module_state(tree, "a.pt", persistent_only=True)
    assert set(state) == set(module.state_dict()) == {"0.weight", "0.bias"}
    torch.testing.assert_close(state["0.weight"], module[0].weight.detach())
    assert "table" in module_state(tree, "a.pt")  # every buffer without persistent_only
    with pytest.raises(CheckpointError, match=r"a\.pt: refusing to unpickle the global torch\.nn\.modules\.container\.Sequential"):
        load_archive_pickle(archive, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", "a.pt", AllowList())
    evil, root = _archive(tmp_path, {"x": _Payload()}, "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil\.pt: refusing to unpickle the global (posix|os)\.system"):
        load_archive_pickle(evil, f"{root}/data.pkl", lambda key: f"{root}/data/{key}", "evil.pt", allow)
    assert pickle.dumps(1)  # the standard pickle module is untouched
