"""``HarvestSession``: one rank's writer and recorder for a harvest, shared by the callback and the builder.

It opens (or reopens) the rank's shard series, refuses to resume a store
harvested under other settings, tells which utterances are already
committed, and turns each generated batch into store utterances.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from emoctl.backbones.base import Backbone, Generation
from emoctl.backbones.hooks import Phase
from emoctl.errors import ConfigError, EmoctlError
from emoctl.harvest.prompts import GridPrompt
from emoctl.harvest.recorder import ActivationRecorder, hookpoint_layer
from emoctl.store import ActivationWriter, StoreSpec
from emoctl.store.manifest import MANIFEST_NAME


class HarvestSettingsMismatch(ConfigError):
    """The store holds a harvest made under other settings; resuming into it would mix two harvests."""


class HarvestSession:
    """Writes one rank's utterances; ``settings`` (JSON) must match the store's when it is reopened."""

    def __init__(self, path: str | Path, backbone: Backbone, hookpoint: str, phases: Iterable[str | Phase],
                 settings: dict[str, Any], dtype: str = "float32", rank: int = 0, shard_rows: int = 1 << 16,
                 commit_every_s: float = 60.0) -> None:
        """``commit_every_s``: commit the partial shard when this long has passed since the last commit, so a
        kill loses at most about that much generation (a full shard commits on its own)."""
        if not commit_every_s >= 0:
            raise ConfigError(f"commit_every_s={commit_every_s} must be >= 0 seconds (0 commits every batch).")
        self.path = Path(path)
        self.commit_every_s = commit_every_s
        self._last_commit = time.monotonic()
        self.recorder = ActivationRecorder(backbone, hookpoint, phases)
        self.settings = json.loads(json.dumps({**settings, "hookpoint": hookpoint,
                                               "phases": [p.value for p in self.recorder.phases]}))
        spec = StoreSpec(d_model=backbone.hidden_size, dtype=dtype, hookpoint=hookpoint,
                         layer=hookpoint_layer(hookpoint), backbone=backbone.backbone_id,
                         extra={"harvest": self.settings})
        self._check_resumable()
        self.writer = ActivationWriter(self.path, spec, rank=rank, shard_rows=shard_rows, consolidate=False,
                                       producer="harvest")
        self.committed = self.writer.committed_utt_ids
        self.written = self.rows = self.empty = self.truncated = 0

    def _check_resumable(self) -> None:
        manifest = self.path / MANIFEST_NAME
        if not manifest.is_file():
            return
        try:
            stored = json.loads(manifest.read_text()).get("created", {}).get("extra", {}).get("harvest")
        except json.JSONDecodeError:
            return  # the writer reports a damaged manifest itself
        if stored is None or stored == self.settings:
            return
        differ = sorted(k for k in set(stored) | set(self.settings) if stored.get(k) != self.settings.get(k))
        detail = "; ".join(f"{k}: store has {stored.get(k)!r}, now {self.settings.get(k)!r}" for k in differ)[:600]
        raise HarvestSettingsMismatch(
            f"the store at {self.path} was harvested with other settings ({detail}). Resuming would mix two "
            "harvests: set the harvester's path to a new directory, or restore the original settings."
        )

    def write(self, prompts: list[GridPrompt], generation: Generation) -> int:
        """Store each utterance of a generated batch not committed yet; returns how many were written."""
        n = 0
        for prompt, rows, finished, tokens in zip(prompts, self.recorder.rows(generation), generation.finished,
                                                  generation.tokens):
            if prompt.utt_id in self.committed:
                continue  # a partly committed batch, generated again for its missing utterances
            if rows.shape[0] == 0:
                self.empty += 1  # stopped at once: nothing to store
                continue
            self.truncated += not finished
            self.writer.append(prompt.meta(tokens.cpu()), rows)
            n += 1
            self.rows += rows.shape[0]
        self.written += n
        if n and time.monotonic() - self._last_commit >= self.commit_every_s:
            self.writer.flush()  # a shorter shard: bounds what a kill can lose
            self._last_commit = time.monotonic()
        return n

    def close(self) -> None:
        self.recorder.detach()
        self.writer.close()

    def abort(self) -> None:
        """Close after a failure: what was appended is still committed; errors are not raised over the first."""
        self.recorder.detach()
        try:
            self.writer.close()
        except EmoctlError:
            pass

    def summary(self) -> str:
        extra = []
        if self.truncated:
            extra.append(f"{self.truncated} cut at max_new_tokens")
        if self.empty:
            extra.append(f"{self.empty} empty (STOP first), not stored")
        return (f"{self.written} utterances, {self.rows} rows of {self.recorder.hookpoint} written to {self.path}"
                + (f" ({'; '.join(extra)})" if extra else ""))
