"""rimrl.policies."""
