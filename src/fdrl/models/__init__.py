"""Models. They never read files: inputs arrive as tensors in a :class:`Inputs`."""
