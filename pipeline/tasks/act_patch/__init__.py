"""The act_patch task: CounterFact pairs -> batched activation patching labels -> explainer examples.

settings.py (its config section), prompts.py (the questions), pairs.py (the pairs of facts), labels.py (patching and
the label tables), task.py (what the shared stages read, and its registration), diagnostics.py and figures.py. This
file imports nothing, so a label stage does not depend on the task's other modules.
"""
