"""The ``mplogin`` command: runs the gateway and the workers, and holds the tools around them.

The only package that imports both ``gateway`` and ``auth_worker`` (docs/architecture.md).
"""
