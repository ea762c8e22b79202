"""CLI-only tools (Ray allowed here, imported lazily): sweeps, GPU sizing, config docs, the generation
demo. Nothing on the training path imports this package."""
