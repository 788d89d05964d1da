"""Few-shot evaluation of vlm_jax models on OK-VQA, TextVQA, ScienceQA, MathVista, MATH-Vision and MathVerse.

Modules: `examples` (the uniform Example record), `data_vqa` / `data_scienceqa` / `data_math` (loaders of the
benchmarks' public files), `prompts` (LLaVA-1.5 few-shot prompts), `rices` (demonstration selection and
cached image embeddings), `scoring_vqa` / `scoring_scienceqa` / `scoring_math` (+ `vqa_normalize`,
`answer_extract`, `judge`) and `score_cli` (`python -m vlm_jax.evaluate score`).

The generation run (`python -m vlm_jax.evaluate --config configs/eval/BENCH.py --ckpt CKPT`): `run_config` (the
ConfigDict of a run), `splits` (config split specs → examples), `clip_embed` (RICES embeddings from a
checkpoint's Flax CLIP tower), `pixels`, `prompt_tokens`, `batched_generation` (batched, data-parallel
`generate`), `run` (the run itself) and `run_cli`.
"""
