"""The build engine: context, overlay, sandbox, copy, cache, progress."""
