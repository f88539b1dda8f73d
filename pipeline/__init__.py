"""Cache ViT activations once in zarr; fit probes, SAEs and interventions on the cache."""

__version__ = "0.1.0"
