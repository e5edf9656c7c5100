"""Live use: turn assembly, the live loop, frame scheduling, streaming generation, robot head mapping."""
