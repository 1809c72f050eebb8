"""``mlpot change-bias MODEL (-s SYSTEM... | -f DATAFILE | -b V1 V2 ...) [-n N] [-m change|set] [-o OUT] [--model-branch B]``.

As ``dp change-bias`` (DeePMD-kit 3.x): change the energy output bias of a trained model.

* ``-m change`` (default, change-by-statistic): predict the systems' energies, fit the residual
  (label - prediction) per type by least squares and add it to the bias;
* ``-m set`` (set-by-statistic): the least-squares per-type fit of the raw labels becomes the bias;
* ``-b``: the user's bias per type (eV, in the model's type_map order).

``-n`` is the number of frames used from each system (0, the default: all). The output is a file
of the same kind as MODEL (frozen model or training checkpoint; a multi-task checkpoint keeps every
head and changes the one named by ``--model-branch``); the default name is MODEL with
``_updated`` before the suffix. The old and new biases are printed.
"""

from __future__ import annotations

from pathlib import Path

from mlpot.errors import ConfigError

FRAMES_PER_BATCH = 8  # frames per prediction batch (memory bound only)


def add_arguments(parser) -> None:
    parser.add_argument("model", type=Path, help="frozen model or training checkpoint")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("-s", "--system", nargs="+", default=None, help="data systems (any mlpot data format)")
    source.add_argument("-f", "--datafile", type=Path, default=None, help="text file listing one system per line")
    source.add_argument("-b", "--bias-value", nargs="+", type=float, default=None,
                        help="energy bias per type (eV), in the model's type_map order")
    parser.add_argument("-n", "--numb-batch", type=int, default=0,
                        help="frames used from each system (0: all)")
    parser.add_argument("-m", "--mode", choices=("change", "set"), default="change",
                        help="change: add the fit of label - prediction; set: fit the raw labels")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="output file (default: MODEL with '_updated' before the suffix)")
    parser.add_argument("--model-branch", default=None, help="head of a multi-task checkpoint")


def _batches(model, paths, numb_batch: int):
    """Collated CPU batches (neighbour lists at the model cutoff) of the first ``numb_batch``
    frames of every system (all when 0)."""
    from mlpot.data import AtomsDataset, collate, read_systems

    batches = []
    for system in read_systems([str(p) for p in paths], type_map=list(model.type_map)):
        count = len(system) if numb_batch <= 0 else min(numb_batch, len(system))
        dataset = AtomsDataset(system, float(model.cutoff), type_map=list(model.type_map))
        for start in range(0, count, FRAMES_PER_BATCH):
            batches.append(collate([dataset[i] for i in range(start, min(count, start + FRAMES_PER_BATCH))]))
    return batches


def _systems(args):
    if args.system is not None:
        return args.system
    if not args.datafile.is_file():
        raise ConfigError("no such file", file=str(args.datafile), key="--datafile")
    lines = [line.strip() for line in args.datafile.read_text().splitlines()]
    systems = [line for line in lines if line and not line.startswith("#")]
    if not systems:
        raise ConfigError("lists no system", file=str(args.datafile), key="--datafile")
    return systems


def run(args) -> int:
    from mlpot.calculators.export import FROZEN_FORMAT, load_model, read_model_file, save_frozen, select_head
    from mlpot.models.output_bias import change_energy_bias

    file = str(args.model)
    payload = read_model_file(args.model)
    whole = load_model(args.model)
    model = select_head(whole, args.model_branch, file)
    batches = None if args.bias_value is not None else _batches(model, _systems(args), args.numb_batch)
    old, new = change_energy_bias(model, batches, args.mode, values=args.bias_value, file=file)
    # the changed buffer under its name in the stored state dicts (a head's prefix in multi-task)
    handle = model.output_bias()
    key = next(name for name, buffer in whole.named_buffers() if buffer is handle.values)
    value = handle.values.detach().cpu()
    out_std_key = key[: -len("bias_atom")] + "out_std"
    out_std = handle.out_std.detach().cpu()
    if payload.get("format") == FROZEN_FORMAT:
        states = [payload["state_dict"]]
    else:
        states = [payload[k] for k in ("model_state_dict", "ema_state_dict", "model") if isinstance(payload.get(k), dict)]
    for state in states:
        state[key] = value.to(state[key].dtype).clone() if key in state else value.clone()
        if out_std_key in state:
            state[out_std_key] = out_std.to(state[out_std_key].dtype).clone()
    # (the EMA shadow of a checkpoint averages parameters only; bias_atom is a buffer)
    output = args.output or args.model.with_name(f"{args.model.stem}_updated{args.model.suffix}")
    if payload.get("format") == FROZEN_FORMAT:
        save_frozen(payload, output)
    else:
        from mlpot.training.checkpoint import save_checkpoint

        save_checkpoint(output, payload)
    how = "user values" if args.bias_value is not None else f"{args.mode}-by-statistic on {len(batches)} batches"
    names = list(model.type_map)
    print(f"energy bias of {file}{' branch ' + args.model_branch if args.model_branch else ''} ({how}), eV per atom:")
    print("  type_map: " + " ".join(names))
    print("  old:      " + " ".join(f"{v:.10g}" for v in old))
    print("  new:      " + " ".join(f"{v:.10g}" for v in new))
    print(f"wrote {output}")
    return 0
