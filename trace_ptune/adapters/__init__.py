"""The soft-prompt artifact: format, hashing, integrity, PEFT import/export and the local store.

- :class:`~trace_ptune.adapters.artifact.SoftPrompt`: tensors + manifest, saved as a directory.
- :func:`~trace_ptune.adapters.hashing.adapter_hash`: the content hash shared by every span.
- :class:`~trace_ptune.adapters.store.AdapterStore`: content-addressed store with names,
  versions, lineage and deployments.
- :func:`~trace_ptune.adapters.peft_interop.import_peft` / ``export_peft``: PEFT directories.

Names are re-exported lazily, so importing this package does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trace_ptune._lazy import lazy_exports

_EXPORTS = {
    "SoftPrompt": "trace_ptune.adapters.artifact",
    "adapter_hash": "trace_ptune.adapters.hashing",
    "AdapterStore": "trace_ptune.adapters.store",
    "import_peft": "trace_ptune.adapters.peft_interop",
    "export_peft": "trace_ptune.adapters.peft_interop",
}

__all__ = ["AdapterStore", "SoftPrompt", "adapter_hash", "export_peft", "import_peft"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:
    from trace_ptune.adapters.artifact import SoftPrompt
    from trace_ptune.adapters.hashing import adapter_hash
    from trace_ptune.adapters.peft_interop import export_peft, import_peft
    from trace_ptune.adapters.store import AdapterStore
