"""The bottom layer: file writes that never leave half a file (:mod:`.fsio`), content-keyed caches
(:mod:`.keyed_cache`) and the provenance record every report and export carries (:mod:`.provenance`).

Nothing here imports another emoctl package but :mod:`emoctl.errors`, so every layer above may use it.
"""
