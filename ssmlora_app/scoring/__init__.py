"""Official scorers, reproduced: each module says which evaluator it follows and where it differs.

A leaf package: it imports nothing else of ``ssmlora_app`` (tasks and the Lightning module build on
it, never the other way round). Scores are plain Python numbers, on the scale the official
evaluator prints (SQuAD and L-Eval in percent, the others in [0, 1]).

- :mod:`.squad`: SQuAD v1.1 and v2.0 exact match / F1, v2.0's HasAns/NoAns split and best
  no-answer threshold (``evaluate-v1.1.py``, ``evaluate-v2.0.py``).
- :mod:`.short_answer`: token F1 / exact match for short answers that SQuAD's normalisation would
  erase (a gold answer "A" is a letter, not an article).
- :mod:`.leval`: L-Eval's closed-ended exam scoring (exact letter-set match with its 0.25 partial
  credit) and parsers for option lists written ``(A) …`` or ``A. …``.
- :mod:`.rouge`: ROUGE-1/2/L as Google's ``rouge_score`` computes it (what HF ``evaluate`` calls
  for SAMSum in the PEFT-of-SSMs benchmark).
- :mod:`.bleu`, :mod:`.meteor`, :mod:`.dart`: DART's BLEU and METEOR as the benchmark computes
  them (HF ``evaluate``'s ``bleu`` and ``meteor``), and readers for DART's JSON and XML references.
- :mod:`.spider_sql`, :mod:`.spider_match`, :mod:`.spider`: Spider exact set match (with hardness
  levels) and execution
  accuracy, as taoyds/spider ``evaluation.py`` computes them.
"""

from ssmlora_app.scoring.errors import ScoringError

__all__ = ["ScoringError"]
