"""Training: mesh and sharding rules (sharding), optimizer and trainable parts (optim), state and step (state)."""
