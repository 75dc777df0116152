"""A tiny character-level language model: a stack of minGRU layers, in numpy.

minGRU is from Feng et al., "Were RNNs All We Needed?" (2024): a GRU whose gate and candidate
depend on the input only, so that training needs no nonlinearity across time steps:

    z_t  = sigmoid(W_z x_t + b_z)              update gate
    h~_t = W_h x_t + b_h                       candidate state
    h_t  = (1 - z_t) * h_{t-1} + z_t * h~_t

Each layer adds ``h_t W_o`` to its input (a residual stream); an embedding feeds the first layer
and a linear map of the last stream gives next-character logits. Generation carries one state
vector per layer, so each new token costs the same whatever the length of the text before it.

Forward and backward passes are written by hand (the recurrence is linear in ``h``, so its
gradient is one reverse scan); :class:`Adam` updates the parameters. When PyTorch is installed
and a GPU is visible, :class:`TorchTrainer` trains the same parameters on the GPU instead.
Models are saved as ``.npz`` (no pickle): ``param.<name>`` arrays, ``vocab`` and ``dims``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DTYPE = np.float32


@dataclass(frozen=True)
class Config:
    """The model's shape: its characters, the stream width, the state width, the layer count."""

    vocab: str
    dim: int = 64
    hidden: int = 128
    layers: int = 2

    @property
    def size(self) -> int:
        return len(self.vocab)


def init_params(cfg: Config, seed: int = 0) -> dict[str, np.ndarray]:
    """Fresh parameters: small random weights, update gates biased towards remembering."""
    rng = np.random.default_rng(seed)

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(DTYPE)

    d, h, v = cfg.dim, cfg.hidden, cfg.size
    params = {"embed": normal(v, d, scale=0.5)}
    for i in range(cfg.layers):
        params[f"l{i}.wz"] = normal(d, h, scale=d**-0.5)
        params[f"l{i}.bz"] = np.full(h, -1.0, DTYPE)
        params[f"l{i}.wh"] = normal(d, h, scale=d**-0.5)
        params[f"l{i}.bh"] = np.zeros(h, DTYPE)
        params[f"l{i}.wo"] = normal(h, d, scale=0.5 * h**-0.5)
    params["out.w"] = normal(d, v, scale=d**-0.5)
    params["out.b"] = np.zeros(v, DTYPE)
    return params


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)  # no overflow warnings for large |x|


def forward(
    params: dict[str, np.ndarray],
    cfg: Config,
    idx: np.ndarray,
    state: list[np.ndarray] | None = None,
    keep: bool = False,
) -> tuple[np.ndarray, list[np.ndarray], Any]:
    """Logits (B, T, vocab) for token ids ``idx`` (B, T), the final state per layer, and (with
    ``keep``) what :func:`backward` needs. ``state`` None starts from zeros."""
    batch, steps = idx.shape
    x = params["embed"][idx]
    new_state: list[np.ndarray] = []
    cache = []
    for i in range(cfg.layers):
        z = _sigmoid(x @ params[f"l{i}.wz"] + params[f"l{i}.bz"])
        cand = x @ params[f"l{i}.wh"] + params[f"l{i}.bh"]
        keep_rate, write = 1.0 - z, z * cand
        h = np.empty_like(cand)
        prev = np.zeros((batch, cfg.hidden), DTYPE) if state is None else state[i]
        first = prev
        for t in range(steps):
            prev = keep_rate[:, t] * prev + write[:, t]
            h[:, t] = prev
        new_state.append(prev)
        if keep:
            cache.append((x, z, cand, h, first))
        x = x + h @ params[f"l{i}.wo"]
    logits = x @ params["out.w"] + params["out.b"]
    return logits, new_state, (cache, x, idx) if keep else None


def loss_and_grads(
    params: dict[str, np.ndarray], cfg: Config, idx: np.ndarray, targets: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy (nats per character) of ``targets`` given ``idx``, and its gradients."""
    logits, _, (cache, x_last, _) = forward(params, cfg, idx, keep=True)
    batch, steps, vocab = logits.shape
    n = batch * steps
    flat = logits.reshape(n, vocab)
    shifted = flat - flat.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    rows, cols = np.arange(n), targets.reshape(n)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, cols]))
    dlogits = exp / total
    dlogits[rows, cols] -= 1.0
    dlogits /= n

    d = cfg.dim
    grads: dict[str, np.ndarray] = {}
    grads["out.w"] = x_last.reshape(n, d).T @ dlogits
    grads["out.b"] = dlogits.sum(axis=0)
    dx = (dlogits @ params["out.w"].T).reshape(batch, steps, d)
    for i in reversed(range(cfg.layers)):
        x, z, cand, h, first = cache[i]
        wo = params[f"l{i}.wo"]
        grads[f"l{i}.wo"] = h.reshape(n, -1).T @ dx.reshape(n, d)
        dh = dx @ wo.T
        keep_rate = 1.0 - z
        g = np.empty_like(dh)  # dL/dh_t including what flows back from later steps
        carry = np.zeros_like(dh[:, 0])
        for t in reversed(range(steps)):
            carry = dh[:, t] + carry
            g[:, t] = carry
            carry = carry * keep_rate[:, t]
        prev = np.concatenate([first[:, None, :], h[:, :-1]], axis=1)
        dz_pre = g * (cand - prev) * z * keep_rate
        dcand = g * z
        x2 = x.reshape(n, d)
        grads[f"l{i}.wz"] = x2.T @ dz_pre.reshape(n, -1)
        grads[f"l{i}.bz"] = dz_pre.sum(axis=(0, 1))
        grads[f"l{i}.wh"] = x2.T @ dcand.reshape(n, -1)
        grads[f"l{i}.bh"] = dcand.sum(axis=(0, 1))
        dx = dx + dz_pre @ params[f"l{i}.wz"].T + dcand @ params[f"l{i}.wh"].T
    onehot = np.eye(cfg.size, dtype=DTYPE)[idx.reshape(n)]
    grads["embed"] = onehot.T @ dx.reshape(n, d)
    return loss, grads


def clip(grads: dict[str, np.ndarray], max_norm: float = 1.0) -> float:
    """Scale ``grads`` in place to a global L2 norm of at most ``max_norm``; returns the norm before."""
    norm = float(np.sqrt(sum(float(np.sum(g * g)) for g in grads.values())))
    if norm > max_norm:
        for g in grads.values():
            g *= max_norm / norm
    return norm


class Adam:
    """Adam (Kingma & Ba) over a dict of arrays, with its moments kept for checkpoints."""

    def __init__(
        self,
        params: dict[str, np.ndarray],
        lr: float = 3e-3,
        beta1: float = 0.9,
        beta2: float = 0.99,
        eps: float = 1e-8,
    ) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        c1 = 1.0 - self.beta1**self.t
        c2 = 1.0 - self.beta2**self.t
        for k, g in grads.items():
            m, v = self.m[k], self.v[k]
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            params[k] -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)

    def state(self) -> dict[str, np.ndarray]:
        out = {f"adam.m.{k}": v for k, v in self.m.items()}
        out.update({f"adam.v.{k}": v for k, v in self.v.items()})
        out["adam.t"] = np.array(self.t)
        return out

    def load_state(self, extra: dict[str, np.ndarray]) -> bool:
        """Restore moments saved by :meth:`state`; False (nothing changed) if they do not fit."""
        if "adam.t" not in extra or any(f"adam.m.{k}" not in extra for k in self.m):
            return False
        for k in self.m:
            self.m[k] = extra[f"adam.m.{k}"].astype(DTYPE)
            self.v[k] = extra[f"adam.v.{k}"].astype(DTYPE)
        self.t = int(extra["adam.t"])
        return True


# ---- text, sampling, files ------------------------------------------------------------------


def encode(cfg: Config, text: str) -> list[int]:
    """Token ids of ``text``; characters the model does not know are skipped."""
    index = {c: i for i, c in enumerate(cfg.vocab)}
    return [index[c] for c in text if c in index]


def decode(cfg: Config, ids: list[int]) -> str:
    return "".join(cfg.vocab[i] for i in ids)


def generate(
    params: dict[str, np.ndarray],
    cfg: Config,
    prompt: list[int],
    max_tokens: int,
    temperature: float = 0.8,
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Up to ``max_tokens`` new token ids after ``prompt`` (temperature 0: always the likeliest)."""
    rng = rng or np.random.default_rng()
    start = prompt or [cfg.vocab.index("\n") if "\n" in cfg.vocab else 0]
    logits, state, _ = forward(params, cfg, np.array([start]))
    last = logits[0, -1].astype(np.float64)
    out: list[int] = []
    for _ in range(max_tokens):
        if temperature <= 0:
            token = int(np.argmax(last))
        else:
            p = np.exp((last - last.max()) / temperature)
            token = int(rng.choice(cfg.size, p=p / p.sum()))
        out.append(token)
        logits, state, _ = forward(params, cfg, np.array([[token]]), state)
        last = logits[0, -1].astype(np.float64)
    return out


def save(
    path: str | Path, params: dict[str, np.ndarray], cfg: Config, extra: dict[str, np.ndarray] | None = None
) -> None:
    """Write the model (and optimiser state in ``extra``) atomically: a kill mid-write leaves
    the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrays: dict[str, Any] = {f"param.{k}": v for k, v in params.items()}
    arrays["vocab"] = np.array(cfg.vocab)
    arrays["dims"] = np.array([cfg.dim, cfg.hidden, cfg.layers])
    arrays.update(extra or {})
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def load(path: str | Path) -> tuple[dict[str, np.ndarray], Config, dict[str, np.ndarray]]:
    """(params, config, other arrays such as optimiser state) from a file written by :func:`save`."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    dim, hidden, layers = (int(v) for v in arrays.pop("dims"))
    cfg = Config(str(arrays.pop("vocab")), dim, hidden, layers)
    params = {k[len("param.") :]: v.astype(DTYPE) for k, v in arrays.items() if k.startswith("param.")}
    extra = {k: v for k, v in arrays.items() if not k.startswith("param.")}
    expected = set(init_params(Config(cfg.vocab[:1] or "x", 1, 1, layers)))
    if set(params) != expected:
        raise ValueError(f"{path} is not a minGRU model of this kind (parameters {sorted(params)})")
    return params, cfg, extra


# ---- PyTorch on a GPU, when there is one ---------------------------------------------------


def torch_cuda() -> bool:
    """True if PyTorch is installed and sees a CUDA GPU (CUDA_VISIBLE_DEVICES is respected)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchTrainer:
    """The same model and loss trained with PyTorch autograd and Adam on ``device``."""

    def __init__(self, params: dict[str, np.ndarray], cfg: Config, lr: float, device: str = "cuda") -> None:
        import torch

        self.torch, self.cfg, self.device = torch, cfg, device
        self.p = {k: torch.tensor(v, device=device, requires_grad=True) for k, v in params.items()}
        self.opt = torch.optim.Adam(list(self.p.values()), lr=lr, betas=(0.9, 0.99))

    def step(self, idx: np.ndarray, targets: np.ndarray) -> float:
        """One optimiser step on a batch; returns the loss (nats per character)."""
        torch, p, cfg = self.torch, self.p, self.cfg
        ids = torch.from_numpy(idx).to(self.device)
        tgt = torch.from_numpy(targets).to(self.device)
        x = p["embed"][ids]
        for i in range(cfg.layers):
            z = torch.sigmoid(x @ p[f"l{i}.wz"] + p[f"l{i}.bz"])
            write = z * (x @ p[f"l{i}.wh"] + p[f"l{i}.bh"])
            keep_rate = 1 - z
            h = torch.zeros(ids.shape[0], cfg.hidden, device=self.device)
            states = []
            for t in range(ids.shape[1]):
                h = keep_rate[:, t] * h + write[:, t]
                states.append(h)
            x = x + torch.stack(states, dim=1) @ p[f"l{i}.wo"]
        logits = x @ p["out.w"] + p["out.b"]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.size), tgt.reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
        self.opt.step()
        return float(loss.item())

    def params(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().astype(DTYPE) for k, v in self.p.items()}

    def state(self) -> dict[str, np.ndarray]:
        """Adam's moments in :meth:`Adam.state`'s layout, so checkpoints move between back ends."""
        out: dict[str, np.ndarray] = {}
        steps = 0
        for k, p in self.p.items():
            st = self.opt.state.get(p)
            if not st:
                return {}
            out[f"adam.m.{k}"] = st["exp_avg"].detach().cpu().numpy()
            out[f"adam.v.{k}"] = st["exp_avg_sq"].detach().cpu().numpy()
            steps = int(st["step"])
        out["adam.t"] = np.array(steps)
        return out

    def load_state(self, extra: dict[str, np.ndarray]) -> bool:
        """Restore moments saved by :meth:`state` or :meth:`Adam.state`; False if they do not fit."""
        torch = self.torch
        if "adam.t" not in extra or any(f"adam.m.{k}" not in extra for k in self.p):
            return False
        for k, p in self.p.items():
            self.opt.state[p] = {
                "step": torch.tensor(float(extra["adam.t"])),
                "exp_avg": torch.tensor(extra[f"adam.m.{k}"], device=self.device),
                "exp_avg_sq": torch.tensor(extra[f"adam.v.{k}"], device=self.device),
            }
        return True
