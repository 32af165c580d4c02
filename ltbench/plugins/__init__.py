"""The plugin system: discovery (the catalog), the method and reporter base classes, the core defaults, the
testing kit and its pytest plugin, the new-plugin scaffold and the generated reference docs."""
