"""bndl: run DAGs of Python tasks on worker processes, locally or on Kubernetes."""

__version__ = "0.1.0"
