"""ltbench's built-in method plugins.

Each module here is registered through the ``ltbench`` entry-point group in
ltbench's ``pyproject.toml``, exactly as a third-party plugin package would
register its own: the built-ins have no privileged path.
"""
