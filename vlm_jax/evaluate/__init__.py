"""Few-shot evaluation of vlm_jax models on OK-VQA, TextVQA, ScienceQA, MathVista, MATH-Vision and MathVerse.

Modules: `examples` (the uniform Example record), `data_vqa` / `data_scienceqa` / `data_math` (loaders of the
benchmarks' public files), `prompts` (LLaVA-1.5 few-shot prompts), `rices` (demonstration selection and
cached image embeddings), `scoring_vqa` / `scoring_scienceqa` / `scoring_math` (+ `vqa_normalize`,
`answer_extract`, `judge`) and `score_cli` (`python -m vlm_jax.evaluate score`).
"""
