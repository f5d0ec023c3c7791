"""rimrl.cli."""
