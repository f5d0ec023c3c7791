"""Torch core <-> JAX core: the same parameters under the JAX cores' names, in the same layouts.

>>> core, params = from_torch(torch_rim)            # doctest: +SKIP
>>> out, state, active = core(params, x, None, episode_starts)
>>> load_into_torch(core, params, torch_rim)        # and back

Conversion keeps values exactly (float64 stays float64; ``dtype`` casts). The torch core's
dropout is not carried over: the JAX cores compute its evaluation-mode function.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
import torch

from rimrl.jax.cores import GRU, LSTM, RIM, SRM, JaxCore, ModularSettings, Params

__all__ = ["from_torch", "jax_core_for", "load_into_torch", "torch_names"]

#: JAX name -> torch ``state_dict`` name, per kind (entries a core does not have are skipped).
_MODULAR_NAMES = {
    "input_query": "input_query.weight",
    "input_key": "input_key.weight",
    "input_value": "input_value.weight",
    "cell_input_weight": "cell.input_gates.weight",
    "cell_input_bias": "cell.input_gates.bias",
    "cell_hidden_weight": "cell.hidden_gates.weight",
    "cell_hidden_bias": "cell.hidden_gates.bias",
    "comm_qkv": "comm_qkv.weight",
    "comm_out_weight": "comm_out.weight",
    "comm_out_bias": "comm_out.bias",
    "h_init": "h_init",
    "c_init": "c_init",
}
_SRM_NAMES = {
    **_MODULAR_NAMES,
    "token_positions": "token_positions",
    "position_first_weight": "position_encoder.first.weight",
    "position_first_bias": "position_encoder.first.bias",
    "position_last_weight": "position_encoder.last.weight",
    "position_last_bias": "position_encoder.last.bias",
    "log_sigma": "log_sigma",
    "module_embedding": "module_embedding",
}
_RNN_NAMES = {
    "weight_ih": "rnn.weight_ih_l0",
    "weight_hh": "rnn.weight_hh_l0",
    "bias_ih": "rnn.bias_ih_l0",
    "bias_hh": "rnn.bias_hh_l0",
}


def jax_core_for(core: torch.nn.Module, tie_break: str | None = None) -> JaxCore:
    """The JAX core with ``core``'s settings (a rimrl LSTM, GRU, RIM or SRM core, one layer).

    ``tie_break`` (modular cores; ``None``: the torch core's own ``tie_break``): ``"torch"`` breaks
    exact ties in the unit selection as ``torch.topk`` does, by calling it on the host, so a model
    trained with the torch default makes the same choices; ``"index"`` (lower index first) stays in
    JAX, jits on any device and is what a torch core built with ``tie_break="index"`` does.

    :raises ValueError: another module, a stack (``num_layers > 1``), or an LSTM/GRU without biases.
    """
    from rimrl.cores import GRU as TorchGRU
    from rimrl.cores import LSTM as TorchLSTM
    from rimrl.cores import RIM as TorchRIM
    from rimrl.cores import SRM as TorchSRM

    if isinstance(core, (TorchLSTM, TorchGRU)):
        if core.num_layers != 1 or not core.rnn.bias:
            raise ValueError("rimrl.jax converts one-layer LSTM/GRU cores with biases (num_layers=1, bias=True)")
        cls = LSTM if isinstance(core, TorchLSTM) else GRU
        return cls(input_size=core.input_size, hidden_size=core.hidden_size)
    if not isinstance(core, (TorchRIM, TorchSRM)):
        raise ValueError(f"rimrl.jax converts rimrl's LSTM, GRU, RIM and SRM cores, not {type(core).__name__}")
    srm = isinstance(core, TorchSRM)
    settings = ModularSettings(
        input_size=core.input_size, hidden_size=core.hidden_size, num_units=core.num_units, k=core.k,
        cell=core.cell_kind, num_tokens=core.num_tokens, input_key_size=core.input_key_size,
        input_value_size=core.input_value_size, num_input_heads=core.num_input_heads,
        comm_key_size=core.comm_key_size, comm_value_size=core.comm_value_size,
        num_comm_heads=core.num_comm_heads, comm_out=core.comm_out is not None,
        learn_initial_state=core.learn_initial_state, position_k=core.position_k,
        tau=core.tau if srm else None, zero_tokens_absent=core.zero_tokens_absent if srm else False,
        position_lr_scale=core.position_encoder.lr_scale if srm else 1.0,
        tie_break=tie_break or core.tie_break,
    )
    return (SRM if srm else RIM)(settings=settings)


def torch_names(core: JaxCore) -> dict[str, str]:
    """JAX parameter name -> torch ``state_dict`` name for ``core``'s kind."""
    return {"lstm": _RNN_NAMES, "gru": _RNN_NAMES, "rim": _MODULAR_NAMES, "srm": _SRM_NAMES}[core.kind]


def from_torch(core: torch.nn.Module, dtype: Any = None, tie_break: str | None = None) -> tuple[JaxCore, Params]:
    """``(jax_core, params)`` with ``core``'s settings and parameter values (``dtype``: cast to it;
    ``tie_break``: see :func:`jax_core_for`)."""
    jax_core = jax_core_for(core, tie_break)
    state = core.state_dict()
    params = {}
    for name, torch_name in torch_names(jax_core).items():
        if torch_name in state:
            value = state[torch_name].detach().cpu().numpy()
            params[name] = jnp.asarray(value if dtype is None else value.astype(dtype))
    return jax_core, params


def load_into_torch(core: JaxCore, params: Params, torch_core: torch.nn.Module) -> torch.nn.Module:
    """Copy ``params`` into ``torch_core`` (a core with the same settings), in place; returns it.

    :raises ValueError: ``torch_core``'s settings differ from ``core``'s, or a parameter is missing.
    """
    if jax_core_for(torch_core, getattr(getattr(core, "settings", None), "tie_break", None)) != core:
        raise ValueError("the torch core's settings differ from the JAX core's")
    state = torch_core.state_dict()
    names = torch_names(core)
    missing = [name for name, torch_name in names.items() if torch_name in state and name not in params]
    if missing:
        raise ValueError(f"params lack {missing}")
    update = {names[name]: torch.from_numpy(np.array(value)).to(state[names[name]].dtype)
              for name, value in params.items() if names.get(name) in state}
    torch_core.load_state_dict(update, strict=False)
    return torch_core
