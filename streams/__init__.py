"""Everything that moves events: runtimes, replay, CLI, SDK, metrics."""
