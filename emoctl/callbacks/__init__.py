"""Lightning callbacks: the glue between models, data and files."""
from __future__ import annotations

from emoctl.callbacks.activation_harvester import ActivationHarvester
from emoctl.callbacks.export import ModelExport
from emoctl.callbacks.run_folder_lock import RunFolderLock
from emoctl.callbacks.sae_export import SAEExport

__all__ = ["ActivationHarvester", "ModelExport", "RunFolderLock", "SAEExport"]
