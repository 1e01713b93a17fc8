"""The project's own trained models and everything that knows their domain (MNIST).

The zoo is one *user* of the library: ``dipgo.cache`` and ``dipgo.models`` never import it. The CLI and
the evaluation resolve MODEL arguments through :func:`resolve`, which reads a folder's ``dipgo.json``.
"""

from .registry import ModelSource, load, resolve, zoo_names, zoo_root

__all__ = ["ModelSource", "load", "resolve", "zoo_names", "zoo_root"]
