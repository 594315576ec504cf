"""The RASP programs of InterpBench's tracr cases, as the benchmark's code defines them.

InterpBench (FlyingPumba/circuits-benchmark, the June 2024 state its released `ll_model_510.pth` files come from)
compiles one RASP program per case with tracr. These are those programs, rebuilt from tracr's RASP primitives; where
the metadata's one-line description is loose, the program is the truth (case 8's gap filler returns its input on a
vocabulary without gaps, case 24's "leading token" program copies each token). Vocabularies and lengths come from
the metadata, not from here.
"""

from __future__ import annotations

from typing import Callable


def _rasp():
    from pipeline.interpbench.tracr_torch import rasp_module

    return rasp_module()


def shift_by(offset: int, sop):
    """The sequence shifted right by `offset` (left when negative), None-padded."""
    rasp = _rasp()
    select = rasp.Select(rasp.indices, rasp.indices, lambda k, q: q == k + offset)
    return rasp.Aggregate(select, sop, default=None).named(f"shift_by({offset})")


def frac_prevs(bools):
    """Fraction of positions so far where `bools` holds (numerical mean over a causal selector)."""
    rasp = _rasp()
    prevs = rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LEQ)
    return rasp.numerical(rasp.Aggregate(prevs, rasp.numerical(bools), default=0)).named("frac_prevs")


def case_3():
    rasp = _rasp()
    return frac_prevs((rasp.tokens == "x").named("is_x"))


def case_4():
    rasp = _rasp()
    opens = rasp.numerical(frac_prevs(rasp.numerical(rasp.tokens == "(").named("bools_open"))).named("opens")
    closes = rasp.numerical(frac_prevs(rasp.numerical(rasp.tokens == ")").named("bools_close"))).named("closes")
    return rasp.numerical(rasp.LinearSequenceMap(opens, closes, 1, -1)).named("pair_balance")


def case_8():
    rasp = _rasp()
    after = shift_by(-1, rasp.tokens)
    return rasp.SequenceMap(lambda x, y: "-" if x is None and y is not None else x, rasp.tokens, after)


def case_11():
    rasp = _rasp()
    length = rasp.Map(lambda x: len(x), rasp.tokens)
    same = rasp.Select(length, length, rasp.Comparison.EQ)
    return rasp.Aggregate(same, length, default=None)


def case_13():
    rasp = _rasp()
    before, after = shift_by(1, rasp.tokens), shift_by(-1, rasp.tokens)
    first = rasp.SequenceMap(lambda x, y: "increasing" if y > x else ("decreasing" if y < x else "constant"),
                             before, rasp.tokens)
    second = rasp.SequenceMap(lambda x, y: "increasing" if y < x else ("decreasing" if y > x else "constant"),
                              rasp.tokens, after)
    return rasp.SequenceMap(lambda x, y: x if y == "constant" else y, first, second)


def case_18():
    rasp = _rasp()
    hist = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)).named("hist")
    length = rasp.SelectorWidth(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.TRUE)).named("length")
    return rasp.SequenceMap(lambda freq, total: "frequent" if freq > total / 2 else
                            ("common" if freq > total / 4 else "rare"), hist, length)


def case_19():
    rasp = _rasp()
    return rasp.SequenceMap(lambda x, y: x if x != y else None, rasp.tokens,
                            shift_by(1, rasp.tokens)).named("sequential_duplicate_removal")


def case_20():
    rasp = _rasp()
    keywords = {"free", "offer", "click", "now"}
    count = rasp.Map(lambda x: sum(x == keyword for keyword in keywords), rasp.tokens)
    return rasp.Map(lambda x: "spam" if x > 0 else "not spam", count)


def case_21():
    rasp = _rasp()
    with_index = rasp.SequenceMap(lambda x, i: (x, i), rasp.tokens, rasp.indices)
    earlier_same = rasp.Select(with_index, with_index, lambda k, q: k[0] == q[0] and k[1] <= q[1])
    first_index = rasp.SequenceMap(lambda count, i: i if count == 1 else -1, rasp.SelectorWidth(earlier_same),
                                   rasp.indices)
    select = rasp.Select(first_index, rasp.indices, rasp.Comparison.EQ).named("unique_tokens_selector")
    return rasp.Aggregate(select, rasp.tokens, default=None).named("unique_tokens")


def case_24():
    rasp = _rasp()
    return rasp.Aggregate(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.EQ), rasp.tokens,
                          default=None).named("first_occurrence")


def case_33():
    rasp = _rasp()
    return rasp.Map(lambda x: len(x) % 2 == 0, rasp.tokens)


def _vowel_consonant_ratio(word: str) -> float:
    vowels = sum(c in "aeiou" for c in word.lower())
    consonants = len(word) - vowels
    return vowels / consonants if consonants != 0 else float("inf")


def case_34():
    rasp = _rasp()
    return rasp.Map(_vowel_consonant_ratio, rasp.tokens)


def case_35():
    rasp = _rasp()
    return rasp.Map(lambda w: "".join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(w)), rasp.tokens)


def case_36():
    rasp = _rasp()
    sentiments = {"😊": "positive", "😢": "negative", "📘": "neutral"}
    return rasp.Map(lambda x: sentiments.get(x, "neutral"), rasp.tokens)


def case_37():
    rasp = _rasp()
    return rasp.Map(lambda x: x[::-1] if x != "nochange" else x, rasp.tokens)


def case_38():
    rasp = _rasp()
    before, after = shift_by(1, rasp.tokens), shift_by(-1, rasp.tokens)
    differs_before = rasp.SequenceMap(lambda x, y: x != y, before, rasp.tokens).named("prev_token_neq_orig")
    differs_after = rasp.SequenceMap(lambda x, y: x != y, rasp.tokens, after).named("next_token_neq_orig")
    return rasp.SequenceMap(lambda x, y: x and y, differs_before, differs_after).named("alternation_checker")


PROGRAMS: dict[str, Callable] = {name.split("_", 1)[1]: fn for name, fn in list(globals().items())
                                 if name.startswith("case_")}
