"""Task code for the manifests in ``examples/``: plain functions taking and returning JSON data.

Manifests name them as ``bndl_examples.<module>:<function>``; they are importable when
``examples/`` is on ``sys.path`` (the manifests' ``code.pythonPath: ["."]`` does that for
``bndl run``) or when this package is installed in the worker image.
"""
