"""Semantics of the SRM core (DESIGN.md, "The core interface" and "SRM")."""

from __future__ import annotations

import math

import pytest
import torch

from rimrl.cores import SRM, make_core

T, B, INPUT, HIDDEN, MODULES = 7, 5, 24, 48, 6  # 3 tokens of 8 features; 6 modules of 8


def grid_positions(side: int = 7) -> torch.Tensor:
    """``(side * side, 2)`` cell offsets in [-1, 1], like a 7x7 egocentric view."""
    axis = torch.linspace(-1.0, 1.0, side)
    return torch.cartesian_prod(axis, axis)


SPECS = {
    "gru": {"num_tokens": 3, "cell": "gru"},
    "lstm": {"num_tokens": 3, "cell": "lstm", "num_comm_heads": 2},
    "gru-k2": {"num_tokens": 3, "cell": "gru", "k": 2, "tau": -0.5},
    "lstm-grid": {"num_tokens": 12, "token_positions": grid_positions(4)[:12], "cell": "lstm", "tau": 0.7},
    "gru-drop": {"num_tokens": 3, "cell": "gru", "input_dropout": 0.2, "comm_dropout": 0.2, "num_input_heads": 2},
    "lstm-k3": {"num_tokens": 3, "k": 3},  # the defaults (LSTM cells) with a cap
}


def build(spec: str, seed: int = 0, **overrides) -> SRM:
    torch.manual_seed(seed)
    core = make_core("srm", INPUT, HIDDEN, num_modules=MODULES, **{**SPECS[spec], **overrides})
    assert isinstance(core, SRM)
    return core.eval()  # dropout off: step-by-step and sequence calls must agree


@pytest.fixture(params=list(SPECS))
def spec(request: pytest.FixtureRequest) -> str:
    return request.param


def random_state(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, B, HIDDEN, generator=gen), torch.randn(1, B, HIDDEN, generator=gen)


# --- the core contract ---------------------------------------------------------------------


def test_shapes_and_attributes(spec: str) -> None:
    core = build(spec)
    out, (h, c) = core(torch.randn(T, B, INPUT))
    assert out.shape == (T, B, HIDDEN)
    assert h.shape == c.shape == (1, B, HIDDEN)
    assert (core.input_size, core.hidden_size, core.num_layers) == (INPUT, HIDDEN, 1)
    mask = core.last_active_mask
    assert mask.shape == (T, B, MODULES) and mask.dtype == torch.bool and not mask.requires_grad
    if core.cell_kind == "gru":
        assert torch.count_nonzero(c) == 0  # a GRU's c is documented as zeros


def test_sequence_equals_steps(spec: str) -> None:
    core = build(spec)
    x = torch.randn(T, B, INPUT)
    starts = torch.zeros(T, B)
    starts[0, 1] = 1.0
    starts[3, 0] = 1.0
    starts[5, 2:] = 1.0
    state = random_state()
    out_seq, (h_seq, c_seq) = core(x, state, starts)
    mask_seq = core.last_active_mask
    step_outs, step_masks = [], []
    for t in range(T):
        out_t, state = core(x[t : t + 1], state, starts[t : t + 1])
        step_outs.append(out_t)
        step_masks.append(core.last_active_mask)
    assert (torch.cat(step_outs) - out_seq).abs().max() < 1e-5
    assert (state[0] - h_seq).abs().max() < 1e-5
    assert (state[1] - c_seq).abs().max() < 1e-5
    assert torch.equal(torch.cat(step_masks), mask_seq)


def test_episode_start_equals_fresh_run(spec: str) -> None:
    core = build(spec)
    x = torch.randn(T, B, INPUT)
    t0, row = 3, 2
    starts = torch.zeros(T, B)
    starts[t0, row] = 1.0
    out, _ = core(x, random_state(), starts)
    fresh, _ = core(x[t0:])
    torch.testing.assert_close(out[t0:, row], fresh[:, row], rtol=0, atol=1e-6)
    out_no_reset, _ = core(x, random_state())
    others = [r for r in range(B) if r != row]
    assert torch.equal(out[:, others], out_no_reset[:, others])


def test_seeded_runs_are_reproducible(spec: str) -> None:
    x = torch.randn(T, B, INPUT)
    core_a = build(spec, seed=3).train()
    torch.manual_seed(11)
    out_a, _ = core_a(x)
    core_b = build(spec, seed=3).train()
    torch.manual_seed(11)
    out_b, _ = core_b(x)
    assert torch.equal(out_a, out_b)
    other = build(spec, seed=4)
    assert not torch.equal(other(x)[0], core_a.eval()(x)[0])


def test_state_dict_round_trip_keeps_positions_and_geometry() -> None:
    core = build("lstm-grid", seed=0)
    assert "token_positions" in core.state_dict() and "log_sigma" in core.state_dict()
    clone = build("lstm-grid", seed=5)
    clone.load_state_dict(core.state_dict())
    x = torch.randn(T, B, INPUT)
    assert torch.equal(core(x)[0], clone(x)[0])
    for key, value in core.topology().items():
        assert torch.equal(value, clone.topology()[key]), key


# --- geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(
    ("positions", "tau"),
    [
        (grid_positions(7), 0.5),
        (grid_positions(7), 0.9),
        (torch.cat([grid_positions(7), torch.zeros(49, 1)], 1), 0.3),
        (None, 0.5),
        (torch.zeros(49, 3), 0.5),  # identical positions: one point, every module covers it
    ],
)
def test_initial_embeddings_cover_every_token_and_no_module_is_empty(
    positions: torch.Tensor | None, tau: float, seed: int
) -> None:
    torch.manual_seed(seed)
    core = SRM(49 * 2, HIDDEN, num_modules=MODULES, num_tokens=49, token_positions=positions, tau=tau)
    support = core.topology()["support"]
    assert support.shape == (MODULES, 49)
    assert support.any(dim=0).all(), "a token is outside every module's support"
    assert support.any(dim=1).all(), "a module's support is empty"


@pytest.mark.parametrize("positions", [None, torch.zeros(1, 3)])
def test_single_token_modules_start_apart_and_learn_their_geometry(positions: torch.Tensor | None) -> None:
    torch.manual_seed(0)
    core = SRM(INPUT, HIDDEN, num_modules=MODULES, num_tokens=1, token_positions=positions)
    topo = core.topology()
    dots = topo["module_embeddings"] @ topo["module_embeddings"].t()
    assert torch.all(dots.fill_diagonal_(-2.0) < 1 - 1e-4), "coincident modules would stay coincident"
    assert topo["support"].all()  # every module still reads the token
    out, _ = core(torch.randn(T, B, INPUT))
    out.pow(2).mean().backward()
    assert torch.all(core.module_embedding.grad.abs().sum(dim=1) > 0)


def test_default_positions_are_a_line() -> None:
    core = SRM(INPUT, HIDDEN, num_modules=MODULES, num_tokens=3)
    assert torch.equal(core.token_positions, torch.tensor([[-1.0], [0.0], [1.0]]))


def test_topology_shapes_and_sphere() -> None:
    core = build("lstm-grid")
    topo = core.topology()
    d = core.embedding_dim
    assert topo["module_embeddings"].shape == (MODULES, d)
    assert topo["token_embeddings"].shape == (12, d)
    assert topo["kernel"].shape == (MODULES, 12)
    assert topo["module_kernel"].shape == (MODULES, MODULES)
    torch.testing.assert_close(topo["module_embeddings"].norm(dim=1), torch.ones(MODULES))
    torch.testing.assert_close(topo["token_embeddings"].norm(dim=1), torch.ones(12))
    torch.testing.assert_close(topo["module_kernel"].diagonal(), torch.ones(MODULES))
    assert torch.equal(topo["support"], topo["kernel"] > 0)


def test_kernel_is_exactly_zero_exactly_below_tau() -> None:
    core = build("gru", tau=0.2, sigma=0.3)
    gen = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(40, 3, generator=gen), dim=1)
    v = torch.nn.functional.normalize(torch.randn(30, 3, generator=gen), dim=1)
    kernel = core.kernel_matrix(u, v)
    dots = u @ v.t()
    assert torch.equal(kernel == 0, dots < 0.2)
    assert 0 < int((kernel == 0).sum()) < kernel.numel()
    inside = dots >= 0.2
    torch.testing.assert_close(kernel[inside], torch.exp((dots[inside] - 1) / 0.3))
    topo = core.topology()
    dots = topo["module_embeddings"] @ topo["token_embeddings"].t()
    assert torch.equal(topo["kernel"] == 0, dots < core.tau)


def test_embeddings_stay_on_the_sphere_after_an_optimiser_step() -> None:
    core = build("lstm-grid").train()
    optimiser = torch.optim.SGD(core.parameters(), lr=5.0)
    out, _ = core(torch.randn(T, B, INPUT))
    out.pow(2).mean().backward()
    assert core.module_embedding.grad.abs().sum() > 0
    assert core.position_encoder.first.weight.grad.abs().sum() > 0
    before = core.module_embedding.detach().clone()
    optimiser.step()
    assert not torch.equal(before, core.module_embedding)
    topo = core.topology()
    torch.testing.assert_close(topo["module_embeddings"].norm(dim=1), torch.ones(MODULES))
    torch.testing.assert_close(topo["token_embeddings"].norm(dim=1), torch.ones(12))
    # The parameter itself is unconstrained; forward normalises it, so its scale is irrelevant.
    core.eval()
    x = torch.randn(T, B, INPUT)
    expected, _ = core(x)
    with torch.no_grad():
        core.module_embedding.mul_(torch.arange(1.0, MODULES + 1).unsqueeze(1) * 3.0)
    torch.testing.assert_close(core(x)[0], expected)
    torch.testing.assert_close(core.topology()["module_embeddings"], topo["module_embeddings"])


def test_position_encoder_learns_slower_under_adam_by_its_lr_scale() -> None:
    moved = {}
    for scale in (1.0, 0.05):
        core = build("lstm-grid", position_lr_scale=scale)
        before = core.token_embeddings().detach()
        optimiser = torch.optim.Adam(core.position_encoder.parameters(), lr=1e-3)
        for _ in range(5):
            optimiser.zero_grad()
            core.token_embeddings()[:, 0].sum().backward()  # a consistent push on every token
            optimiser.step()
        moved[scale] = (core.token_embeddings().detach() - before).norm(dim=1).mean().item()
    assert moved[0.05] < 0.2 * moved[1.0]
    # The function itself does not depend on the scale: same seed, same encoded positions.
    torch.testing.assert_close(
        build("lstm-grid", position_lr_scale=1.0).token_embeddings(),
        build("lstm-grid", position_lr_scale=0.05).token_embeddings(),
    )


def test_no_truncation_and_wide_kernel_reads_every_token() -> None:
    core = build("lstm-grid", tau=-1.0, sigma=1e3)
    core.record_attention = True
    core(torch.randn(T, B, INPUT), random_state())
    assert torch.all(core.topology()["kernel"] > 0)
    attention = core.last_input_attention
    assert attention.shape == (T, B, MODULES, 13)
    assert torch.all(attention[..., 1:] > 0)
    assert torch.all(core.last_active_mask)
    torch.testing.assert_close(attention.sum(-1), torch.ones(T, B, MODULES))


def test_input_attention_is_the_kernel_times_exp_qk_normalised_with_the_null() -> None:
    core = build("lstm-grid", tau=0.3, num_input_heads=2)
    core.record_attention = True
    core(torch.randn(1, B, INPUT))  # zero state: the queries are 0, so exp(q·k) = 1 for every slot
    kernel = core.topology()["kernel"]  # (M, N)
    denominator = 1.0 + kernel.sum(dim=1, keepdim=True)  # K_null = 1
    expected = torch.cat([1.0 / denominator, kernel / denominator], dim=1)
    torch.testing.assert_close(core.last_input_attention[0], expected.expand(B, -1, -1))


def reference_step(core: SRM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """One SRM step written out module by module from the equations (no k, all modules active).

    ``x`` ``(B, input_size)``, ``h``/``c`` ``(B, M, S)`` -> new ``h`` ``(B, M, S)``.
    """
    p, s = core.module_embeddings(), core.token_embeddings()
    sigma, tau = core.sigma, core.tau

    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dot = u @ v
        return torch.exp((dot - 1) / sigma) if dot >= tau else torch.zeros(())

    tokens = x.view(B, core.num_tokens, core.token_dim)
    keys, values = core.input_key(tokens), core.input_value(tokens)  # (B, N, d_k), (B, N, d_v)
    attended = torch.zeros(MODULES, B, core.input_value_size)
    for m in range(MODULES):
        q = h[:, m] @ core.input_query.weight[m]  # (B, d_k)
        weights = torch.stack(
            [kernel(p[m], s[i]) * torch.exp((q * keys[:, i]).sum(-1) / core.input_key_size**0.5) for i in range(core.num_tokens)],
            dim=1,
        )  # (B, N)
        attention = weights / (1.0 + weights.sum(dim=1, keepdim=True))  # null: K = 1, exp(q·0) = 1
        attended[m] = (attention.unsqueeze(-1) * values).sum(1)
    h_tilde, _ = core.cell(attended, h.transpose(0, 1), c.transpose(0, 1))  # (M, B, S)
    heads, dk, dv = core.num_comm_heads, core.comm_key_size, core.comm_value_size
    qkv = torch.einsum("mbs,mso->mbo", h_tilde, core.comm_qkv.weight).view(MODULES, B, heads, 2 * dk + dv)
    new_h = h_tilde.clone()
    for m in range(MODULES):
        for head in range(heads):
            q = qkv[m, :, head, :dk]
            weights = torch.stack(
                [kernel(p[m], p[n]) * torch.exp((q * qkv[n, :, head, dk : 2 * dk]).sum(-1) / dk**0.5) for n in range(MODULES)],
                dim=1,
            )  # (B, M)
            attention = weights / weights.sum(dim=1, keepdim=True)
            read = (attention.unsqueeze(-1) * qkv[:, :, head, 2 * dk :].transpose(0, 1)).sum(1)  # (B, d_v)
            new_h[m, :, head * dv : (head + 1) * dv] += read
    return new_h.transpose(0, 1)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("spec", ["lstm-grid", "lstm"])  # 12 and 3 tokens
def test_one_step_matches_the_equations_written_out(spec: str, cell: str) -> None:
    core = build(spec, cell=cell, tau=0.3)
    topo = core.topology()
    assert topo["support"].any(dim=1).all()
    # Preconditions: both kernels truncate some pairs, so the test sees the cut-off at work.
    assert (topo["kernel"] == 0).any() and (topo["module_kernel"] == 0).any()
    x = torch.randn(1, B, INPUT)
    h0, c0 = random_state()
    out, _ = core(x, (h0, c0))
    size = HIDDEN // MODULES
    expected = reference_step(core, x[0], h0.view(B, MODULES, size), c0.view(B, MODULES, size))
    torch.testing.assert_close(out[0].view(B, MODULES, size), expected, rtol=1e-4, atol=1e-5)


def place_module(core: SRM, module: int, direction: torch.Tensor) -> None:
    with torch.no_grad():
        core.module_embedding[module] = direction


def test_moving_an_embedding_changes_which_tokens_a_module_reads() -> None:
    core = build("lstm-grid", tau=0.9)
    core.record_attention = True
    tokens = core.token_embeddings().detach()
    far_a, far_b = divmod(int((tokens @ tokens.t()).argmin()), tokens.shape[0])  # two distant tokens
    x = torch.randn(T, B, INPUT)
    reads = []
    for target in (far_a, far_b):
        place_module(core, 0, tokens[target])
        support = core.topology()["support"][0]
        assert support[target]
        core(x)
        attention = core.last_input_attention[:, :, 0, 1:]  # module 0, real tokens
        assert torch.all(attention[..., support] > 0)
        assert torch.all(attention[..., ~support] == 0)  # exactly: outside the support
        reads.append(support)
    assert not torch.equal(reads[0], reads[1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_module_with_empty_support_keeps_its_state_and_gets_no_gradient(cell: str) -> None:
    core = build("lstm-grid", cell=cell, tau=0.9).train()
    tokens = core.token_embeddings().detach()
    away = torch.nn.functional.normalize(-tokens.mean(dim=0), dim=0)
    place_module(core, 0, away)
    assert not core.topology()["support"][0].any(), "test precondition: module 0 reads no token"
    assert core.topology()["support"][1:].any(dim=1).all()
    x = torch.randn(T, B, INPUT)
    state = tuple(s.clone().requires_grad_(True) for s in random_state())
    core.record_attention = True
    out, (h, c) = core(x, state)
    assert not core.last_active_mask[..., 0].any() and core.last_active_mask[..., 1:].all()
    assert torch.all(core.last_input_attention[:, :, 0, 0] == 1)  # all attention on the null slot
    size = HIDDEN // MODULES
    module_out = out.view(T, B, MODULES, size)[:, :, 0]
    assert torch.equal(module_out, state[0].view(B, MODULES, size)[:, 0].expand(T, B, size))
    assert torch.equal(h.view(B, MODULES, size)[:, 0], state[0].view(B, MODULES, size)[:, 0])
    if cell == "lstm":
        assert torch.equal(c.view(B, MODULES, size)[:, 0], state[1].view(B, MODULES, size)[:, 0])

    out.pow(2).sum().backward()
    for grouped in (core.cell.input_gates, core.cell.hidden_gates):
        for param in (grouped.weight, grouped.bias):
            if param is None:  # e.g. the LSTM's recurrent projection has no bias of its own
                continue
            per_module = param.grad.flatten(1).abs().sum(1)
            assert per_module[0] == 0 and torch.all(per_module[1:] > 0)
    assert core.input_query.weight.grad[0].abs().sum() == 0
    assert core.input_query.weight.grad[1:].abs().sum() > 0
    heads, dk = core.num_comm_heads, core.comm_key_size
    comm_grad = core.comm_qkv.weight.grad.view(MODULES, size, heads, -1)
    assert comm_grad[0, :, :, :dk].abs().sum() == 0  # its comm query feeds only its discarded residual
    # Gradient still flows in time through the copied state.
    assert state[0].grad.view(B, MODULES, size)[:, 0].abs().sum() > 0


@pytest.mark.parametrize("k", [1, 3, 6])
def test_k_caps_active_modules_by_real_token_attention(k: int) -> None:
    core = build("gru", k=k, tau=-1.0)
    core.record_attention = True
    core(torch.randn(T, B, INPUT), random_state())
    mask = core.last_active_mask
    assert torch.all(mask.sum(-1) == k)
    real_mass = 1 - core.last_input_attention[..., 0]
    for t in range(T):
        for row in range(B):
            chosen = mask[t, row]
            if k < MODULES:
                assert real_mass[t, row][chosen].min() >= real_mass[t, row][~chosen].max()


def test_learned_sigma_gets_gradient_and_stays_positive() -> None:
    core = build("lstm-grid", learn_sigma=True, sigma=0.4)
    assert isinstance(core.log_sigma, torch.nn.Parameter)
    torch.testing.assert_close(core.sigma, torch.tensor(0.4))
    optimiser = torch.optim.SGD(core.parameters(), lr=50.0)
    for _ in range(3):
        optimiser.zero_grad()
        out, _ = core(torch.randn(T, B, INPUT))
        out.pow(2).mean().backward()
        assert core.log_sigma.grad is not None and core.log_sigma.grad != 0
        optimiser.step()
    assert core.sigma > 0
    fixed = build("lstm-grid")
    assert "log_sigma" not in dict(fixed.named_parameters())


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 1.0}, r"tau must be in \[-1, 1\)"),
        ({"tau": -1.5}, r"tau must be in \[-1, 1\)"),
        ({"sigma": 0.0}, "sigma must be"),
        ({"sigma": -1.0}, "sigma must be"),
        ({"sigma": math.inf}, "sigma must be"),
        ({"token_positions": torch.zeros(4, 2)}, r"token_positions must have shape \(num_tokens=3"),
        ({"token_positions": torch.zeros(3, 2, 2)}, "token_positions must have shape"),
        ({"num_modules": 5}, "hidden_size"),
        ({"num_modules": 0}, "num_modules"),
        ({"num_tokens": 5, "token_positions": None}, "input_size"),
        ({"k": 0}, r"k must be None or an integer in \[1, num_modules=6\]"),
        ({"k": 7}, r"k must be None or an integer in \[1, num_modules=6\]"),
        ({"cell": "rnn"}, "cell must be one of"),
        ({"embedding_dim": 1}, "embedding_dim must be"),
        ({"input_dropout": 1.0}, "input_dropout"),
        ({"num_comm_heads": 0}, "num_comm_heads"),
        ({"position_lr_scale": 0.0}, r"position_lr_scale must be in \(0, 1\]"),
    ],
)
def test_bad_srm_arguments_raise(kwargs: dict, message: str) -> None:
    params = {"num_modules": MODULES, "num_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        SRM(INPUT, HIDDEN, **params)
    with pytest.raises(ValueError, match=message):
        make_core("srm", INPUT, HIDDEN, **params)


def test_bad_input_shapes_raise() -> None:
    core = build("gru")
    with pytest.raises(ValueError, match="x must have shape"):
        core(torch.randn(T, B, INPUT + 1))
    with pytest.raises(ValueError, match="episode_starts"):
        core(torch.randn(T, B, INPUT), None, torch.zeros(T, B + 1))


def test_zero_tokens_are_absent_and_modules_without_a_present_token_keep_their_state() -> None:
    """S2RMs' activity rule per step: a module is active only if a present token lies in its support."""
    torch.manual_seed(0)
    positions = torch.tensor([[-1.0, 0.0], [-0.8, 0.1], [1.0, 0.0], [0.8, -0.1]])
    core = SRM(4 * 8, 24, num_modules=2, num_tokens=4, token_positions=positions, tau=0.5,
               zero_tokens_absent=True).eval()
    support = core.topology()["support"]  # (M, N)
    x = torch.randn(5, 3, 4, 8)
    x[1, 0] = 0.0  # row 0, step 1: nothing observed
    x[2, 1, :2] = 0.0  # row 1, step 2: tokens 0, 1 absent
    core.record_attention = True
    out, _ = core(x.flatten(2))
    present = x.ne(0).any(-1)  # (T, B, N)
    expected = (present.float() @ support.float().t()) > 0  # (T, B, M)
    assert torch.equal(core.last_active_mask, expected) and not expected.all()
    attention = core.last_input_attention  # (T, B, M, N + 1)
    assert torch.equal(attention[..., 1:][~present.unsqueeze(2).expand_as(attention[..., 1:])],
                       torch.zeros(int((~present).sum()) * 2))
    # An inactive module's output equals its previous state bit for bit.
    units = out.view(5, 3, 2, 12)
    for t, b, m in (~expected).nonzero().tolist():
        previous = torch.zeros(12) if t == 0 else units[t - 1, b, m]
        assert torch.equal(units[t, b, m], previous)
    # Gradients stay finite through the -inf logits, and the sequence equals its steps.
    x.requires_grad_(True)
    core(x.flatten(2))[0].sum().backward()
    assert torch.isfinite(x.grad).all()
    state, steps = None, []
    for t in range(5):
        step, state = core(x[t : t + 1].flatten(2).detach(), state)
        steps.append(step)
    torch.testing.assert_close(torch.cat(steps), out, rtol=0, atol=1e-6)
