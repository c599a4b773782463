"""How the payoff is measured: uniform's frontier and speed-ups read off it (frontier), the
comparison table and plot (report)."""
