"""rimrl.evaluation."""
