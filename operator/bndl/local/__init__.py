"""The embedded cluster: worker processes on this machine, driven over HTTP."""
