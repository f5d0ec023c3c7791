"""rimrl.agents."""
