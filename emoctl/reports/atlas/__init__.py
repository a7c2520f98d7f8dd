"""The feature atlas (``emoctl atlas``): a static site to see and hear every SAE latent (:mod:`.build`)."""
from emoctl.reports.atlas.build import AtlasSettings, AtlasSummary, build_atlas

__all__ = ["AtlasSettings", "AtlasSummary", "build_atlas"]
