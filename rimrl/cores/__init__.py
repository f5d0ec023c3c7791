"""rimrl.cores."""
