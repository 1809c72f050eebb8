"""Overhead of the training loop: ``Trainer.train_step`` vs a bare forward/backward/step.

Both run the same small se_e2_a model on the same 16-atom EMT CuAu frames (generated here) with
the DeePMD energy+force loss. The bare loop uses pre-collated batches and does only
predict -> loss -> backward -> Adam step; the trainer adds sampling, collation, lr-coupled
prefactors, the debug-log line, per-batch metrics and the scheduler. Prints ms per step.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/training_loop.py [--steps 200]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_training_trainer import base_config, make_dataset, write_config  # noqa: E402

from mlpot.config import load_config  # noqa: E402
from mlpot.training.trainer import Trainer, predict  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    make_dataset(folder)
    config = base_config(numb_steps=10 * args.steps)
    config["logging"]["disp_freq"] = 10 * args.steps
    config["data"]["valid"]["batch_size"] = 16
    trainer = Trainer(load_config(write_config(folder / "run", config, folder)), progress=False)
    trainer._enter_stage(0)
    trainer._open_logs()
    batches = [trainer.data.train_batch([2 * i, 2 * i + 1]) for i in range(4)]
    model, loss, opt = trainer.model, trainer.loss, trainer.optimizer

    def bare(n):
        for i in range(n):
            batch = batches[i % len(batches)]
            pred = predict(model, batch, loss.labels, create_graph=True)
            total, _, _ = loss(pred, batch, 0.5)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

    def loop(n):
        for _ in range(n):
            trainer.train_step(metrics=False)

    for name, fn in (("bare forward/backward/step", bare), ("Trainer.train_step", loop)):
        fn(10)  # warm-up
        start = time.perf_counter()
        fn(args.steps)
        per_step = (time.perf_counter() - start) / args.steps
        print(f"{name:30s} {1e3 * per_step:8.2f} ms/step")
    trainer._close_logs()


if __name__ == "__main__":
    main()
