"""rimrl: modular recurrent cores (RIMs, S2RMs) for sb3-contrib's RecurrentPPO."""

__version__ = "0.1.0"
