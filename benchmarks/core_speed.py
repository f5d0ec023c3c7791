"""Forward + backward time per sequence of rimrl's cores, as ratios to ``torch.nn.LSTM``.

Every core sees the same ``(T, B, input)`` batch in one process. All cores and the reference
``torch.nn.LSTM`` (one per input size) are timed in interleaved rounds, each once per round; a
core's ratio is the median over rounds of its time over the same round's reference time, so drift
on a shared machine cancels. The ratio of the fastest times is printed beside it.

    python -m benchmarks.core_speed                 # T=64, B=64, input 256, hidden 384, 6 units, k=4
                                                    # (+ SRM on 49 tokens of 16: input 784)
    python -m benchmarks.core_speed --threads 2 --json benchmarks/out/core_speed.json
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._common import interleaved_seconds, machine_info, print_table, write_json
from rimrl.cores import make_core


def core_factories(args: argparse.Namespace) -> list[tuple[str, int, Callable[[], nn.Module]]]:
    """``(label, num_tokens, factory)`` for every core under test."""
    rim = {"num_units": args.units, "k": args.k}
    srm = {"num_modules": args.units}  # SRM's default cells are LSTMs
    # SRM on a 7x7 grid of tokens (a MiniGrid view / CNN feature map), compared with an nn.LSTM
    # that reads the same 49 * grid_token_dim inputs flattened.
    grid = torch.cartesian_prod(torch.linspace(-1.0, 1.0, 7), torch.linspace(-1.0, 1.0, 7))
    grid_input = 49 * args.grid_token_dim
    return [
        ("rimrl LSTM", 1, lambda: make_core("lstm", args.input, args.hidden)),
        ("rimrl GRU", 1, lambda: make_core("gru", args.input, args.hidden)),
        ("RIM (lstm cells)", 1, lambda: make_core("rim", args.input, args.hidden, cell="lstm", **rim)),
        ("RIM (gru cells)", 1, lambda: make_core("rim", args.input, args.hidden, cell="gru", **rim)),
        ("SRM (gru cells)", 1, lambda: make_core("srm", args.input, args.hidden, cell="gru", **srm)),
        ("SRM (lstm cells)", 1, lambda: make_core("srm", args.input, args.hidden, cell="lstm", **srm)),
        ("SRM (lstm cells, top-k)", 1, lambda: make_core("srm", args.input, args.hidden, k=args.k, **srm)),
        (
            f"SRM (lstm cells, 7x7 grid, input {grid_input})",
            49,
            lambda: make_core("srm", grid_input, args.hidden, num_tokens=49, token_positions=grid, **srm),
        ),
    ]


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training-mode forward + backward of ``module`` on ``x`` (a mean-square loss)."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        out = module(x)[0]
        out.pow(2).mean().backward()

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--input", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--units", type=int, default=6)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--grid-token-dim", type=int, default=16, help="token size of the 49-token SRM row (MiniGrid encoder: 16)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    # One input batch and one reference nn.LSTM per input size (the grid rows read more inputs).
    inputs: dict[int, tuple[torch.Tensor, nn.LSTM]] = {}

    def batch_and_reference(input_size: int) -> tuple[torch.Tensor, nn.LSTM]:
        if input_size not in inputs:
            inputs[input_size] = (torch.randn(args.seq_len, args.batch, input_size), nn.LSTM(input_size, args.hidden))
        return inputs[input_size]

    batch_and_reference(args.input)
    cores = [(label, num_tokens, factory().train()) for label, num_tokens, factory in core_factories(args)]
    for _, _, core in cores:
        batch_and_reference(core.input_size)
    steps = {f"ref:{size}": fwd_bwd(ref, x) for size, (x, ref) in inputs.items()}
    steps.update({label: fwd_bwd(core, batch_and_reference(core.input_size)[0]) for label, _, core in cores})
    times = interleaved_seconds(steps, args.repeats)
    rows, results = [], []
    for label, num_tokens, core in cores:
        core_times, ref_times = times[label], times[f"ref:{core.input_size}"]
        ratio = statistics.median(c / r for c, r in zip(core_times, ref_times, strict=True))
        best_ratio = min(core_times) / min(ref_times)
        rows.append([label, num_tokens, min(core_times) * 1e3, min(ref_times) * 1e3, ratio, best_ratio])
        results.append({"core": label, "num_tokens": num_tokens, "input_size": core.input_size,
                        "seconds": core_times, "lstm_seconds": ref_times, "ratio": ratio, "best_ratio": best_ratio})
    print_table(
        f"forward+backward per sequence, T={args.seq_len} B={args.batch} input={args.input} "
        f"hidden={args.hidden} ({args.threads} thread(s))",
        ["core", "tokens", "best ms", "nn.LSTM best ms", "ratio to nn.LSTM (median of rounds)", "ratio of best times"],
        rows,
    )
    write_json(args.json, {"args": vars(args), "machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
