"""The TIMAR network: config and presets, backbone, diffusion head, speech encoders, checkpoints."""
