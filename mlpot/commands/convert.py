"""``mlpot convert CONFIG -o native.yaml``: turn a peer config into the native YAML.

The peer format is detected from the file (DeePMD-kit ``input.json``/``.yaml``, a NequIP 0.19 YAML,
a YAML of mace_run_train options, or a DeePseudopot inputs folder holding ``NN_config.par``; front-ends of the
other families plug in here as they land). Relative paths of a mace_run_train YAML stay relative to
the current folder, as mace_run_train reads them. The written YAML is validated against the native
schema before it is written, so a converted file always loads with ``mlpot train native.yaml``
(``mlpot bands fit native.yaml RESULTS`` for bands).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import yaml

from mlpot.errors import ConfigError, KeyMap, in_file


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="peer config (DeePMD input.json / input.yaml, DeePseudopot inputs folder)")
    parser.add_argument("-o", "--output", type=Path, default=None, help="native YAML to write (default: stdout)")


def convert_file(path: Path, keys: Optional[KeyMap] = None) -> dict:
    """The native config dict of a peer config file (format detected from its content).

    A missing, empty or malformed file is an error saying so (line and column of a syntax error).
    ``keys``, when given, receives the translations native key -> the key as written in the file
    (DeePMD inputs).
    """
    from mlpot.config import deepmd, mace, macescf, nequip, read_yaml

    content = read_yaml(path, finite=False)  # the values are checked by the front-end's own read
    if deepmd.is_deepmd_config(content):
        return deepmd.convert(path, keys=keys)
    if nequip.is_nequip_config(content):
        native, notes, _ = nequip.convert(path)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return native
    if macescf.is_macescf_config(path):
        native, notes = macescf.convert_run_train([], str(path))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return native
    if mace.is_mace_config(path):
        return mace.MaceFrontEnd.from_sources(path).to_native()
    raise ConfigError(
        "not a recognised peer config (expected a DeePMD-kit input with model/descriptor and "
        "training/training_data, a NequIP config with run, data, trainer and training_module, or a MACE-SCF "
        "config.yaml with heads and train_schedule, or a YAML of mace_run_train options with train_file)", file=str(path),
    )


def run(args) -> int:
    from mlpot.config import deepseudopot, validate_config

    if deepseudopot.is_deepseudopot_inputs(args.config):  # band fitting has its own native schema
        from mlpot.bands.native import bands_config_to_yaml

        config, notes = deepseudopot.convert(args.config)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        text = bands_config_to_yaml(config)
    else:
        keys = KeyMap()
        with in_file(args.config, keys):
            native = convert_file(args.config, keys)
            validate_config(native, file=str(args.config))
        text = yaml.safe_dump(native, sort_keys=False, default_flow_style=None)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
        print(f"wrote {args.output}")
    return 0
