"""The copying task of the RIMs paper (Goyal et al. 2019, section 4.1), RIM against LSTM.

A sequence shows 10 symbols drawn from 8, then ``delay`` blank steps, then a delimiter; the model
must then emit the 10 symbols. Training uses ``--train-delay`` (paper: 50); the test uses a longer
``--test-delay`` (paper: 200). The loss is cross-entropy on the 10 recalled symbols only.
Paper figures (test CE at delay 200): RIM 6 units / k = 4 / 600 hidden: 0.00; LSTM 300: 2.28;
LSTM 600: 3.56.

Every model gets the same budget (iterations x batch) and seed. On a CPU shrink the models:

    python -m benchmarks.copying --models rim:120 lstm:60 lstm:120 --iterations 1500
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from benchmarks._common import machine_info, print_table, write_json
from rimrl.cores import CORES, make_core

NUM_SYMBOLS, COPY_LENGTH = 8, 10
BLANK, DELIMITER = NUM_SYMBOLS, NUM_SYMBOLS + 1
VOCAB = NUM_SYMBOLS + 2


def copying_batch(batch: int, delay: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``(T, B)`` of token ids and targets ``(COPY_LENGTH, B)``, ``T = 2 * COPY_LENGTH + delay + 1``."""
    symbols = torch.randint(0, NUM_SYMBOLS, (COPY_LENGTH, batch), generator=generator)
    blanks = torch.full((delay, batch), BLANK)
    delimiter = torch.full((1, batch), DELIMITER)
    recall = torch.full((COPY_LENGTH, batch), BLANK)
    return torch.cat([symbols, blanks, delimiter, recall]), symbols


class CopyModel(nn.Module):
    """One-hot symbols -> core -> logits over the 8 symbols at every step."""

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core
        self.head = nn.Linear(core.hidden_size, NUM_SYMBOLS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = nn.functional.one_hot(tokens, VOCAB).float()
        out, _ = self.core(x)
        return self.head(out[-COPY_LENGTH:])  # (COPY_LENGTH, B, NUM_SYMBOLS)


def build_core(spec: str, units: int, k: int) -> nn.Module:
    """``"rim:600"`` -> a RIM with 600 hidden units in ``units`` blocks (``"srm:600"``: an SRM with
    ``units`` modules); ``"lstm:300"`` -> an LSTM."""
    name, _, size = spec.partition(":")
    hidden = int(size)
    if name == "rim":
        return make_core("rim", VOCAB, hidden, num_units=units, k=k)
    if name == "srm":
        # One token per step (the one-hot symbol) at one fixed position: every module's kernel
        # covers it, so the geometry shapes communication and k caps the active modules.
        return make_core(
            "srm", VOCAB, hidden, num_modules=units, k=k, num_tokens=1, token_positions=torch.zeros(1, 1)
        )
    if name in ("lstm", "gru"):
        return make_core(name, VOCAB, hidden)
    raise ValueError(f"model spec must be <core>:<hidden> with core in {sorted(CORES)}, got {spec!r}")


def cross_entropy(model: nn.Module, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = model(tokens)
    return nn.functional.cross_entropy(logits.reshape(-1, NUM_SYMBOLS), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, delay: int, batches: int, batch: int, seed: int) -> float:
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    losses = [cross_entropy(model, *copying_batch(batch, delay, generator)).item() for _ in range(batches)]
    model.train()
    return sum(losses) / len(losses)


def train(spec: str, args: argparse.Namespace) -> dict[str, object]:
    torch.manual_seed(args.seed)
    model = CopyModel(build_core(spec, args.units, args.k))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        loss = cross_entropy(model, *copying_batch(args.batch, args.train_delay, generator))
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if args.log_every and iteration % args.log_every == 0:
            print(f"{spec} iteration {iteration}: train CE {loss.item():.3f}", flush=True)
    seconds = time.perf_counter() - start
    return {
        "model": spec,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_ce": evaluate(model, args.train_delay, args.eval_batches, args.batch, args.seed + 1),
        "test_ce": evaluate(model, args.test_delay, args.eval_batches, args.batch, args.seed + 2),
        "train_seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["rim:600", "lstm:300", "lstm:600"])
    parser.add_argument("--units", type=int, default=6, help="RIM units (SRM modules)")
    parser.add_argument("--k", type=int, default=4, help="active units")
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-delay", type=int, default=50)
    parser.add_argument("--test-delay", type=int, default=200)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)

    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: small recurrent ops only lose from more)"
    )
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    results = [train(spec, args) for spec in args.models]
    print_table(
        f"copying: train delay {args.train_delay}, test delay {args.test_delay}, "
        f"{args.iterations} iterations x batch {args.batch}, seed {args.seed}",
        ["model", "parameters", f"train CE (delay {args.train_delay})", f"test CE (delay {args.test_delay})", "train s"],
        [[r["model"], r["parameters"], r["train_ce"], r["test_ce"], r["train_seconds"]] for r in results],
    )
    write_json(args.json, {"args": vars(args), "machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
