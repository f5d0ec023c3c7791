"""Semantics of the recurrent cores (DESIGN.md, "The core interface" and "RIM").

The contract tests (shapes, sequence == steps, episode starts, seeding, gradients) also run on a
core registered with :func:`rimrl.cores.register_core` (``toy``, from ``tests/toy_plugin.py``).
"""

from __future__ import annotations

import pytest
import torch
import toy_plugin

from rimrl.cores import (
    BUILTIN_CORES,
    CORES,
    GRU,
    LSTM,
    RIM,
    UnknownCoreError,
    core_names,
    core_spec,
    make_core,
    register_core,
    unregister_core,
)
from rimrl.cores.grouped import make_grouped_cell
from rimrl.cores.loop import within_head_dropout_mask

T, B, INPUT, HIDDEN = 7, 5, 24, 48

CORE_SPECS = {
    "lstm": {},
    "gru": {},
    "rim-lstm": {"num_units": 6, "k": 4, "cell": "lstm", "num_tokens": 3},
    "rim-gru": {"num_units": 6, "k": 3, "cell": "gru", "num_tokens": 2, "num_comm_heads": 3},
    "rim-learnedinit": {"num_units": 6, "k": 4, "cell": "lstm", "num_tokens": 1, "learn_initial_state": True},
    # A registered core of the user's (a plain nn.Module behind a factory function).
    "toy": {},
    "toy-scaled": {"scale": 0.5},
}


def build(spec: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    name = spec.split("-")[0]
    core = make_core(name, INPUT, HIDDEN, **CORE_SPECS[spec])
    return core.eval()  # dropout off: step-by-step and sequence calls must agree exactly


@pytest.fixture(params=list(CORE_SPECS))
def spec(request: pytest.FixtureRequest) -> str:
    return request.param


def random_state(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, B, HIDDEN, generator=gen), torch.randn(1, B, HIDDEN, generator=gen)


def test_shapes_and_attributes(spec: str) -> None:
    core = build(spec)
    out, (h, c) = core(torch.randn(T, B, INPUT))
    assert out.shape == (T, B, HIDDEN)
    assert h.shape == c.shape == (1, B, HIDDEN)
    assert (core.input_size, core.hidden_size, core.num_layers) == (INPUT, HIDDEN, 1)


def test_sequence_equals_steps(spec: str) -> None:
    core = build(spec)
    x = torch.randn(T, B, INPUT)
    starts = torch.zeros(T, B)
    starts[0, 1] = 1.0
    starts[3, 0] = 1.0
    starts[5, 2:] = 1.0
    state = random_state()
    out_seq, (h_seq, c_seq) = core(x, state, starts)
    step_outs = []
    for t in range(T):
        out_t, state = core(x[t : t + 1], state, starts[t : t + 1])
        step_outs.append(out_t)
    assert (torch.cat(step_outs) - out_seq).abs().max() < 1e-5
    assert (state[0] - h_seq).abs().max() < 1e-5
    assert (state[1] - c_seq).abs().max() < 1e-5


def test_episode_start_equals_fresh_run(spec: str) -> None:
    core = build(spec)
    x = torch.randn(T, B, INPUT)
    t0, row = 3, 2
    starts = torch.zeros(T, B)
    starts[t0, row] = 1.0
    out, _ = core(x, random_state(), starts)
    fresh, _ = core(x[t0:])  # every row from the initial state at t0, same batch shape
    torch.testing.assert_close(out[t0:, row], fresh[:, row], rtol=0, atol=1e-6)
    # Other rows are untouched by that row's reset.
    out_no_reset, _ = core(x, random_state())
    others = [r for r in range(B) if r != row]
    assert torch.equal(out[:, others], out_no_reset[:, others])


def test_seeded_runs_are_reproducible(spec: str) -> None:
    x = torch.randn(T, B, INPUT)
    torch.manual_seed(11)
    core_a = build(spec, seed=3).train()
    torch.manual_seed(11)
    out_a, _ = core_a(x)
    core_b = build(spec, seed=3).train()
    torch.manual_seed(11)
    out_b, _ = core_b(x)
    assert torch.equal(out_a, out_b)
    other = build(spec, seed=4)
    assert not torch.equal(other(x)[0], core_a.eval()(x)[0])


def test_lstm_and_gru_match_torch_kernels() -> None:
    x = torch.randn(T, B, INPUT)
    lstm, gru = build("lstm"), build("gru")
    assert isinstance(lstm, LSTM) and isinstance(gru, GRU)
    expected, (h, c) = lstm.rnn(x)
    out, state = lstm(x)
    assert torch.equal(out, expected) and torch.equal(state[0], h) and torch.equal(state[1], c)
    out, (h_gru, c_gru) = gru(x)
    assert torch.equal(out, gru.rnn(x)[0])
    assert torch.count_nonzero(c_gru) == 0  # a GRU's c is documented as zeros


def test_sequence_gradients_equal_step_gradients(spec: str) -> None:
    """Backward through one T-step call gives the same gradients as through T chained one-step calls."""
    x = torch.randn(T, B, INPUT)
    grads = []
    for stepwise in (False, True):
        core = build(spec)
        state = random_state()
        if stepwise:
            outs = []
            for t in range(T):
                out_t, state = core(x[t : t + 1], state)
                outs.append(out_t)
            out = torch.cat(outs)
        else:
            out, state = core(x, state)
        (out.pow(2).mean() + state[0].sum() + state[1].sum()).backward()
        grads.append({name: p.grad.clone() for name, p in core.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, grad in grads[0].items():
        assert (grad - grads[1][name]).abs().max() < 1e-5, name


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_grouped_cells_match_torch_cells(kind: str) -> None:
    """Each group of a grouped cell is torch.nn.LSTMCell / GRUCell with that group's weights."""
    groups, batch, in_size, size = 3, 4, 5, 6
    torch.manual_seed(0)
    cell = make_grouped_cell(kind, groups, in_size, size)
    x, h, c = torch.randn(groups, batch, in_size), torch.randn(groups, batch, size), torch.randn(groups, batch, size)
    h_next, c_next = cell(x, h, c)
    for g in range(groups):
        if kind == "lstm":
            reference = torch.nn.LSTMCell(in_size, size)
            # rimrl gate order (i, f, o, g) -> torch's (i, f, g, o).
            order = torch.cat([torch.arange(0, 2 * size), torch.arange(3 * size, 4 * size), torch.arange(2 * size, 3 * size)])
            bias_ih = cell.input_gates.bias[g, 0, order]
            bias_hh = torch.zeros_like(bias_ih)
        else:
            reference = torch.nn.GRUCell(in_size, size)
            order = torch.arange(3 * size)
            bias_ih, bias_hh = cell.input_gates.bias[g, 0], cell.hidden_gates.bias[g, 0]
        with torch.no_grad():
            reference.weight_ih.copy_(cell.input_gates.weight[g][:, order].t())
            reference.weight_hh.copy_(cell.hidden_gates.weight[g][:, order].t())
            reference.bias_ih.copy_(bias_ih)
            reference.bias_hh.copy_(bias_hh)
        if kind == "lstm":
            h_ref, c_ref = reference(x[g], (h[g], c[g]))
            assert (c_next[g] - c_ref).abs().max() < 1e-6
        else:
            h_ref = reference(x[g], h[g])
        assert (h_next[g] - h_ref).abs().max() < 1e-6


def test_communication_dropout_acts_within_heads_only() -> None:
    """Dropout in the all-heads communication layout: cross-head zeros stay zero, each within-head
    weight is dropped independently with probability p and the kept ones scaled by 1 / (1 - p)."""
    units, heads, batch, p = 5, 3, 400, 0.3
    rows = torch.arange(units * heads) % heads
    same_head = rows[:, None] == rows[None, :]
    weights = torch.rand(batch, units * heads, units * heads) * same_head
    torch.manual_seed(0)
    dropped = weights * within_head_dropout_mask(batch, p, units, heads, weights)
    assert torch.count_nonzero(dropped[:, ~same_head]) == 0
    kept = dropped[:, same_head] != 0
    assert torch.allclose(dropped[:, same_head][kept], weights[:, same_head][kept] / (1 - p))
    assert abs(1 - kept.float().mean().item() - p) < 0.02
    # Independent across heads: the same (u, u') pair is not dropped in all heads together.
    per_head = dropped.view(batch, units, heads, units, heads)
    diagonal = torch.stack([per_head[:, :, h, :, h] != 0 for h in range(heads)], dim=-1)  # (B, U, U, heads)
    assert (diagonal.any(-1) & ~diagonal.all(-1)).float().mean() > 0.3


def test_lstm_splits_only_at_starts_after_t0(monkeypatch: pytest.MonkeyPatch) -> None:
    core = build("lstm")
    calls: list[int] = []
    original = core._run

    def counting_run(x, state):  # noqa: ANN001, ANN202
        calls.append(x.shape[0])
        return original(x, state)

    monkeypatch.setattr(core, "_run", counting_run)
    starts = torch.zeros(T, B)
    starts[0] = 1.0
    core(torch.randn(T, B, INPUT), None, starts)
    assert calls == [T]  # starts at t = 0 only: one fused call
    calls.clear()
    starts[4, 1] = 1.0
    core(torch.randn(T, B, INPUT), None, starts)
    assert calls == [4, T - 4]


# --- RIM-specific properties -------------------------------------------------------------


def rim(cell: str = "lstm", k: int = 4, seed: int = 0, **kwargs) -> RIM:
    torch.manual_seed(seed)
    return RIM(INPUT, HIDDEN, num_units=6, k=k, cell=cell, num_tokens=3, **kwargs)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("k", [1, 4, 6])
def test_exactly_k_units_active(cell: str, k: int) -> None:
    core = rim(cell, k)
    core(torch.randn(T, B, INPUT))
    mask = core.last_active_mask
    assert mask.shape == (T, B, 6) and mask.dtype == torch.bool
    assert torch.all(mask.sum(-1) == k)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inactive_units_keep_state_bit_for_bit(cell: str) -> None:
    core = rim(cell).train()  # with dropout on, copying must still be exact
    x = torch.randn(T, B, INPUT)
    state = random_state()
    out, _ = core(x, state)
    mask = core.last_active_mask
    units = out.view(T, B, 6, HIDDEN // 6)
    previous = torch.cat([state[0].view(1, B, 6, -1), units[:-1]])
    inactive = ~mask
    assert torch.equal(units[inactive], previous[inactive])
    assert not torch.equal(units[mask], previous[mask])
    if cell == "lstm":  # c: step through and compare each step's cell state with the previous one
        c_prev, h_prev = state[1], state[0]
        for t in range(T):
            _, (h_prev, c_next) = core(x[t : t + 1], (h_prev, c_prev))
            keep = ~core.last_active_mask[0]
            assert torch.equal(c_next.view(B, 6, -1)[keep], c_prev.view(B, 6, -1)[keep])
            c_prev = c_next


def test_selection_uses_least_null_attention() -> None:
    core = rim().eval()
    x = torch.randn(1, B, INPUT)
    keys_t, _ = core.input_keys_values(x)  # (T, B * heads, d, N + 1)
    keys_t = keys_t[0].view(B, core.num_input_heads, core.input_key_size, -1)
    h0 = torch.zeros(1, B, HIDDEN)
    query = core.input_query(h0.view(B, 6, -1).transpose(0, 1)).view(6, B, core.num_input_heads, -1)
    scores = torch.einsum("ubhd,bhdn->bhun", query, keys_t) / core.input_key_size**0.5
    null_attention = scores.softmax(-1)[..., 0].mean(1)  # (B, U)
    core(x)
    chosen = core.last_active_mask[0]
    for row in range(B):
        active_null = null_attention[row][chosen[row]]
        inactive_null = null_attention[row][~chosen[row]]
        assert active_null.max() <= inactive_null.min()


@pytest.mark.parametrize("k", [2, 4])
def test_index_tie_break_picks_the_lowest_tied_units(k: int) -> None:
    """``tie_break="index"``: from a zero state every unit ties, and the lowest k indices are active;
    units that stay at zero keep tying among themselves, and the lower index goes first again."""
    core = rim(k=k, tie_break="index").eval()
    x = torch.randn(T, B, INPUT)
    core(x)
    mask = core.last_active_mask
    assert torch.all(mask.sum(-1) == k)
    assert torch.equal(mask[0], torch.arange(6).lt(k).expand(B, 6))
    by_topk = rim(k=k).eval()
    by_topk.load_state_dict(core.state_dict())
    by_topk(x)
    assert torch.all(by_topk.last_active_mask.sum(-1) == k)  # the same rule, another order among equals
    # From a random state no two units tie: both orders choose the same units, bit for bit.
    out_index, _ = core(x, random_state())
    out_topk, _ = by_topk(x, random_state())
    assert torch.equal(core.last_active_mask, by_topk.last_active_mask) and torch.equal(out_index, out_topk)


def test_null_key_and_value_are_zero() -> None:
    core = rim()
    assert core.input_key.bias is None and core.input_value.bias is None
    keys_t, values = core.input_keys_values(torch.randn(T, B, INPUT))
    assert keys_t.shape[-1] == values.shape[2] == core.num_tokens + 1
    assert torch.count_nonzero(keys_t[..., 0]) == 0
    assert torch.count_nonzero(values[:, :, 0]) == 0
    assert torch.count_nonzero(values[:, :, 1:]) > 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gradient_only_into_active_units_cells(cell: str) -> None:
    core = rim(cell)
    x = torch.randn(T, B, INPUT)
    frozen_unit = 2
    mask = torch.ones(T, B, 6, dtype=torch.bool)
    mask[..., frozen_unit] = False  # unit 2 inactive at every step and row
    mask[..., 5] = False
    out, _ = core(x, random_state(), active_mask=mask)
    out.pow(2).sum().backward()
    for grouped in (core.cell.input_gates, core.cell.hidden_gates):
        for param in (p for p in (grouped.weight, grouped.bias) if p is not None):
            per_unit = param.grad.flatten(1).abs().sum(1)
            assert per_unit[frozen_unit] == 0 and per_unit[5] == 0
            assert torch.all(per_unit[[0, 1, 3, 4]] > 0)
    # Its query gets no gradient either (its attended input feeds only its discarded update).
    assert core.input_query.weight.grad[frozen_unit].abs().sum() == 0
    # Gradient still flows through the copied state in time: the initial state gets gradient.
    state = [s.clone().requires_grad_(True) for s in random_state()]
    out, _ = core(x, tuple(state), active_mask=mask)
    out.sum().backward()
    unit_grad = state[0].grad.view(B, 6, -1)[:, frozen_unit]
    assert unit_grad.abs().sum() > 0


def test_selected_mask_carries_no_gradient() -> None:
    core = rim()
    core(torch.randn(T, B, INPUT, requires_grad=True))
    assert not core.last_active_mask.requires_grad


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be"),
        ({"k": 7}, "k must be"),
        ({"num_units": 5}, "hidden_size"),
        ({"num_units": 7, "k": 2}, "hidden_size"),
        ({"num_tokens": 5}, "input_size"),
        ({"cell": "rnn"}, "cell must be"),
        ({"input_dropout": 1.5}, "input_dropout"),
        ({"num_comm_heads": 0}, "num_comm_heads"),
    ],
)
def test_bad_rim_hyperparameters_raise(kwargs: dict, message: str) -> None:
    params = {"num_units": 6, "k": 4, "num_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        RIM(INPUT, HIDDEN, **params)


def test_make_core_rejects_unknown_names_and_arguments() -> None:
    with pytest.raises(UnknownCoreError, match="unknown core 'transformer'.*register_core"):
        make_core("transformer", INPUT, HIDDEN)
    with pytest.raises(ValueError, match="bad arguments"):
        make_core("lstm", INPUT, HIDDEN, num_units=6)
    with pytest.raises(ValueError, match="input_size"):
        make_core("lstm", 0, HIDDEN)


def test_bad_input_shapes_raise() -> None:
    core = build("rim-lstm")
    with pytest.raises(ValueError, match="x must have shape"):
        core(torch.randn(T, B, INPUT + 1))
    with pytest.raises(ValueError, match="episode_starts"):
        core(torch.randn(T, B, INPUT), None, torch.zeros(T, B + 1))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_learned_initial_state_breaks_first_step_ties(cell: str) -> None:
    """With zeros every unit's first query is zero: all tie on the null slot, and top-k picks the same
    units whatever the observation. A learned initial state makes the first choice depend on it."""
    torch.manual_seed(0)
    x = torch.randn(1, 64, 16)
    zero = RIM(16, 48, num_units=6, k=3, cell=cell, input_dropout=0.0, comm_dropout=0.0).eval()
    zero.record_attention = True
    zero(x)
    assert torch.equal(zero.last_input_attention[..., 0], torch.full((1, 64, 6), 0.5))  # a tie
    assert len({tuple(row.tolist()) for row in zero.last_active_mask[0]}) == 1
    learned = RIM(16, 48, num_units=6, k=3, cell=cell, learn_initial_state=True).eval()
    out, (h, c) = learned(x)
    assert len({tuple(row.tolist()) for row in learned.last_active_mask[0]}) > 1
    assert learned.h_init.shape == (6, 1, 8) and (learned.c_init is None) == (cell == "gru")
    # Inactive units keep the initial state exactly; state=None and a reset both start from it.
    h0, c0 = learned.initial_state(64, x)
    inactive = ~learned.last_active_mask[0]  # (B, U)
    units = lambda t: t[0].view(64, 6, 8)  # noqa: E731
    assert torch.equal(units(out)[inactive], units(h0)[inactive])
    starts = torch.ones(1, 64)
    again, _ = learned(x, (torch.randn(1, 64, 48), torch.randn(1, 64, 48)), starts)
    assert torch.equal(again, out)
    # Its gradient flows only from rows that start from it.
    learned.zero_grad()
    learned(x, (h0.detach(), c0.detach()), torch.zeros(1, 64))[0].sum().backward()
    assert learned.h_init.grad is None or not learned.h_init.grad.any()
    learned(x)[0].sum().backward()
    assert learned.h_init.grad.abs().sum() > 0


def test_learn_initial_state_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="learn_initial_state must be a bool"):
        RIM(16, 48, learn_initial_state="yes")


def test_position_competition_lets_each_token_be_read_by_position_k_units() -> None:
    torch.manual_seed(0)
    core = RIM(8 * 4, 48, num_units=6, k=4, num_tokens=8, position_k=2, learn_initial_state=True).eval()
    core.record_attention = True
    x = torch.randn(5, 3, 32)
    core(x)
    attention = core.last_input_attention  # (T, B, U, N + 1)
    readers = (attention[..., 1:] > 0).sum(dim=2)  # units reading each real token
    assert torch.equal(readers, torch.full_like(readers, 2))
    assert (attention[..., 0] > 0).all()  # every unit still sees the null slot
    assert torch.equal(core.last_active_mask.sum(-1), torch.full((5, 3), 4))  # k active, as before
    with pytest.raises(ValueError, match="position_k must be None or an integer in"):
        RIM(32, 48, num_units=6, num_tokens=8, position_k=7)


# ----------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------


def test_registered_core_is_listed_and_built_by_name() -> None:
    assert core_names()[:4] == BUILTIN_CORES and toy_plugin.TOY_CORE in core_names()
    assert CORES["toy"] is toy_plugin.make_toy
    spec = core_spec("toy")
    assert (spec.inputs, spec.hidden_size, spec.preset, spec.builtin) == (("vector",), 16, "lstm", False)
    assert isinstance(make_core("toy", INPUT, HIDDEN, scale=2.0), toy_plugin.ToyRNN)
    with pytest.raises(ValueError, match="bad arguments for core 'toy'"):
        make_core("toy", INPUT, HIDDEN, num_units=3)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("lstm", LSTM), {}, "one of rimrl's own cores"),
        (("My Core", LSTM), {}, "core name must match"),
        (("mine", "not callable"), {}, "must be callable"),
        (("mine", LSTM), {"inputs": ("pixels",)}, "inputs for core 'mine'"),
        (("mine", LSTM), {"hidden_size": 0}, "hidden_size"),
        (("mine", LSTM), {"preset": "toy"}, "preset for core 'mine'"),
        (("mine", LSTM), {"default_kwargs": {"num_tokens": 2}}, "comes from the encoder"),
    ],
)
def test_register_core_rejects_bad_registrations(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_core(*args, **kwargs)
    assert "mine" not in core_names()


def test_a_factory_that_breaks_the_contract_is_named() -> None:
    register_core("wrong-width", lambda input_size, hidden_size: LSTM(input_size, hidden_size + 1))
    try:
        with pytest.raises(ValueError, match="'wrong-width' does not follow the core contract"):
            make_core("wrong-width", INPUT, HIDDEN)
    finally:
        unregister_core("wrong-width")
    assert "wrong-width" not in core_names() and "wrong-width" not in CORES
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister_core("rim")
