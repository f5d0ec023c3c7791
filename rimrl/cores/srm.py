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
2. Activity. Module m is active iff its support ``{i : p_m·s_i >= τ}`` is non-empty; an
   optional ``k`` keeps only the k active modules with the most attention on real tokens
   ``1 - A_m∅`` (hard, no gradient). The support depends only on the embeddings and the fixed
   positions, so without ``k`` the active set is the same for every row and step of a call.
3. Dynamics. ``h~_m = Cell_m(Σ_i A_mi v_i, h_m)``: one GRU/LSTM per module (grouped matmul).
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

import torch
from torch import nn
from torch.nn import functional as F

from rimrl.cores.base import (
    RecurrentCore,
    State,
    check_divisible,
    check_positive,
    check_probability,
)
from rimrl.cores.grouped import CELL_KINDS, GroupedLinear, make_grouped_cell

#: Kernel weight of the null slot in the input attention (``log K_∅ = 0``).
NULL_KERNEL_WEIGHT = 1.0
#: At init, the fraction of the positional encoder's mean output removed from its output bias.
_INIT_CENTRING = 0.8


def truncated_kernel_log(u: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor | float, tau: float) -> torch.Tensor:
    """``log K(u, v)`` for unit vectors: ``(u·v - 1) / σ`` where ``u·v >= τ``, ``-inf`` elsewhere.

    ``u`` ``(M, d)``, ``v`` ``(N, d)`` -> ``(M, N)``. The ``-inf`` entries make the kernel exactly zero
    (``exp(-inf) = 0``) and, inside a softmax, carry exactly zero gradient.
    """
    dots = u @ v.t()
    return torch.where(dots >= tau, (dots - 1.0) / sigma, torch.full_like(dots, -math.inf))


class SRM(RecurrentCore):
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
        cell: ``"gru"`` (S2GRU) or ``"lstm"``. For ``"gru"`` the returned ``c`` is all zeros.
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

    After each call, ``last_active_mask`` holds the ``(T, B, M)`` bool mask of active modules
    (detached). With ``record_attention = True`` the call also stores ``last_input_attention``
    ``(T, B, M, N + 1)`` (head-averaged, slot 0 = null, detached).

    Initialisation rule (every token covered, no module empty): the positional encoder's output
    bias is first shifted by ``-0.8`` times its mean output, so the initial encoded positions
    spread over the sphere instead of a small cap. Farthest-point sampling over the initial encoded
    positions ``s_i`` picks M seed tokens (first the one nearest the mean
    direction, then repeatedly the one farthest from all chosen ones); a few spherical k-means
    iterations move each seed to the normalised mean of the tokens nearest it. The k-means centres
    are used if every token lies inside some support and every support holds a token; otherwise
    the seeds themselves (each covers its own token); if some token is still outside every
    support, the positional encoder's output bias is pushed along the mean direction — which pulls
    all encoded positions together on the sphere — by a growing amount until both conditions hold.
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
        cell: str = "gru",
        input_key_size: int = 64,
        input_value_size: int | None = None,
        num_input_heads: int = 1,
        comm_key_size: int = 32,
        comm_value_size: int | None = None,
        num_comm_heads: int = 4,
        input_dropout: float = 0.0,
        comm_dropout: float = 0.0,
        position_hidden_size: int = 64,
    ) -> None:
        super().__init__(input_size, hidden_size)
        check_positive("num_modules", num_modules)
        check_positive("num_tokens", num_tokens)
        check_divisible("hidden_size", hidden_size, "num_modules", num_modules)
        check_divisible("input_size", input_size, "num_tokens", num_tokens)
        if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim < 2:
            raise ValueError(f"embedding_dim must be an integer >= 2, got {embedding_dim!r}")
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        if not (isinstance(tau, (int, float)) and -1.0 <= tau < 1.0):
            raise ValueError(f"tau must be in [-1, 1), got {tau!r}")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_modules):
            raise ValueError(f"k must be None or an integer in [1, num_modules={num_modules}], got {k!r}")
        if cell not in CELL_KINDS:
            raise ValueError(f"cell must be one of {CELL_KINDS}, got {cell!r}")
        positions = self._check_positions(token_positions, num_tokens)
        module_size = hidden_size // num_modules
        input_value_size = module_size if input_value_size is None else input_value_size
        if comm_value_size is None:
            divides = num_comm_heads > 0 and module_size % num_comm_heads == 0
            comm_value_size = module_size // num_comm_heads if divides else module_size
        for name, value in (
            ("input_key_size", input_key_size),
            ("input_value_size", input_value_size),
            ("num_input_heads", num_input_heads),
            ("comm_key_size", comm_key_size),
            ("comm_value_size", comm_value_size),
            ("num_comm_heads", num_comm_heads),
            ("position_hidden_size", position_hidden_size),
        ):
            check_positive(name, value)
        check_probability("input_dropout", input_dropout)
        check_probability("comm_dropout", comm_dropout)

        self.num_modules, self.k, self.cell_kind = num_modules, k, cell
        self.num_tokens, self.token_dim, self.module_size = num_tokens, input_size // num_tokens, module_size
        self.embedding_dim, self.tau = embedding_dim, float(tau)
        self.num_input_heads, self.input_key_size, self.input_value_size = (
            num_input_heads,
            input_key_size,
            input_value_size,
        )
        self.num_comm_heads, self.comm_key_size, self.comm_value_size = (
            num_comm_heads,
            comm_key_size,
            comm_value_size,
        )

        # 0. Geometry: fixed positions (buffer), learned encoder onto the sphere, module embeddings.
        self.register_buffer("token_positions", positions)
        self.position_encoder = nn.Sequential(
            nn.Linear(positions.shape[1], position_hidden_size),
            nn.Tanh(),
            nn.Linear(position_hidden_size, embedding_dim),
        )
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        # Unconstrained; forward normalises it, so p_m is on the sphere whatever the optimiser does.
        self.module_embedding = nn.Parameter(torch.empty(num_modules, embedding_dim))

        # 1. Input attention: module-specific queries, shared bias-free keys and values.
        self.input_query = GroupedLinear(num_modules, module_size, num_input_heads * input_key_size, bias=False)
        self.input_key = nn.Linear(self.token_dim, num_input_heads * input_key_size, bias=False)
        self.input_value = nn.Linear(self.token_dim, num_input_heads * input_value_size, bias=False)
        self.input_dropout = nn.Dropout(input_dropout)
        # 3. Dynamics: one cell per module.
        self.cell = make_grouped_cell(cell, num_modules, num_input_heads * input_value_size, module_size)
        # 4. Communication: module-specific query/key/value in one grouped matmul.
        self.comm_qkv = GroupedLinear(
            num_modules, module_size, num_comm_heads * (2 * comm_key_size + comm_value_size), bias=False
        )
        read_size = num_comm_heads * comm_value_size
        self.comm_out = None if read_size == module_size else GroupedLinear(num_modules, read_size, module_size)
        self.comm_dropout = nn.Dropout(comm_dropout)

        self.record_attention = False
        self.last_active_mask: torch.Tensor | None = None
        self.last_input_attention: torch.Tensor | None = None
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
        last = self.position_encoder[-1]
        # A freshly initialised MLP maps all positions into a small cap; moving the centroid of its
        # outputs most of the way to the origin spreads them over the sphere before normalising.
        last.bias.sub_(_INIT_CENTRING * self.position_encoder(self.token_positions).mean(dim=0))
        raw = self.position_encoder(self.token_positions)
        mean = raw.mean(dim=0)
        direction = F.normalize(mean if mean.norm() > 1e-6 else raw[0], dim=0)
        bias, step = last.bias.clone(), 0.05 * float(raw.norm(dim=1).max()) + 1e-3
        for attempt in range(200):
            push = 0.0 if attempt == 0 else step * 1.25 ** (attempt - 1)
            last.bias.copy_(bias + push * direction)
            encoded = self.token_embeddings()
            seeds = self._farthest_points(encoded, direction)
            for anchors in (self._spherical_kmeans(encoded, seeds), seeds):
                if self._covers(anchors, encoded):
                    self.module_embedding.copy_(anchors)
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

    # --- forward --------------------------------------------------------------------------------

    def input_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared keys and values of the input set with the null token placed first.

        ``x`` ``(T, B, input_size)`` -> keys ``(T, B, N + 1, heads, input_key_size)`` and values
        ``(T, B, N + 1, heads, input_value_size)``; slot 0 is the null token (exactly zero, as the
        projections have no bias).
        """
        seq_len, batch_size = x.shape[:2]
        tokens = x.reshape(seq_len, batch_size, self.num_tokens, self.token_dim)
        null = tokens.new_zeros(seq_len, batch_size, 1, self.token_dim)
        tokens = torch.cat([null, tokens], dim=2)
        size = (seq_len, batch_size, self.num_tokens + 1, self.num_input_heads, -1)
        return self.input_key(tokens).view(size), self.input_value(tokens).view(size)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Run the whole sequence.

        Args:
            x: ``(T, B, input_size)``.
            state: ``(h, c)``, each ``(1, B, hidden_size)``; ``None`` for zeros.
            episode_starts: ``(T, B)`` in {0, 1}; rows with 1 are reset before step t.

        Returns:
            ``out`` ``(T, B, hidden_size)`` and the final ``(h, c)``, each ``(1, B, hidden_size)``.
        """
        state, keep = self._prepare(x, state, episode_starts)
        seq_len, batch_size = x.shape[:2]
        modules, module_size, heads = self.num_modules, self.module_size, self.num_input_heads

        # Everything that does not depend on the state is computed once, outside the time loop:
        # the geometry (kernels between modules and tokens, and among modules) and keys/values.
        log_k_input, log_k_comm = self.log_kernels()  # (M, N), (M, M)
        supported = torch.isfinite(log_k_input).any(dim=1)  # (M,): some token inside the support
        keys, values = self.input_keys_values(x)  # slot 0: the null token, key and value exactly 0
        keys = keys * (1.0 / math.sqrt(self.input_key_size))  # fold the attention scale in once
        # (T, B*H, d_k, N+1) and (T, B*H, N+1, d_v): a step's scores and reads are one bmm each.
        keys = keys.permute(0, 1, 3, 4, 2).reshape(seq_len, batch_size * heads, -1, self.num_tokens + 1)
        values = values.permute(0, 1, 3, 2, 4).reshape(seq_len, batch_size * heads, self.num_tokens + 1, -1)
        # The null slot's kernel weight K_∅ is a constant: its logit is log K_∅ + q·0 = 0.
        null_logit = x.new_full((modules, 1), math.log(NULL_KERNEL_WEIGHT))
        log_k_input = torch.cat([null_logit, log_k_input], dim=1)  # (M, N + 1)
        comm_scale = 1.0 / math.sqrt(self.comm_key_size)
        comm_split = (self.comm_key_size, self.comm_key_size, self.comm_value_size)
        # unbind, not keys[t]: indexing in the loop would make backward zero-fill a (T, ...) tensor per step.
        step_keys, step_values, step_keep = keys.unbind(0), values.unbind(0), keep.unbind(0)

        # Activity without k is fixed by the geometry: all active (no masking at all) or a static mask.
        all_active = self.k is None and bool(supported.all())
        static_mask = supported.view(modules, 1, 1).expand(modules, batch_size, 1)

        # Module-major layout (M, B, S) so each module's weights apply in one bmm.
        h = state[0].reshape(batch_size, modules, module_size).transpose(0, 1)
        c = state[1].reshape(batch_size, modules, module_size).transpose(0, 1)
        outputs, masks, attentions = [], [], []
        # One host sync up front instead of a multiply per step: which steps reset any row.
        reset_steps = keep[:, :, 0].lt(1).any(dim=1).tolist()
        for t in range(seq_len):
            if reset_steps[t]:
                h, c = h * step_keep[t], c * step_keep[t]

            # 1. Kernel-modulated input attention over [null, tokens]: (B*H, M, N + 1).
            query = self.input_query(h).view(modules, batch_size * heads, -1).transpose(0, 1)
            attention = torch.baddbmm(log_k_input, query, step_keys[t]).softmax(dim=-1)
            if self.record_attention:
                attentions.append(attention.detach().view(batch_size, heads, modules, -1).mean(1))

            # 2. Activity: non-empty support, optionally capped to the top-k by real-token attention.
            if self.k is not None:
                real_mass = 1.0 - attention[..., 0].detach().view(batch_size, heads, modules).mean(1)
                chosen = real_mass.topk(self.k, dim=1).indices
                mask = torch.zeros(batch_size, modules, dtype=torch.bool, device=x.device)
                mask.scatter_(1, chosen, True)
                module_mask = mask.t().unsqueeze(-1) & static_mask  # (M, B, 1)
            else:
                module_mask = static_mask
            masks.append(module_mask)

            # 3. Dynamics on each module's attended input (the null value is zero).
            attended = torch.bmm(self.input_dropout(attention), step_values[t])  # (B*H, M, dv)
            attended = attended.view(batch_size, heads, modules, -1).permute(2, 0, 1, 3)
            h_cell, c_cell = self.cell(attended.reshape(modules, batch_size, -1), h, c)
            if all_active:
                h_tilde, c = h_cell, c_cell
            else:
                h_tilde = torch.where(module_mask, h_cell, h)
                c = torch.where(module_mask, c_cell, c)

            # 4. Kernel-modulated communication among all modules; a residual for the active ones.
            q, kk, v = (
                self.comm_qkv(h_tilde)
                .view(modules, batch_size, self.num_comm_heads, -1)
                .split(comm_split, dim=-1)
            )
            comm_scores = torch.einsum("mbhd,nbhd->bhmn", q, kk) * comm_scale + log_k_comm
            read = torch.einsum("bhmn,nbhd->mbhd", self.comm_dropout(comm_scores.softmax(dim=-1)), v)
            read = read.reshape(modules, batch_size, -1)
            h_comm = h_tilde + (read if self.comm_out is None else self.comm_out(read))

            # 5. Sparse update: inactive modules keep h exactly (and, above, c).
            h = h_comm if all_active else torch.where(module_mask, h_comm, h)
            outputs.append(h)

        self.last_active_mask = torch.stack(masks).squeeze(-1).transpose(1, 2).detach()  # (T, B, M)
        self.last_input_attention = torch.stack(attentions) if attentions else None
        out = torch.stack(outputs).permute(0, 2, 1, 3).reshape(seq_len, batch_size, self.hidden_size)
        h_final = h.transpose(0, 1).reshape(1, batch_size, self.hidden_size)
        if self.cell_kind == "gru":
            c_final = torch.zeros_like(h_final)
        else:
            c_final = c.transpose(0, 1).reshape(1, batch_size, self.hidden_size)
        return out, (h_final, c_final)
