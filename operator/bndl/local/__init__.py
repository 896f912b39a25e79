"""The embedded cluster: worker processes on this machine, driven over HTTP."""

from bndl.local.cluster import LocalCluster

__all__ = ["LocalCluster"]
