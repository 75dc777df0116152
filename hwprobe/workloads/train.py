"""``python -m hwprobe.workloads train``: train the minGRU language model for a while and save it.

Prints a progress line about once a second (format in :mod:`hwprobe.workloads`), saves the
model to ``--out`` when the time is up or on SIGTERM/SIGINT (the checkpoint a preempted job
resumes from with ``--resume``), and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from hwprobe.workloads import mingru, progress_line

DEFAULT_TEXT = Path(__file__).parent / "texts" / "coriolanus.txt"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hwprobe.workloads train", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="how long to train (0: until stopped)")
    p.add_argument("--out", default="mingru.npz", help="where to save the model (.npz)")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.add_argument("--data", default=str(DEFAULT_TEXT), help="UTF-8 text to learn (default: the shipped one)")
    p.add_argument("--dim", type=int, default=64, help="width of the residual stream")
    p.add_argument("--hidden", type=int, default=128, help="width of each layer's state")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 32; 256 on a GPU)")
    p.add_argument("--seq", type=int, default=64, help="characters per sequence")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--device",
        choices=("auto", "numpy", "cuda"),
        default="auto",
        help="auto: PyTorch on the GPU when installed and a GPU is visible, else numpy",
    )
    p.add_argument("--report-every", type=float, default=1.0, help="seconds between progress lines")
    return p


def main(argv: list[str] | None = None) -> int:
    """Train until ``--seconds`` pass or a signal arrives; returns the exit status."""
    args = _parser().parse_args(argv)
    text = Path(args.data).read_text(encoding="utf-8")
    out = Path(args.out)
    extra: dict[str, np.ndarray] = {}
    if args.resume and out.exists():
        params, cfg, extra = mingru.load(out)
        print(f"resuming from {out}", flush=True)
    else:
        cfg = mingru.Config("".join(sorted(set(text))), args.dim, args.hidden, args.layers)
        params = mingru.init_params(cfg, args.seed)
    data = np.array(mingru.encode(cfg, text), dtype=np.int64)
    if len(data) < args.seq + 2:
        print(f"the text has {len(data)} usable characters; it needs more than --seq {args.seq}", file=sys.stderr)
        return 2

    use_cuda = args.device == "cuda" or (args.device == "auto" and mingru.torch_cuda())
    if args.device == "cuda" and not mingru.torch_cuda():
        print("--device cuda: PyTorch with a visible GPU is needed", file=sys.stderr)
        return 2
    batch = args.batch or (256 if use_cuda else 32)
    if use_cuda:
        trainer = mingru.TorchTrainer(params, cfg, args.lr)
        trainer.load_state(extra)
        step_fn = trainer.step
    else:
        adam = mingru.Adam(params, lr=args.lr)
        adam.load_state(extra)

        def step_fn(idx: np.ndarray, targets: np.ndarray) -> float:
            loss, grads = mingru.loss_and_grads(params, cfg, idx, targets)
            mingru.clip(grads)
            adam.step(params, grads)
            return loss

    print(
        f"training a minGRU ({cfg.layers} layers, {cfg.hidden} state, {len(cfg.vocab)} characters) "
        f"on {'cuda (PyTorch)' if use_cuda else 'cpu (numpy)'}, batch {batch} x {args.seq}",
        flush=True,
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rng = np.random.default_rng(args.seed + int(extra.get("adam.t", 0)))
    offsets = np.arange(args.seq + 1)
    start = last_report = time.monotonic()
    step = tokens = since_tokens = 0
    since_loss, since_steps = 0.0, 0
    reported_loss = float("nan")
    while not stop.is_set():
        now = time.monotonic()
        if args.seconds and now - start >= args.seconds:
            break
        starts = rng.integers(0, len(data) - args.seq - 1, batch)
        window = data[starts[:, None] + offsets]
        loss = step_fn(window[:, :-1], window[:, 1:])
        step += 1
        tokens += batch * args.seq
        since_tokens += batch * args.seq
        since_loss += loss
        since_steps += 1
        now = time.monotonic()
        if now - last_report >= args.report_every:
            reported_loss = since_loss / since_steps
            print(
                progress_line(
                    "train",
                    step=step,
                    tokens=tokens,
                    elapsed_s=now - start,
                    tokens_per_s=since_tokens / (now - last_report),
                    loss=reported_loss,
                ),
                flush=True,
            )
            last_report, since_tokens, since_loss, since_steps = now, 0, 0.0, 0

    if use_cuda:
        params, state = trainer.params(), trainer.state()
    else:
        state = adam.state()
    mingru.save(out, params, cfg, state)
    elapsed = time.monotonic() - start
    mean_loss = since_loss / since_steps if since_steps else reported_loss
    print(f"saved the model to {out}", flush=True)
    print(
        progress_line(
            "train",
            step=step,
            tokens=tokens,
            elapsed_s=elapsed,
            tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
            loss=mean_loss,
            final=1,
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
