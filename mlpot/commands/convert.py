"""``mlpot convert CONFIG -o native.yaml``: turn a peer config into the native YAML.

The peer format is detected from the file (DeePMD-kit ``input.json``/``.yaml`` for now; front-ends
of the other families plug in here as they land). The written YAML is validated against the native
schema before it is written, so a converted file always loads with ``mlpot train native.yaml``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from mlpot.errors import ConfigError


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="peer config file (DeePMD input.json / input.yaml)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="native YAML to write (default: stdout)")


def convert_file(path: Path) -> dict:
    """The native config dict of a peer config file (format detected from its content)."""
    from mlpot.config import deepmd, macescf

    if deepmd.is_deepmd_config(path):
        return deepmd.convert(path)
    if macescf.is_macescf_config(path):
        native, notes = macescf.convert_run_train([], str(path))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return native
    raise ConfigError(
        "not a recognised peer config (expected a DeePMD-kit input with model/descriptor and "
        "training/training_data, or a MACE-SCF config.yaml with heads and train_schedule)", file=str(path),
    )


def run(args) -> int:
    from mlpot.config import validate_config

    native = convert_file(args.config)
    validate_config(native, file=str(args.config))
    text = yaml.safe_dump(native, sort_keys=False, default_flow_style=None)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0
