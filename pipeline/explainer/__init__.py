"""The explainer every task shares: the continuous-token model, its alignment, training, generation,
prompts, metrics, baselines and the train/generate/score stages."""
