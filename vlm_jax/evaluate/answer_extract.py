"""Rule-based answer extraction from free-text generations: the option a multiple-choice answer names, the
final number of a numeric answer, a list of numbers, and a normalised short answer string.

These are vlm_jax's rule-based scorer for the math benchmarks when no LLM judge is configured (`judge.py`). Rules prefer explicit statements ("The answer is (B)", "Answer: 3.5") over incidental mentions
and otherwise take the final number, since reasoning chains end with their result.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from typing import Sequence

from vlm_jax.evaluate.examples import OPTION_LETTERS

_BARE_LETTER = re.compile(r"\(?([A-Z])\)?[.:)]?")
_STATED_LETTER = re.compile(
    r"(?i:answer|option|choice)(?:\s+(?i:is|would be|should be))?\s*[:：]?\s*(?i:option\s*)?\(?([A-Z])\)?(?![A-Za-z0-9])")
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])(?:\s|$)")
_PAREN_LETTER = re.compile(r"\(([A-Z])\)")
_ANSWER_MARKER = re.compile(r"(?i:the\s+(?:final\s+|correct\s+)?answer\s+(?:is|should be|would be)|answer\s*[:：])")
_NUMBER_MARKER = re.compile(_ANSWER_MARKER.pattern + "|=")  # "x = 5" states a number, not a text answer
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]+)\}\s*\{([^{}]+)\}")
_LATEX_SQRT = re.compile(r"\\sqrt\s*\{([^{}]+)\}")
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}


def _normalize_text(text: str) -> str:
    """Lower-case, LaTeX/markup removed, whitespace collapsed, edge punctuation stripped: for option texts and
    short answers ('$6 \\mathrm{~m}$' -> '6 m', ' Yes. ' -> 'yes')."""
    text = re.sub(r"\\(?:text|mathrm|mathbf|textbf|operatorname)\s*\{([^{}]*)\}", r"\1", text)
    text = text.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("~", " ")
    text = text.replace("$", "").replace("**", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\s+", " ", text).strip().lower()
    return text.strip(" .,;:!?\"'")


def _unique(indices: Sequence[int], choices: Sequence[str]) -> int | None:
    """The single option among `indices` (options with identical texts count as one), else None."""
    texts = {choices[i] if i < len(choices) else i for i in indices}
    return min(indices) if len(texts) == 1 else None


def _option_text_match(text: str, choices: Sequence[str]) -> int | None:
    """Index of the option whose text the answer states: the whole answer, else the text after an answer
    marker, else the longest option text that occurs as a whole word(s) -- None if that is ambiguous."""
    normalized = [_normalize_text(c) for c in choices]
    answer = _normalize_text(text)
    exact = [i for i, c in enumerate(normalized) if c and c == answer]
    if exact:
        return _unique(exact, choices)
    marker = list(_ANSWER_MARKER.finditer(text))
    if marker:
        stated = _normalize_text(text[marker[-1].end():].split("\n")[0])
        exact = [i for i, c in enumerate(normalized) if c and c == stated]
        if exact:
            return _unique(exact, choices)
    found = [i for i, c in enumerate(normalized)
             if c and re.search(rf"(?<![\w.]){re.escape(c)}(?![\w]|\.\d)", answer)]
    longest = [i for i in found if not any(normalized[i] != normalized[j] and normalized[i] in normalized[j]
                                           for j in found)]
    return _unique(longest, choices) if longest else None


def extract_choice(text: str, choices: Sequence[str], num_options: int | None = None) -> int | None:
    """The option index (0 = A) a generation answers with, or None.

    Tried in order: a bare letter ("B", "(B)", "B."); a stated letter ("The answer is (B)", "Answer: B",
    "option B"; the last one wins); a leading "B. ..." / "(B) ..."; the option text itself (whole answer,
    after "the answer is", or contained as whole words); a single parenthesised letter anywhere; a number
    equal to exactly one numeric option. Letters beyond `num_options` (default: len(choices)) are ignored.
    """
    text = text.strip()
    n = num_options if num_options is not None else len(choices)
    valid = set(OPTION_LETTERS[:n])
    if not text or not valid:
        return None
    m = _BARE_LETTER.fullmatch(text)
    if m and m.group(1) in valid:
        return OPTION_LETTERS.index(m.group(1))
    stated = [m.group(1) for m in _STATED_LETTER.finditer(text) if m.group(1) in valid]
    if stated:
        return OPTION_LETTERS.index(stated[-1])
    m = _LEADING_LETTER.match(text)
    if m and (m.group(1) or m.group(2)) in valid:
        return OPTION_LETTERS.index(m.group(1) or m.group(2))
    if choices:
        index = _option_text_match(text, choices)
        if index is not None:
            return index
    parenthesised = {m.group(1) for m in _PAREN_LETTER.finditer(text) if m.group(1) in valid}
    if len(parenthesised) == 1:
        return OPTION_LETTERS.index(parenthesised.pop())
    values = [parse_number(c) for c in choices]
    number = extract_number(text)
    if number is not None and all(v is not None for v in values) and values:
        equal = [i for i, v in enumerate(values) if math.isclose(v, number, rel_tol=1e-9, abs_tol=1e-12)]
        if equal:
            return _unique(equal, choices)
    return None


def _eval_arithmetic(expr: str) -> float | None:
    """Value of a +-*/^ expression over numbers (and sqrt(), pi) parsed with `ast` -- never `eval`."""
    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "sqrt" \
                and len(node.args) == 1:
            return math.sqrt(walk(node.args[0]))
        if isinstance(node, ast.Name) and node.id == "pi":
            return math.pi
        raise ValueError("unsupported expression")
    try:
        return walk(ast.parse(expr, mode="eval").body)
    except (ValueError, SyntaxError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def parse_number(text: str) -> float | None:
    """The finite value of a string that is one number (see `_parse_number`), else None."""
    return _finite(_parse_number(text))


def _parse_number(text: str) -> float | None:
    """The value of a string that is one number, possibly with a unit, %, thousands commas or a simple LaTeX /
    plain expression ('3.50 cm' -> 3.5, '1,000' -> 1000, '\\frac{1}{2}' -> 0.5, '2\\sqrt{3}' -> 3.46..);
    None when it is not a single number."""
    t = _normalize_text(text)
    t = re.sub(r"^[a-z]\s*=\s*", "", t)
    t = t.replace("°", "").replace("%", "").replace("\\pi", "pi").replace("π", "pi").replace("^\\circ", "")
    t = _LATEX_FRAC.sub(r"((\1)/(\2))", t)
    t = _LATEX_SQRT.sub(r"sqrt(\1)", t).replace("\\cdot", "*").replace("\\times", "*").replace("^", "**")
    t = re.sub(r"(\d)\s*(sqrt|pi|\()", r"\1*\2", t)
    t = re.sub(r"(?<=\d),(?=\d{3}\b)", "", t)
    numbers = _NUMBER.findall(t)
    if len(numbers) == 1 and re.fullmatch(rf"\s*{re.escape(numbers[0])}\s*[a-z]{{0,6}}\d?\.?\s*", t):
        return float(numbers[0].replace(",", ""))  # a number with a short unit ("3.50 cm", "12 m2")
    if re.fullmatch(r"[\d\s.+\-*/()a-z]+", t) and any(op in t for op in ("/", "*", "sqrt", "pi")):
        return _eval_arithmetic(t)  # only genuine expressions: '2019-2020' is a range, not -1
    return None


def _final_segment(text: str, marker: re.Pattern = _ANSWER_MARKER) -> str:
    """The text after the last explicit answer marker ('the answer is', 'answer:'), else all of it."""
    markers = list(marker.finditer(text))
    return text[markers[-1].end():] if markers else text


def extract_number(text: str) -> float | None:
    """The finite number a generation gives as its answer (`_extract_number`), else None ('1e999' is none)."""
    return _finite(_extract_number(text))


def _extract_number(text: str) -> float | None:
    """The number a generation gives as its answer: the segment after the last answer marker or '=' (or the whole
    text) when it is one number / simple expression, else the first number after the marker, else the last
    number of the text."""
    segment = _final_segment(text, _NUMBER_MARKER).strip()
    first_line = segment.split("\n")[0].strip()
    for candidate in (segment, first_line, first_line.rstrip(".")):
        value = parse_number(candidate)
        if value is not None:
            return value
    stated = _NUMBER_MARKER.search(text) is not None
    numbers = _NUMBER.findall(_LATEX_FRAC.sub(" ", first_line if stated else text))
    if not numbers:
        return None
    return float((numbers[0] if stated else numbers[-1]).replace(",", ""))


def extract_number_list(text: str) -> list[float]:
    """All numbers of the answer segment (after the last answer marker), for list answers like '[2014, 2016]'."""
    numbers = [float(n.replace(",", "")) for n in _NUMBER.findall(_final_segment(text).replace(", ", " , "))]
    return [n for n in numbers if math.isfinite(n)]


def extract_short_answer(text: str) -> str:
    """The normalised answer string: the first line after the last answer marker, else the first line."""
    segment = _final_segment(text).strip()
    return _normalize_text(segment.split("\n")[0]) if segment else ""


def normalize_answer_text(text: str) -> str:
    """The normalisation `extract_short_answer` applies, for ground-truth strings."""
    return _normalize_text(text)
