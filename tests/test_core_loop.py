"""The modular cores' hand-written backward through time (``rimrl/cores/loop.py``) and the
reassociated token projections (``ModularCore.attention_operands``), checked against numerical
gradients and against the paper's order of products."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from rimrl.cores import RIM, SRM
from rimrl.cores.grouped import make_grouped_cell, tanh_via_sigmoid

T, B = 4, 3

# Each config exercises a different branch of the loop and its backward.
GRADCHECK_CORES = {
    # one head, 2-d tokens: keys and values folded into the unit weights; a mid-sequence reset
    "rim-lstm-folded-reset": lambda: RIM(8, 12, num_units=3, k=2, num_tokens=4, input_key_size=4,
                                         comm_key_size=3, num_comm_heads=2),
    # two input heads (nothing folded), GRU cells, a communication output projection
    "rim-gru-heads-out": lambda: RIM(12, 12, num_units=3, k=2, cell="gru", num_tokens=3, num_input_heads=2,
                                     input_key_size=3, input_value_size=2, comm_key_size=3,
                                     comm_value_size=3, num_comm_heads=2),
    # keys folded, values not (tokens wider than the values)
    "rim-gru-keys-folded": lambda: RIM(9, 12, num_units=3, k=2, cell="gru", num_tokens=3, input_key_size=4,
                                       input_value_size=2, comm_key_size=3, num_comm_heads=2),
    # a learned initial state (LSTM: h and c) that the mid-sequence reset sets
    "rim-lstm-learned-init": lambda: RIM(8, 12, num_units=3, k=2, num_tokens=1, input_key_size=4, comm_key_size=3,
                                         num_comm_heads=2, learn_initial_state=True),
    "rim-gru-learned-init": lambda: RIM(8, 12, num_units=3, k=2, cell="gru", num_tokens=2, input_key_size=4,
                                        comm_key_size=3, num_comm_heads=2, learn_initial_state=True),
    # per-position competition over a token set, two heads
    "rim-position-k": lambda: RIM(12, 12, num_units=3, k=2, num_tokens=3, position_k=1, num_input_heads=2,
                                  input_key_size=3, comm_key_size=3, num_comm_heads=2),
    # dropout on both attentions (the same masks in every evaluation: seeded)
    "rim-dropout": lambda: RIM(12, 12, num_units=3, k=1, num_tokens=2, input_key_size=4, comm_key_size=3,
                               num_comm_heads=2, input_dropout=0.3, comm_dropout=0.3),
    # SRM: gradients into the kernel terms (embeddings, learnt sigma); every module active
    "srm-all-active": lambda: SRM(12, 12, num_modules=3, num_tokens=2, learn_sigma=True, tau=-1.0,
                                  input_key_size=4, comm_key_size=3, num_comm_heads=2),
    # SRM with top-k and modules outside every token's support
    "srm-topk-eligible": lambda: SRM(8, 12, num_modules=3, num_tokens=4, k=2, tau=0.0, input_key_size=4,
                                     comm_key_size=3, num_comm_heads=2),
}  # fmt: skip


@pytest.mark.parametrize("name", list(GRADCHECK_CORES))
def test_backward_matches_numerical_gradients(name: str) -> None:
    torch.manual_seed(0)
    core = GRADCHECK_CORES[name]().double()
    if "dropout" not in name:
        core.eval()
    # With a truncated kernel, moving the embeddings can move a module's support: a jump that
    # numerical gradients cannot follow. Their gradients are checked where nothing is truncated.
    frozen = ("module_embedding", "position_encoder") if "topk" in name else ()
    names = [n for n, _ in core.named_parameters() if not n.startswith(frozen)]
    params = [p.detach().clone().requires_grad_(True) for n, p in core.named_parameters() if n in names]
    x = torch.randn(T, B, core.input_size, dtype=torch.double, requires_grad=True)
    h0, c0 = (torch.randn(1, B, core.hidden_size, dtype=torch.double, requires_grad=True) for _ in range(2))
    starts = torch.zeros(T, B, dtype=torch.double)
    starts[2, 1] = 1.0

    def run(x, h0, c0, *weights):
        torch.manual_seed(123)  # the same dropout masks in every evaluation
        out, (h, c) = functional_call(core, dict(zip(names, weights, strict=True)), (x, (h0, c0), starts), strict=False)
        return out, h, c

    assert torch.autograd.gradcheck(run, (x, h0, c0, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_backward_with_a_fixed_mask_matches_numerical_gradients() -> None:
    torch.manual_seed(0)
    core = RIM(12, 12, num_units=3, k=2, num_tokens=2, input_key_size=4, comm_key_size=3,
               num_comm_heads=1, comm_value_size=5).double().eval()  # fmt: skip
    mask = torch.rand(T, B, 3) > 0.5
    x = torch.randn(T, B, 12, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(1, B, 12, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, h0: core(x, (h0, torch.zeros_like(h0)), active_mask=mask)[0], (x, h0), eps=1e-6, atol=1e-5
    )


@pytest.mark.parametrize("core_cls", [RIM, SRM])
def test_folded_projections_equal_the_papers_order(core_cls: type) -> None:
    torch.manual_seed(0)
    kwargs = {"num_units": 6, "k": 3} if core_cls is RIM else {"cell": "gru"}
    core = core_cls(64, 48, num_tokens=8, **kwargs).eval()  # 8-d tokens: keys and values folded
    x = torch.randn(5, 4, 64, requires_grad=True)
    results = []
    for fold in (True, False):
        core.fold_projections = fold
        out, _ = core(x)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *core.parameters()], allow_unused=True)
        results.append((out, grads, core.last_active_mask))
    (out_a, grads_a, mask_a), (out_b, grads_b, mask_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=1e-6)
    assert torch.equal(mask_a, mask_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_step_backward_equals_autograd(kind: str) -> None:
    torch.manual_seed(0)
    cell = make_grouped_cell(kind, 3, 5, 4).double()
    x, h, c = (torch.randn(3, 2, n, dtype=torch.double, requires_grad=True) for n in (5, 4, 4))
    weight, bias = cell.hidden_projection()
    hidden_gates = torch.baddbmm(bias, h, weight).detach().requires_grad_(True)
    input_weight = cell.input_projection()[0]
    h_next, c_next, saved = cell.step(x, input_weight, hidden_gates, h, c)
    grad_h, grad_c = torch.randn_like(h_next), torch.randn_like(c_next)
    expected = torch.autograd.grad((h_next, c_next), (x, hidden_gates, h, c), (grad_h, grad_c), allow_unused=True)
    with torch.no_grad():
        grad_input_gates, grad_hidden_gates, grad_h_direct, grad_c_in = cell.step_backward(saved, grad_h, grad_c)
    expected = [torch.zeros_like(t) if g is None else g for g, t in zip(expected, (x, hidden_gates, h, c), strict=True)]
    torch.testing.assert_close(torch.bmm(grad_input_gates, input_weight.transpose(1, 2)), expected[0])
    torch.testing.assert_close(grad_hidden_gates, expected[1])
    torch.testing.assert_close(torch.zeros_like(h) if grad_h_direct is None else grad_h_direct, expected[2])
    torch.testing.assert_close(grad_c_in, expected[3])


def test_tanh_via_sigmoid_is_tanh() -> None:
    x = torch.linspace(-20, 20, 100_001)
    torch.testing.assert_close(tanh_via_sigmoid(x), torch.tanh(x), rtol=0, atol=3e-7)


def test_no_grad_call_matches_grad_call() -> None:
    core = RIM(64, 48, num_units=6, k=3, num_tokens=8).eval()
    x = torch.randn(6, 3, 64)
    with torch.no_grad():
        out_no_grad, _ = core(x)
    out, _ = core(x.requires_grad_(True))
    assert out.requires_grad and not out_no_grad.requires_grad
    assert torch.equal(out.detach(), out_no_grad)


def test_double_backward_raises_a_clear_error() -> None:
    core = RIM(64, 48, num_units=6, k=3, num_tokens=8).eval()
    x = torch.randn(3, 2, 64, requires_grad=True)
    (grad_x,) = torch.autograd.grad(core(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()


def test_backward_with_absent_tokens_matches_numerical_gradients() -> None:
    """SRM with zero tokens absent: per-step eligibility and -inf token logits in the loop."""
    torch.manual_seed(0)
    core = SRM(12, 12, num_modules=3, num_tokens=3, tau=0.0, k=2, zero_tokens_absent=True, input_key_size=4,
               comm_key_size=3, num_comm_heads=2).double().eval()
    frozen = ("module_embedding", "position_encoder")  # moving them moves supports: not differentiable
    names = [n for n, _ in core.named_parameters() if not n.startswith(frozen)]
    params = [p.detach().clone().requires_grad_(True) for n, p in core.named_parameters() if n in names]
    x = torch.randn(T, B, 3, 4, dtype=torch.double)
    x[1, 0, 1:] = 0.0
    x[2, 2, 0] = 0.0
    x = x.flatten(2)  # fixed: perturbing an absent token would make it present
    h0, c0 = (torch.randn(1, B, 12, dtype=torch.double, requires_grad=True) for _ in range(2))

    def run(h0, c0, *weights):
        out, (h, c) = functional_call(core, dict(zip(names, weights, strict=True)), (x, (h0, c0)), strict=False)
        return out, h, c

    assert torch.autograd.gradcheck(run, (h0, c0, *params), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
