"""The blind listening test (``emoctl listen``): rater pages of a Table 1 report's clips (:mod:`.build`, their
HTML in :mod:`.pages`) and the scores of the ratings they download (:mod:`.score`, statistics in :mod:`.stats`)."""
from emoctl.reports.listening.build import build_listening_site
from emoctl.reports.listening.score import score_listening

__all__ = ["build_listening_site", "score_listening"]
