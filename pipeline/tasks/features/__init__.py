"""The features task: corpus, SAEs, exemplars, descriptions, simulator, OOD sets, judge and LLM client."""
