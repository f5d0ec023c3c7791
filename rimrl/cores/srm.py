"""Spatially Structured Recurrent Modules (Rahaman, Goyal et al., "S2RMs", ICLR 2021).

Modules live on the unit sphere ``S^(d-1)``; input tokens are placed on the same sphere by a
learned positional encoder; a truncated kernel on the sphere decides who reads whom. One step, for
``M = num_modules`` modules of size ``S`` (``hidden_size = M * S``) and ``N = num_tokens`` tokens:

0. Geometry (no state involved, computed once per call). Module embeddings
   ``p_m = e_m / ||e_m||`` (``e_m`` unconstrained parameters, normalised at every forward) and
   token embeddings ``s_i = f(x_i) / ||f(x_i)||`` (``f`` a small MLP of the fixed position ``x_i``).
   Kernel ``K(u, v) = exp((u·v - 1) / σ)`` if ``u·v >= τ``, else exactly 0.
1. Kernel-modulated input attention over ``[null, tokens]``::

       A_mi = K(p_m, s_i) exp(q_m·k_i / √d_k) / (K_∅ exp(0) + Σ_j K(p_m, s_j) exp(q_m·k_j / √d_k))

   with ``q_m = h_m W_q^m`` (module-specific), ``k_i = t_i W_k``, ``v_i = t_i W_v`` (shared, no bias)
   and the null slot's key and value zero and its kernel weight ``K_∅ = 1`` (the kernel's maximum,
   so a module whose tokens all lie at the edge of its support still reads mostly the null).
   Computed in log space: ``logits = q·k/√d_k + log K`` with ``log K = -inf`` where truncated.
2. Activity. Module m is active iff its support ``{i : p_m·s_i >= τ}`` holds a token (with
   ``zero_tokens_absent``: a *present* token, one that is not all zeros, at this step); an
   optional ``k`` keeps only the k active modules with the most attention on real tokens
   ``1 - A_m∅`` (hard, no gradient). The support depends only on the embeddings and the fixed
   positions, so without ``k`` the active set is the same for every row and step of a call.
3. Dynamics. ``h~_m = Cell_m(Σ_i A_mi v_i, h_m)``: one LSTM/GRU per module (grouped matmul).
4. Kernel-modulated communication (residual, active modules only)::

       h_m <- h~_m + Σ_n softmax_n(q_m·k_n / √d_c + log K(p_m, p_n)) v_n

   with module-specific query/key/value weights on ``h~``; ``K(p_m, p_m) = 1`` so every module
   can always read itself.
5. Sparse update. Inactive modules keep ``h`` and ``c`` bit-for-bit (``torch.where``).

Output: the module states concatenated, module-major.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch import nn
from torch.nn import functional as F

from rimrl.cores.modular import ModularCore

#: Kernel weight of the null slot in the input attention (``log K_∅ = 0``).
NULL_KERNEL_WEIGHT = 1.0
#: At init, the fraction of the positional encoder's mean output removed from its output bias.
_INIT_CENTRING = 0.8


class PositionEncoder(nn.Module):
    """``f``: fixed positions ``(N, P)`` -> ``(N, d)`` (not yet normalised); ``P -> hidden -> d``, tanh.

    Its parameters are stored divided by ``lr_scale`` and multiplied back in ``forward``. The
    function is the plain MLP's, but an optimiser with per-parameter normalised steps (Adam,
    RMSprop) changes it ``lr_scale`` times slower (plain SGD: ``lr_scale**2``). Why: the encoder has
    far more parameters than a module embedding, so at the same step size it moves the encoded
    positions tens of times faster than the modules move — fast enough for a consistent gradient
    to carry tokens out of every kernel support within a few dozen updates, after which the
    modules that lost them are inactive for good (no token, no input gradient to bring them back).
    """

    def __init__(self, in_features: int, hidden_size: int, out_features: int, lr_scale: float) -> None:
        super().__init__()
        self.first = nn.Linear(in_features, hidden_size)
        self.last = nn.Linear(hidden_size, out_features)
        self.lr_scale = float(lr_scale)
        with torch.no_grad():
            for param in self.parameters():
                param.div_(self.lr_scale)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        scale = self.lr_scale
        hidden = torch.tanh(F.linear(positions, self.first.weight * scale, self.first.bias * scale))
        return F.linear(hidden, self.last.weight * scale, self.last.bias * scale)

    @torch.no_grad()
    def affine_output_(self, scale: float = 1.0, shift: torch.Tensor | None = None) -> None:
        """In place: ``f <- scale * f + shift`` (edits the output layer)."""
        self.last.weight.mul_(scale)
        self.last.bias.mul_(scale)
        if shift is not None:
            self.last.bias.add_(shift / self.lr_scale)


def truncated_kernel_log(u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, tau: float) -> torch.Tensor:
    """``log K(u, v)`` for unit vectors: ``(u·v - 1) / σ`` where ``u·v >= τ``, ``-inf`` elsewhere.

    ``u`` ``(M, d)``, ``v`` ``(N, d)`` -> ``(M, N)``. The ``-inf`` entries make the kernel exactly zero
    (``exp(-inf) = 0``) and, inside a softmax, carry exactly zero gradient.
    """
    dots = u @ v.t()
    return torch.where(dots >= tau, (dots - 1.0) / sigma, torch.full_like(dots, -math.inf))


class SRM(ModularCore):
    """Spatially Structured Recurrent Modules with the rimrl core contract.

    Args:
        input_size: ``num_tokens * token_dim``; ``x`` ``(T, B, input_size)`` is read as
            ``num_tokens`` tokens of ``token_dim`` features, token-major.
        hidden_size: ``num_modules * module_size``; output and state are the module states
            concatenated, module-major.
        num_modules: number of modules M.
        num_tokens: number of input tokens N.
        token_positions: fixed ``(N, P)`` coordinates of the tokens (e.g. the 7x7 view offsets or
            a CNN feature-map grid); a buffer, saved in the ``state_dict``. ``None``: the tokens
            lie on a line, ``P = 1``, positions ``0..N-1`` scaled to ``[-1, 1]``.
        embedding_dim: d, the sphere is ``S^(d-1)``; ``>= 2``.
        sigma: kernel width σ > 0 (``K = exp((u·v - 1)/σ)``; small σ = sharply local).
        tau: truncation threshold τ in ``[-1, 1)``: ``K = 0`` where ``u·v < τ``. ``τ = -1`` never
            truncates (every module reads every token).
        learn_sigma: learn σ (stored as ``log σ``, so it stays positive).
        k: optional cap on the number of active modules per step and row, ``1 <= k <= M``.
        cell: ``"lstm"`` or ``"gru"`` (the paper's S2GRU). For ``"gru"`` the returned ``c`` is all
            zeros. LSTM is the default because its ``h = o * tanh(c)`` is bounded before the
            communication residual is added; a GRU carries ``h`` (residuals included) into its
            next state, so the state can grow without bound over long rollouts (measured on the
            copying task: GRU cells blew up in training and at the 4x longer test delay, LSTM
            cells did not; see docs/srm.md).
        input_key_size, num_input_heads: key size per head and heads of the input attention.
        input_value_size: value size per head of the input attention (default: module size).
        comm_key_size, num_comm_heads: key size per head and heads of the communication.
        comm_value_size: value size per head of the communication; default
            ``module_size // num_comm_heads`` (``module_size`` if the heads do not divide it). If
            the heads' concatenation differs from ``module_size``, a per-module output projection
            maps it back.
        input_dropout, comm_dropout: dropout on the two attention distributions. Default 0: RL
            collects rollouts in eval mode and trains in train mode, so dropout there would make
            the trained policy differ from the one that produced the data.
        position_hidden_size: width of the positional encoder MLP ``P -> hidden -> d``.
        position_lr_scale: in ``(0, 1]``; the positional encoder learns this many times slower
            than the rest under Adam-type optimisers (see :class:`PositionEncoder`).
        learn_initial_state: reset rows (and ``state=None``) to a learned per-module ``(h, c)``
            instead of zeros (see :class:`rimrl.cores.RIM`).
        zero_tokens_absent: S2RMs' activity rule on inputs that are not all there: a token whose
            features are all exactly zero is *absent* at that step and row (an encoder marks an
            empty position so). Absent tokens get no attention, and a module with no present
            token in its support is inactive there and keeps its state exactly. Off: every token
            is present, so every module with a non-empty support is active at every step.
        tie_break: with ``k``, how exact ties are broken: ``"torch"`` (default) or ``"index"``
            (see :class:`rimrl.cores.RIM`).

    After each call, ``last_active_mask`` holds the ``(T, B, M)`` bool mask of active modules
    (detached). With ``record_attention = True`` the call also stores ``last_input_attention``
    ``(T, B, M, N + 1)`` (head-averaged, slot 0 = null, detached).

    Initialisation rule (every token covered, no module empty): the positional encoder's output
    bias is first shifted by ``-0.8`` times its mean output, so the initial encoded positions
    spread over the sphere instead of a small cap, and its output is rescaled to unit mean norm.
    Farthest-point sampling over the initial encoded positions ``s_i`` picks M seed tokens (first
    the one nearest the mean direction, then repeatedly the one farthest from all chosen ones); a
    few spherical k-means iterations move each seed to the normalised mean of the tokens nearest
    it. The k-means centres are used if every token lies inside some support and every support
    holds a token; otherwise the seeds themselves (each covers its own token). Modules that land
    on the same point (fewer distinct tokens than modules, e.g. a single token) are first moved
    apart by half the support radius in random tangent directions, which keeps the point inside
    all their supports (their kernel gradient would otherwise vanish and keep them coincident).
    If some token is still outside every support, the positional encoder's output bias is pushed
    along the mean direction — which pulls all encoded positions together on the sphere — by a
    growing amount until both conditions hold.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_modules: int = 6,
        num_tokens: int = 1,
        token_positions: torch.Tensor | Sequence | None = None,
        embedding_dim: int = 3,
        sigma: float = 0.5,
        tau: float = 0.5,
        learn_sigma: bool = False,
        k: int | None = None,
        cell: str = "lstm",
        input_key_size: int = 64,
        input_value_size: int | None = None,
        num_input_heads: int = 1,
        comm_key_size: int = 32,
        comm_value_size: int | None = None,
        num_comm_heads: int = 4,
        input_dropout: float = 0.0,
        comm_dropout: float = 0.0,
        position_hidden_size: int = 64,
        position_lr_scale: float = 0.05,
        learn_initial_state: bool = False,
        zero_tokens_absent: bool = False,
        tie_break: str = "torch",
    ) -> None:
        if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 2:
            raise ValueError(f"embedding_dim must be an integer >= 2, got {embedding_dim!r}")
        if not (isinstance(sigma, Real) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if not (isinstance(position_lr_scale, Real) and 0.0 < position_lr_scale <= 1.0):
            raise ValueError(f"position_lr_scale must be in (0, 1], got {position_lr_scale!r}")
        if not (isinstance(tau, Real) and -1.0 <= tau < 1.0):
            raise ValueError(f"tau must be in [-1, 1), got {tau!r}")
        if not isinstance(position_hidden_size, int) or position_hidden_size < 1:
            raise ValueError(f"position_hidden_size must be an integer >= 1, got {position_hidden_size!r}")
        positions = self._check_positions(token_positions, num_tokens)
        # Built before the shared layers so seeded initialisations keep their order of draws.
        position_encoder = PositionEncoder(positions.shape[1], position_hidden_size, embedding_dim, position_lr_scale)
        # Attention, cells and communication: the layers RIM has (rimrl.cores.modular).
        super().__init__(
            input_size,
            hidden_size,
            num_units=num_modules,
            k=k,
            cell=cell,
            num_tokens=num_tokens,
            input_key_size=input_key_size,
            input_value_size=input_value_size,
            num_input_heads=num_input_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
            num_comm_heads=num_comm_heads,
            input_dropout=input_dropout,
            comm_dropout=comm_dropout,
            learn_initial_state=learn_initial_state,
            unit_name="num_modules",
            tie_break=tie_break,
        )
        self.embedding_dim, self.tau = embedding_dim, float(tau)
        if not isinstance(zero_tokens_absent, bool):
            raise ValueError(f"zero_tokens_absent must be a bool, got {zero_tokens_absent!r}")
        self.zero_tokens_absent = zero_tokens_absent

        # 0. Geometry: fixed positions (buffer), learned encoder onto the sphere, module embeddings.
        self.register_buffer("token_positions", positions)
        self.position_encoder = position_encoder
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        # Unconstrained; forward normalises it, so p_m is on the sphere whatever the optimiser does.
        self.module_embedding = nn.Parameter(torch.empty(num_modules, embedding_dim))
        self._init_embeddings()

    # --- construction helpers -----------------------------------------------------------------

    @staticmethod
    def _check_positions(token_positions: torch.Tensor | Sequence | None, num_tokens: int) -> torch.Tensor:
        if token_positions is None:
            line = torch.linspace(-1.0, 1.0, num_tokens) if num_tokens > 1 else torch.zeros(1)
            return line.unsqueeze(1)
        positions = torch.as_tensor(token_positions, dtype=torch.float32).detach().clone()
        if positions.dim() == 1:
            positions = positions.unsqueeze(1)
        if positions.dim() != 2 or positions.shape[0] != num_tokens or positions.shape[1] < 1:
            raise ValueError(
                f"token_positions must have shape (num_tokens={num_tokens}, P) with P >= 1, "
                f"got {tuple(positions.shape)}"
            )
        if not torch.isfinite(positions).all():
            raise ValueError("token_positions must be finite")
        return positions

    @torch.no_grad()
    def _init_embeddings(self) -> None:
        """Place the modules on the encoded positions so every token is covered and no module is empty.

        Farthest-point seeds, refined by spherical k-means; if that leaves a token uncovered or a
        module empty, the seeds themselves (each covers its own token); if those fail too, pull the
        encoded positions together (push the encoder's output bias along their mean direction) and
        retry with a growing push.
        """
        encoder, positions = self.position_encoder, self.token_positions
        # A freshly initialised MLP maps all positions into a small cap; moving the centroid of its
        # outputs most of the way to the origin spreads them over the sphere before normalising.
        encoder.affine_output_(shift=-_INIT_CENTRING * encoder(positions).mean(dim=0))
        # Then unit mean norm: a short f would make the directions s_i hypersensitive to updates.
        encoder.affine_output_(scale=1.0 / float(encoder(positions).norm(dim=1).mean().clamp_min(1e-6)))
        raw = encoder(positions)
        mean = raw.mean(dim=0)
        direction = F.normalize(mean if mean.norm() > 1e-6 else raw[0], dim=0)
        bias, step = encoder.last.bias.clone(), 0.05 * float(raw.norm(dim=1).max()) + 1e-3
        for attempt in range(200):
            encoder.last.bias.copy_(bias)
            encoder.affine_output_(shift=(0.0 if attempt == 0 else step * 1.25 ** (attempt - 1)) * direction)
            encoded = self.token_embeddings()
            seeds = self._farthest_points(encoded, direction)
            for anchors in (self._spherical_kmeans(encoded, seeds), seeds):
                for candidate in (self._separate_coincident(anchors), anchors):
                    if self._covers(candidate, encoded):
                        self.module_embedding.copy_(candidate)
                        return
        raise ValueError(f"tau={self.tau} is too close to 1: no initial embedding covers every token")

    def _covers(self, anchors: torch.Tensor, encoded: torch.Tensor) -> bool:
        """Every token inside some module's support, and every module's support non-empty."""
        inside = (anchors @ encoded.t()) >= self.tau  # (M, N)
        return bool(inside.any(dim=0).all() and inside.any(dim=1).all())

    def _farthest_points(self, encoded: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        """``num_modules`` rows of ``encoded`` ``(N, d)`` by farthest-point sampling (cosine distance).

        The first is the token nearest ``direction``; each next one the token whose best dot with
        the chosen ones is smallest. With fewer distinct tokens than modules, tokens repeat.
        """
        chosen = [int((encoded @ direction).argmax())]
        nearest = encoded @ encoded[chosen[0]]  # best dot with a chosen anchor, per token
        for _ in range(self.num_modules - 1):
            index = int(nearest.argmin())
            chosen.append(index)
            nearest = torch.maximum(nearest, encoded @ encoded[index])
        return encoded[chosen].clone()

    def _separate_coincident(self, anchors: torch.Tensor) -> torch.Tensor:
        """Move modules that share a point (fewer distinct tokens than modules) apart inside its cap.

        Coincident modules would stay coincident: at ``p_m = p_n = s_i`` the kernel's gradient is
        parallel to ``p_m`` and the sphere projection removes it. Each is moved by half the support
        radius, ``θ = arccos(max(τ, 0)) / 2``, in a random tangent direction (the global RNG, so
        seeded runs agree), which keeps the shared point inside every moved module's support.
        """
        coincident = ((anchors @ anchors.t()) > 1.0 - 1e-6).sum(dim=1) > 1  # (M,)
        if not coincident.any():
            return anchors
        theta = 0.5 * math.acos(max(self.tau, 0.0))
        tangent = torch.randn_like(anchors)
        tangent = F.normalize(tangent - (tangent * anchors).sum(1, keepdim=True) * anchors, dim=1)
        moved = math.cos(theta) * anchors + math.sin(theta) * tangent
        return torch.where(coincident.unsqueeze(1), F.normalize(moved, dim=1), anchors)

    @staticmethod
    def _spherical_kmeans(encoded: torch.Tensor, seeds: torch.Tensor, iterations: int = 10) -> torch.Tensor:
        """Lloyd iterations on the sphere: assign tokens to the nearest centre, centre = normalised mean."""
        centres = seeds.clone()
        for _ in range(iterations):
            assign = (encoded @ centres.t()).argmax(dim=1)  # (N,)
            sums = torch.zeros_like(centres).index_add_(0, assign, encoded)
            counts = torch.bincount(assign, minlength=centres.shape[0])
            # An empty cluster (or one whose tokens cancel out) keeps its centre.
            keep = (counts == 0) | (sums.norm(dim=1) < 1e-6)
            centres = torch.where(keep.unsqueeze(1), centres, F.normalize(sums, dim=1))
        return centres

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_modules={self.num_modules}, "
            f"num_tokens={self.num_tokens}, embedding_dim={self.embedding_dim}, sigma={self.sigma.item():.3g}, "
            f"tau={self.tau}, k={self.k}, cell={self.cell_kind!r}"
        )

    # --- geometry -------------------------------------------------------------------------------

    @property
    def num_modules(self) -> int:
        """M, the number of modules (``num_units`` of the shared base)."""
        return self.num_units

    @property
    def module_size(self) -> int:
        """S, the size of one module's state."""
        return self.unit_size

    @property
    def sigma(self) -> torch.Tensor:
        """Kernel width σ (a 0-d tensor; learnable through ``log_sigma`` if ``learn_sigma``)."""
        return self.log_sigma.exp()

    def module_embeddings(self) -> torch.Tensor:
        """``p``: ``(M, d)`` module embeddings on the unit sphere."""
        return F.normalize(self.module_embedding, dim=-1)

    def token_embeddings(self) -> torch.Tensor:
        """``s``: ``(N, d)`` encoded token positions on the unit sphere."""
        return F.normalize(self.position_encoder(self.token_positions), dim=-1)

    def kernel_matrix(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``K(u_m, v_n)`` for unit vectors ``u`` ``(M, d)``, ``v`` ``(N, d)`` -> ``(M, N)``; exactly 0 where ``u·v < τ``."""
        return truncated_kernel_log(u, v, self.sigma, self.tau).exp()

    def log_kernels(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``log K(p, s)`` ``(M, N)`` and ``log K(p, p)`` ``(M, M)``, ``-inf`` where truncated."""
        p, s, sigma = self.module_embeddings(), self.token_embeddings(), self.sigma
        return truncated_kernel_log(p, s, sigma, self.tau), truncated_kernel_log(p, p, sigma, self.tau)

    @torch.no_grad()
    def topology(self) -> dict[str, torch.Tensor]:
        """The current geometry, detached, for plots of which module covers which part of the view.

        Returns ``module_embeddings`` ``(M, d)``, ``token_embeddings`` ``(N, d)``, ``token_positions``
        ``(N, P)``, ``kernel`` ``(M, N)`` (module-token), ``module_kernel`` ``(M, M)``, ``support``
        ``(M, N)`` bool (``p_m·s_i >= τ``), ``sigma`` and ``tau``.
        """
        p, s = self.module_embeddings(), self.token_embeddings()
        return {
            "module_embeddings": p,
            "token_embeddings": s,
            "token_positions": self.token_positions.clone(),
            "kernel": self.kernel_matrix(p, s),
            "module_kernel": self.kernel_matrix(p, p),
            "support": (p @ s.t()) >= self.tau,
            "sigma": self.sigma.detach().clone(),
            "tau": torch.tensor(self.tau),
        }

    def token_presence(self, x: torch.Tensor) -> torch.Tensor | None:
        """With ``zero_tokens_absent``: a token whose features are all exactly zero is absent
        (nothing observed at its position), ``(T, B, N)`` bool; else ``None`` (all present)."""
        if not self.zero_tokens_absent:
            return None
        return self._tokens(x).ne(0).any(dim=-1)

    def attention_terms(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kernel terms of steps 1, 2 and 4 (no state involved: once per call).

        ``log K(p_m, s_i)`` with the null slot's constant ``log K_∅`` placed first ``(M, N + 1)``,
        ``log K(p_m, p_n)`` ``(M, M)``, and which modules hold a token in their support ``(M,)``.
        """
        log_k_input, log_k_comm = self.log_kernels()
        supported = torch.isfinite(log_k_input).any(dim=1)
        null_logit = log_k_input.new_full((self.num_modules, 1), math.log(NULL_KERNEL_WEIGHT))
        return torch.cat([null_logit, log_k_input], dim=1), log_k_comm, supported
