"""``emoctl atlas``: the feature atlas, a static site to see and hear every SAE latent
(:mod:`emoctl.reports.atlas`)."""
from __future__ import annotations

from emoctl.backbones.loading import BackboneSpec
from emoctl.reports.atlas import AtlasSettings, AtlasSummary, build_atlas


def atlas(sae: str, store: str, out_dir: str, backbone: BackboneSpec = BackboneSpec(), selection: str | None = None,
          table1: str | None = None, latents: list[int] | None = None, top_n: int = 5, top_per_score: int = 2,
          n_random: int = 6, m: int = 6, scores: list[str] | None = None, steer_alphas: list[float] | None = None,
          emotion_alphas: list[float] | None = None, n_prompts: int = 3, prompt_emotion: str = "Neutral",
          seed: int = 0, temperature: float = 1.0, top_k: int | None = None, max_new_tokens: int = 400,
          n_bootstrap: int = 1000, corpus_root: str | None = None, max_mb: float = 150.0, chunk_rows: int = 4096,
          progress: bool = True) -> AtlasSummary:
    """Write a static site (open ``<out_dir>/index.html``, works offline from file://) with a row for every
    latent and a page with audio for a chosen set of them; a rerun keeps the media whose inputs are unchanged.

    Args:
        sae: Exported SAE folder (SAELens format) trained on the store's hookpoint.
        store: Activation store harvested with speech tokens (every harvest records them).
        out_dir: Where the site goes.
        backbone: The backbone the store was harvested from; it speaks the stored tokens again and steers.
        selection: Folder of ``emoctl select``: its sets are marked, steered on the emotion pages and get pages.
        table1: Folder (or table1.csv) of ``emoctl report table1``, whose cells the emotion pages show.
        latents: Latent ids that get a page beside the default ones.
        top_n: Top utterances per latent page, by the latent's peak activation.
        top_per_score: Latents per emotion and score (any_step, rate, mass) that get a page, by Δ.
        n_random: Latents drawn at random (seeded, among those that fire) that get a page.
        m: Size of each emotion's set under each score, by the selection's rule (Δ descending among Δ > 0).
        scores: Which Δ scores the site reports (default any_step, rate, mass; the first colours the map). rate
            and mass use Wilcoxon's test, which is exact, and slow, below 50 pairs per emotion.
        steer_alphas: The α grid a latent is steered alone at (default -40 and +40, the attribution's α).
        emotion_alphas: The α grid an emotion's set is steered together at (default 4 and 8, Table 1's sweep).
        n_prompts: Prompts each steering runs on (held-out sentences, one voice; at least 2 for an interval).
        prompt_emotion: Emotion condition of the steering prompts (Neutral: steering must do the work).
        seed: Sampling seed of the steering, bootstrap seed, and seed of the random latents.
        temperature: Sampling temperature of the steering (0 is greedy).
        top_k: Top-k cut-off of the steering's sampling.
        max_new_tokens: Speech-token budget per steered clip.
        n_bootstrap: Bootstrap resamples for Δ intervals and the steering shifts' intervals.
        corpus_root: ESD folder whose reference clips voice the prompts, for a backbone that clones voices.
        max_mb: Refuse, before making any audio, a site estimated above this size.
        chunk_rows: Store rows per chunk of the statistics pass.
        progress: Progress bars.
    """
    summary = build_atlas(AtlasSettings(
        sae=sae, store=store, out_dir=out_dir, backbone=backbone, selection=selection, table1=table1,
        latents=list(latents or []), top_n=top_n, top_per_score=top_per_score, n_random=n_random, m=m,
        scores=list(scores) if scores is not None else ["any_step", "rate", "mass"],
        steer_alphas=list(steer_alphas) if steer_alphas is not None else [-40.0, 40.0],
        emotion_alphas=list(emotion_alphas) if emotion_alphas is not None else [4.0, 8.0], n_prompts=n_prompts,
        prompt_emotion=prompt_emotion, seed=seed, temperature=temperature, top_k=top_k,
        max_new_tokens=max_new_tokens, n_bootstrap=n_bootstrap, corpus_root=corpus_root, max_mb=max_mb,
        chunk_rows=chunk_rows, progress=progress))
    print(f"wrote the atlas: {summary.line()}.\nOpen {summary.out_dir.resolve() / 'index.html'}")
    return summary
