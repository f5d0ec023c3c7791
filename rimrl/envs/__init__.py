"""rimrl.envs."""
