"""``ProbeCallback``: listen to the model at each validation.

Steering is judged by what the audio does, so at each validation this callback
synthesizes a fixed, seeded probe set (texts x speakers x target emotions x the
model's steering settings) through the model's backbone, then logs per setting
and emotion:

* SER accuracy and mean probability of the target emotion (any
  :class:`~emoctl.metrics.ser.EmotionRecognizer`; the embedded one by default),
* the acoustic probes (mean F0, RMS, spectral centroid, duration),
* a few audio clips, an F0-contour figure and a spectrogram figure (TensorBoard).

The model says how to synthesize through :class:`ProbeSynthesizer`: one method
that turns prompts and a steering setting into waveforms.  The callback knows
nothing of steering; the model knows nothing of probes.  Skipped during the
sanity check.  On DDP each rank synthesizes its share of the probe set and the
sums are reduced across ranks, so every rank logs the same numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from emoctl.backbones.base import Prompt
from emoctl.callbacks.probe_figures import f0_contour_figure, spectrogram_figure
from emoctl.corpus.sentences import generate_sentences
from emoctl.emotions import ESD_EMOTIONS
from emoctl.errors import ConfigError
from emoctl.metrics.loading import load_recognizer
from emoctl.metrics.ser import EmotionRecognizer
from emoctl.probes import measure

PROBES = ("f0_mean_hz", "rms", "spectral_centroid_hz", "duration_s")
"""Acoustic probes logged per emotion (fields of :class:`emoctl.probes.AcousticProfile`)."""


@runtime_checkable
class ProbeSynthesizer(Protocol):
    """What a LightningModule implements to be probed."""

    def probe_settings(self) -> list[str]:
        """Names of the steering settings to probe, e.g. ``["unsteered", "alpha=1"]``."""
        ...

    def probe_synthesize(self, prompts: Sequence[Prompt], setting: str, seed: int) -> list[tuple[np.ndarray, int]]:
        """Waveform and sample rate of each prompt under one setting (same seed -> same sampling noise)."""
        ...


@dataclass(frozen=True)
class ProbeItem:
    """One probe utterance: its prompt and the emotion the audio should carry."""

    prompt: Prompt
    target: str


class ProbeCallback(pl.Callback):
    """Synthesize a seeded probe set at each validation and log SER and acoustic probes per emotion."""

    def __init__(
        self,
        texts: Sequence[str] | None = None,
        n_texts: int = 4,
        text_seed: int = 1234,
        speakers: Sequence[str] = ("0011", "0012"),
        emotions: Sequence[str] = ESD_EMOTIONS,
        recognizer: str = "mini",
        recognizer_dir: str | None = None,
        seed: int = 0,
        every_n_validations: int = 1,
        n_audio: int = 2,
        batch_size: int = 20,
    ) -> None:
        """
        Args:
            texts: Probe sentences; None draws ``n_texts`` from the corpus grammar with ``text_seed``
                (a seed other than the corpus's, so the sentences are held out).
            n_texts: Number of generated sentences when ``texts`` is None.
            text_seed: Seed of the sentence grammar when ``texts`` is None.
            speakers: Speakers to probe.
            emotions: Target emotions to probe (the model decides how a target is realized).
            recognizer: "mini" (embedded, no download) or "emotion2vec" (needs ``recognizer_dir``).
            recognizer_dir: Model folder of the recognizer; None for the embedded default.
            seed: Sampling seed of every probe synthesis (the same each validation).
            every_n_validations: Probe on every n-th validation only (synthesis is not free).
            n_audio: Clips per setting logged to TensorBoard (one per target emotion, in order).
            batch_size: Prompts per synthesis call.
        """
        if every_n_validations < 1 or batch_size < 1 or n_audio < 0:
            raise ConfigError(f"ProbeCallback needs every_n_validations >= 1, batch_size >= 1 and n_audio >= 0; got "
                              f"{every_n_validations}, {batch_size}, {n_audio}.")
        if not speakers or not emotions:
            raise ConfigError("ProbeCallback needs at least one speaker and one emotion.")
        if texts is None:
            texts = generate_sentences(n_texts, text_seed)
        if not texts or any(not t.strip() for t in texts):
            raise ConfigError(f"ProbeCallback texts must be non-empty sentences, got {list(texts)!r}.")
        self.items = [ProbeItem(Prompt(text, speaker, emotion, f"probe{t:03d}-{speaker}-{emotion}"), emotion)
                      for t, text in enumerate(texts) for speaker in speakers for emotion in emotions]
        self.emotions = list(emotions)
        self.recognizer_kind, self.recognizer_dir = recognizer, recognizer_dir
        self.seed, self.every, self.n_audio, self.batch_size = seed, every_n_validations, n_audio, batch_size
        self._recognizer: EmotionRecognizer | None = None
        self._validations = 0
        self.last_results: dict[str, dict[str, float]] = {}

    # ---------------------------------------------------------------- hooks
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._validations += 1
        if (self._validations - 1) % self.every:
            return
        if not isinstance(pl_module, ProbeSynthesizer):
            raise ConfigError(f"ProbeCallback needs a model with probe_settings() and probe_synthesize(); "
                              f"{type(pl_module).__name__} has neither. Remove the callback from the recipe or "
                              "use a steering module (EmoShiftModule, ...).")
        self._probe(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"validations": self._validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._validations = state_dict.get("validations", 0)

    # ------------------------------------------------------------- internals
    def recognizer(self) -> EmotionRecognizer:
        if self._recognizer is None:
            self._recognizer = load_recognizer(self.recognizer_kind, self.recognizer_dir)
        return self._recognizer

    def _probe(self, trainer: pl.Trainer, module: ProbeSynthesizer) -> None:
        rank, world = trainer.global_rank, trainer.world_size
        mine = self.items[rank::world]
        device = getattr(module, "device", torch.device("cpu"))
        E = len(self.emotions)
        results: dict[str, dict[str, float]] = {}
        for setting in module.probe_settings():
            # Per target emotion: [count, correct, sum P(target), then sum and count of each probe].
            sums = torch.zeros(E, 3 + 2 * len(PROBES), dtype=torch.float64)
            clips: list[tuple[ProbeItem, np.ndarray, int]] = []
            for start in range(0, len(mine), self.batch_size):
                batch = mine[start:start + self.batch_size]
                waves = module.probe_synthesize([item.prompt for item in batch], setting, self.seed + start)
                clips += [(item, wave, rate) for item, (wave, rate) in zip(batch, waves)]
            if clips:
                ser = self.recognizer()([w for _, w, _ in clips], [r for _, _, r in clips])
                profiles = measure([w for _, w, _ in clips], [r for _, _, r in clips])
                predicted = ser.predicted()
                for (item, _, _), guess, p_row, profile in zip(clips, predicted, ser.probs, profiles):
                    e = self.emotions.index(item.target)
                    row = sums[e]
                    row[0] += 1
                    row[1] += float(guess == item.target)
                    row[2] += float(p_row[ser.labels.index(item.target)]) if item.target in ser.labels else 0.0
                    for j, probe in enumerate(PROBES):
                        value = float(getattr(profile, probe))
                        if np.isfinite(value):
                            row[3 + 2 * j] += value
                            row[4 + 2 * j] += 1
            sums = trainer.strategy.reduce(sums.to(device), reduce_op="sum").cpu() if world > 1 else sums
            results[setting] = self._log_setting(module, setting, sums)
            if trainer.is_global_zero and clips:
                self._log_media(trainer, setting, clips)
        self.last_results = results

    def _log_setting(self, module: Any, setting: str, sums: torch.Tensor) -> dict[str, float]:
        figures: dict[str, float] = {}
        count, correct = sums[:, 0], sums[:, 1]
        for e, emotion in enumerate(self.emotions):
            if count[e] == 0:
                continue
            figures[f"probe/{setting}/ser_acc/{emotion}"] = float(correct[e] / count[e])
            figures[f"probe/{setting}/p_target/{emotion}"] = float(sums[e, 2] / count[e])
            for j, probe in enumerate(PROBES):
                n = sums[e, 4 + 2 * j]
                if n > 0:
                    figures[f"probe/{setting}/{probe}/{emotion}"] = float(sums[e, 3 + 2 * j] / n)
        if count.sum() > 0:
            figures[f"probe/{setting}/ser_acc"] = float(correct.sum() / count.sum())
        module.log_dict(figures, sync_dist=False)  # already reduced across ranks
        return figures

    def _log_media(self, trainer: pl.Trainer, setting: str, clips: list[tuple[ProbeItem, np.ndarray, int]]) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return

        writer, step = loggers[0].experiment, trainer.global_step
        shown: list[tuple[ProbeItem, np.ndarray, int]] = []
        for emotion in self.emotions:  # one clip per emotion, of the first text and speaker
            shown += [c for c in clips if c[0].target == emotion][:1]
        for item, wave, rate in shown[: self.n_audio]:
            writer.add_audio(f"probe/{setting}/audio/{item.target}", torch.as_tensor(wave).float().clamp(-1, 1)[None],
                             step, sample_rate=rate)
        writer.add_figure(f"probe/{setting}/f0_contours", f0_contour_figure(shown), step)
        writer.add_figure(f"probe/{setting}/spectrograms", spectrogram_figure(shown[: max(self.n_audio, 1)]), step)
