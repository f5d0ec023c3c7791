"""rimrl.jax (issue 17, items 1-2): the JAX cores against the torch cores, in float64.

For every core and cell kind (and RIM's options: heads, per-position competition, a learned
initial state, an output projection; SRM's absent tokens and top-k cap): outputs, final states and
active masks agree to 1e-10 on random inputs with resets mid-sequence, and so do the gradients of
a random linear loss with respect to every parameter, the input and the initial state. Skipped
with one line when JAX is not installed (``pip install 'rimrl[jax]'``; ``make test`` installs it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="rimrl.jax needs the jax extra: pip install 'rimrl[jax]'")
import jax.numpy as jnp  # noqa: E402

from rimrl.cores import GRU, LSTM, RIM, SRM  # noqa: E402
from rimrl.jax import from_torch, load_into_torch  # noqa: E402

T, B, D = 9, 3, 12
TOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def float64():
    """float64 in JAX for this module only (a global switch: the other modules run in float32)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)

CASES = {
    "lstm": lambda: LSTM(D, 10),
    "gru": lambda: GRU(D, 10),
    "rim-lstm": lambda: RIM(D, 24, num_units=4, k=2, num_tokens=3),
    "rim-gru": lambda: RIM(D, 24, num_units=4, k=2, num_tokens=3, cell="gru"),
    "rim-heads": lambda: RIM(D, 24, num_units=4, k=3, num_tokens=3, num_input_heads=2, num_comm_heads=2),
    "rim-position-k": lambda: RIM(D, 24, num_units=4, k=2, num_tokens=3, position_k=2),
    "rim-learned-init": lambda: RIM(D, 24, num_units=4, k=2, num_tokens=3, learn_initial_state=True),
    "rim-comm-out": lambda: RIM(D, 24, num_units=4, k=2, num_tokens=3, comm_value_size=5, num_comm_heads=2),
    "rim-one-token": lambda: RIM(D, 30, num_units=6, k=4),
    "rim-index-ties": lambda: RIM(D, 30, num_units=6, k=4, tie_break="index"),  # zero-state ties, by index
    "srm-lstm": lambda: SRM(D, 24, num_modules=4, num_tokens=4, tau=0.3),
    "srm-gru": lambda: SRM(D, 24, num_modules=4, num_tokens=4, tau=0.3, cell="gru"),
    "srm-absent-k": lambda: SRM(D, 24, num_modules=4, num_tokens=4, tau=0.5, k=2, zero_tokens_absent=True,
                                learn_sigma=True),
}


def _inputs(core: torch.nn.Module, seed: int) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, D, generator=generator, dtype=torch.float64)
    if getattr(core, "zero_tokens_absent", False):
        x[2, 1, :3] = 0  # token 0 of row 1 absent at step 2
        x[4:6, 0, 3:6] = 0
    starts = torch.zeros(T, B, dtype=torch.float64)
    starts[0, 0] = 1
    starts[4, 1] = starts[7, 2] = 1  # resets mid-sequence
    h0 = torch.randn(1, B, core.hidden_size, generator=generator, dtype=torch.float64)
    c0 = torch.randn(1, B, core.hidden_size, generator=generator, dtype=torch.float64)
    return x, starts, (h0, c0)


def _jax(a: torch.Tensor) -> jax.Array:
    return jnp.asarray(a.detach().numpy())


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_states_masks_and_gradients_agree(case: str) -> None:
    torch.manual_seed(0)
    core = CASES[case]().double().eval()
    x, starts, (h0, c0) = _inputs(core, seed=1)
    generator = torch.Generator().manual_seed(2)
    w_out = torch.randn(T, B, core.hidden_size, generator=generator, dtype=torch.float64)
    w_h, w_c = (torch.randn(B, core.hidden_size, generator=generator, dtype=torch.float64) for _ in range(2))

    x.requires_grad_(True)
    h0.requires_grad_(True)
    c0.requires_grad_(True)
    out, (h, c) = core(x, (h0, c0), starts)
    loss = (out * w_out).sum() + (h[0] * w_h).sum() + (c[0] * w_c).sum()
    names = [n for n, p in core.named_parameters() if p.requires_grad]
    torch_grads = torch.autograd.grad(loss, [x, h0, c0, *(dict(core.named_parameters())[n] for n in names)],
                                      allow_unused=True)
    modular = isinstance(core, RIM | SRM)
    torch_mask = core.last_active_mask.numpy() if modular else None

    jax_core, params = from_torch(core)

    def run(params, x, h0, c0):
        result = jax_core(params, x, (h0, c0), _jax(starts))
        return result[0], result[1], result[2] if modular else None

    def jax_loss(params, x, h0, c0):
        out, (h, c), _ = run(params, x, h0, c0)
        return (out * _jax(w_out)).sum() + (h * _jax(w_h)).sum() + (c * _jax(w_c)).sum()

    j_out, (j_h, j_c), j_mask = jax.jit(run)(params, _jax(x), _jax(h0[0]), _jax(c0[0]))
    np.testing.assert_allclose(np.asarray(j_out), out.detach().numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(j_h), h[0].detach().numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(j_c), c[0].detach().numpy(), rtol=0, atol=TOL)
    if modular:
        np.testing.assert_array_equal(np.asarray(j_mask), torch_mask)
        assert torch_mask.any() and (not torch_mask.all() or case.startswith("srm-lstm") or case == "srm-gru")

    grads = jax.jit(jax.grad(jax_loss, argnums=(0, 1, 2, 3)))(params, _jax(x), _jax(h0[0]), _jax(c0[0]))
    (g_params, g_x, g_h0, g_c0) = grads
    np.testing.assert_allclose(np.asarray(g_x), torch_grads[0].numpy(), rtol=0, atol=TOL)
    np.testing.assert_allclose(np.asarray(g_h0), torch_grads[1][0].numpy(), rtol=0, atol=TOL)
    expected_c0 = np.zeros_like(np.asarray(g_c0)) if torch_grads[2] is None else torch_grads[2][0].numpy()
    np.testing.assert_allclose(np.asarray(g_c0), expected_c0, rtol=0, atol=TOL)
    by_torch_name = {torch_name: name for name, torch_name in _names(jax_core).items()}
    checked = 0
    for name, grad in zip(names, torch_grads[3:], strict=True):
        jax_grad = np.asarray(g_params[by_torch_name[name]])
        expected = np.zeros_like(jax_grad) if grad is None else grad.numpy()
        np.testing.assert_allclose(jax_grad, expected, rtol=0, atol=TOL, err_msg=f"{case}: d loss / d {name}")
        checked += 1
    assert checked == len(names) >= 4


def _names(core):
    from rimrl.jax import torch_names

    return torch_names(core)


def test_params_round_trip_into_a_fresh_torch_core() -> None:
    torch.manual_seed(0)
    source = SRM(D, 24, num_modules=4, num_tokens=4, tau=0.3).double().eval()
    jax_core, params = from_torch(source)
    params = jax.tree_util.tree_map(lambda a: a * 1.5, params)  # changed in JAX ...
    torch.manual_seed(1)
    target = SRM(D, 24, num_modules=4, num_tokens=4, tau=0.3).double().eval()
    load_into_torch(jax_core, params, target)  # ... and carried back
    x, starts, state = _inputs(target, seed=3)
    out, _ = target(x, state, starts)
    j_out = jax_core(params, _jax(x), (_jax(state[0][0]), _jax(state[1][0])), _jax(starts))[0]
    np.testing.assert_allclose(np.asarray(j_out), out.detach().numpy(), rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="settings differ"):
        load_into_torch(jax_core, params, SRM(D, 24, num_modules=4, num_tokens=4, tau=0.4))


def test_index_tie_break_is_pure_jax_and_agrees_with_torch_index_cores() -> None:
    """``tie_break="index"``: the lower index among equal null attentions, in torch and in JAX (no
    host callback); the torch default's order differs on ties and is reproduced by a callback."""
    torch.manual_seed(0)
    core = RIM(D, 24, num_units=4, k=2, num_tokens=3, tie_break="index").double().eval()
    x, starts, _ = _inputs(core, seed=4)
    out, _ = core(x, None, starts)  # zero state: every reset step is a tie
    jax_core, params = from_torch(core)
    assert jax_core.settings.tie_break == "index"
    assert "callback" not in str(jax.make_jaxpr(jax_core)(params, _jax(x), None, _jax(starts)))
    j_out, _, mask = jax_core(params, _jax(x), None, _jax(starts))
    np.testing.assert_allclose(np.asarray(j_out), out.detach().numpy(), rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.asarray(mask[0]), [[True, True, False, False]] * B)  # all tie at t = 0
    np.testing.assert_array_equal(np.asarray(mask), core.last_active_mask.numpy())
    torch_order = RIM(D, 24, num_units=4, k=2, num_tokens=3).double().eval()
    torch_order.load_state_dict(core.state_dict())
    torch_order(x, None, starts)
    assert not np.array_equal(torch_order.last_active_mask.numpy(), core.last_active_mask.numpy())
    assert "callback" in str(jax.make_jaxpr(from_torch(torch_order)[0])(params, _jax(x), None, _jax(starts)))
    with pytest.raises(ValueError, match="tie_break must be one of"):
        RIM(D, 24, num_units=4, k=2, tie_break="random")


def test_conversion_refuses_what_it_cannot_express() -> None:
    with pytest.raises(ValueError, match="one-layer"):
        from_torch(LSTM(D, 10, num_layers=2))
    with pytest.raises(ValueError, match="not Linear"):
        from_torch(torch.nn.Linear(3, 3))
