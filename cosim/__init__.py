"""cosim: run real containerised edge services inside a deterministic, virtual-time co-simulation."""

__version__ = "0.1.0"
