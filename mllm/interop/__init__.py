"""Interoperability with the LLaVA ecosystem: import LLaVA's own and llava-hf checkpoints, export to llava-hf.

One module per format (`llava`, `llava_hf` + `export_hf`/`hf_processor`); `source` reads model directories,
`assemble` builds and checks our parts from foreign tensors, `imported`/`output` write checkpoints whole.
"""
from .source import InteropError

__all__ = ["InteropError", "export_checkpoint", "import_checkpoint"]


def __getattr__(name):  # heavy modules load on first use
    if name == "import_checkpoint":
        from .importer import import_checkpoint

        return import_checkpoint
    if name == "export_checkpoint":
        from .export_hf import export_checkpoint

        return export_checkpoint
    raise AttributeError(name)
