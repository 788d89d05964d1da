"""Few-shot evaluation of vlm_jax models on OK-VQA, TextVQA (+ OCR), ScienceQA, MathVista, MATH-Vision, MathVerse.

One module per benchmark family, each with its loaders, prompt turns, scorer and breakdowns, registered in
`registry` (read by both command forms): `vqa`, `scienceqa`, `visual_math`. Shared pieces: `examples` (the
uniform Example record, file readers), `prompts` (turns → text / image / end-of-turn segments; pluggable
templates), `prompt_tokens` (segments → token ids), `predictions` (prediction files, records, aggregation),
`vqa_normalize` / `answer_extract` (answer normalisation, rule-based extraction), `judge` (the original's LLM
judge), `rices` + `clip_embed` (demonstration selection, CLIP embeddings with a disk cache), `pixels`,
`batched_generation`, `run_config` (the ConfigDict of a run), `run` (the run itself) and `__main__` (the CLI:
`python -m vlm_jax.evaluate --help`).
"""
