"""``mlpot package build MODEL OUTPUT [--modifiers ...]`` and ``mlpot package info FILE`` (NequIP's
``nequip-package`` workflow).

``build`` writes a self-contained model file: the frozen format of ``mlpot freeze`` (model config
and weights only, no code; ``mlpot.calculators.load_model``, ``mlpot test`` and the ASE calculator
read it) with the persistent model modifiers applied (NequIP ``modify_PerTypeScaleShift``,
``enable|disable_ForceStressOutput``; a modifier is a name or a YAML mapping such as
``'{modifier: modify_PerTypeScaleShift, shifts: {O: -93.5}}'``) and package metadata: type names,
cutoff, model dtype, whether it computes forces (``energy_derivatives``), the modifiers, the versions of mlpot, torch and
e3nn, and the source. MODEL is a training checkpoint, a frozen model, or a NequIP ``.ckpt`` /
``.nequip.zip`` (read without running code from it). ``info`` prints the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="write a self-contained model file")
    build.add_argument("model", type=Path, help="checkpoint, frozen model, NequIP .ckpt or .nequip.zip")
    build.add_argument("output", type=Path, help="model file to write")
    build.add_argument("--modifiers", nargs="*", default=[], help="persistent model modifiers (names or YAML mappings)")
    build.add_argument("--head", default=None, help="task of a multi-task checkpoint")
    info = sub.add_parser("info", help="print the metadata of a packaged model")
    info.add_argument("file", type=Path)


def parse_modifiers(words):
    """Modifier names or YAML mappings of the command line as the model family takes them."""
    import yaml

    out = []
    for word in words:
        value = yaml.safe_load(word)
        out.append(value if isinstance(value, dict) else {"modifier": str(value)})
    return out


def run(args) -> int:
    import e3nn
    import torch

    from mlpot import __version__
    from mlpot.calculators.export import freeze, read_model_file

    if args.action == "info":
        payload = read_model_file(args.file)
        print(json.dumps({"dtype": payload.get("dtype"), **(payload.get("metadata") or {})}, indent=2, default=str))
        return 0
    modifiers = parse_modifiers(args.modifiers)
    package = {"format": "mlpot-package", "modifiers": modifiers,
               "versions": {"mlpot": __version__, "torch": str(torch.__version__), "e3nn": str(e3nn.__version__)}}
    metadata = freeze(args.model, args.output, head=args.head, modifiers=modifiers, extra_metadata={"package": package})
    print(f"packaged {args.model} into {args.output}: type_map {metadata['type_map']}, cutoff {metadata['cutoff']} Å, "
          f"{metadata['num_parameters']} parameters, modifiers {[m['modifier'] for m in modifiers]}")
    return 0
