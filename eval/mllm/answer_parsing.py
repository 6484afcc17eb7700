"""Turn free-form MLLM replies into choices: option letters, yes/no, NaturalBench labels.

The harness's own parsers misread prose (lmms-eval 0.7.3: ``cv_bench/utils.py:21`` takes the first
letter of the reply, so "The answer is (B)" reads as "T"; ``mmvp/utils.py:55`` takes any lone
"a"/"b", so "It is a cat" reads as A). :func:`parse_choice` is the stricter replacement used for
MMVP (whose official GPT-4 grader we do not call) and CV-Bench. The other parsers reproduce each
benchmark's official rule, cited where defined.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s+(.+?)\s*$", re.MULTILINE)
_OPTION_INLINE = re.compile(r"\(([A-Za-z])\)\s*(.*?)(?=\s*\([A-Za-z]\)|\n|$)")


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def options_from_prompt(prompt: str) -> list[str]:
    """Option texts listed in a prompt, in letter order: lines "A. x" (MMVP, ScienceQA) or "(A) x" (CV-Bench).

    Used to score sample logs that no longer carry the dataset row (lmms-eval 0.7.3 drops ``doc``
    when it writes ``--log_samples``: ``loggers/evaluation_tracker.py:286``).
    """
    found = dict(reversed(_OPTION_LINE.findall(prompt)))  # the last list in the prompt wins
    if len(found) < 2:
        found = {k.upper(): v for k, v in reversed(_OPTION_INLINE.findall(prompt))}
    letters = sorted(found)
    if not letters or letters != list(LETTERS[: len(letters)]):
        return []
    return [found[k].strip() for k in letters]


def parse_choice(response: str, options: Sequence[str] | int) -> str | None:
    """The option letter a reply chooses, or None when it does not clearly choose one.

    Accepted, in order: a bare letter ("B", "b", "(B)", "B.", "B)", "B:"), a leading letter with
    text after it ("B) red", "(B) red", "B. red"; "B red" only when the text is option B's), "answer
    is (B)" / "answer: B" / "option B", and finally the text of exactly one option as whole words
    ("red", "The shapes are red."). An article ("A dog ...") is not read as option A unless the rest
    is option A's text.

    Args:
        response: the model's reply.
        options: option texts in letter order, or just their number when the texts are unknown.
    """
    texts = [] if isinstance(options, int) else [str(o) for o in options]
    n = options if isinstance(options, int) else len(texts)
    valid = LETTERS[:n]
    text = response.strip()
    if not text or not valid:
        return None
    bare = re.fullmatch(r"\(?([A-Za-z])\)?[.):]?", text)
    if bare and bare.group(1).upper() in valid:
        return bare.group(1).upper()
    lead = re.match(r"\(([A-Z])\)|([A-Z])[.):](?=\s|$)", text)
    if lead:
        letter = lead.group(1) or lead.group(2)
        if letter in valid:
            return letter
    word = re.match(r"([A-Z])\s+(.+)", text)
    if word and word.group(1) in valid and texts:
        rest, own = _norm(word.group(2)), _norm(texts[valid.index(word.group(1))])
        if own and (rest == own or rest.startswith(own + " ")):
            return word.group(1)
    # The cue is case-insensitive, the letter is not: "The answer is a dog." names no option,
    # while "(a)" (MMVP's own option spelling) does.
    said = re.search(
        r"(?i:answer\s*(?:is|:)|option|choice)\s*:?\s*(?:\(([A-Za-z])\)|([A-Z])(?![A-Za-z]))", text
    )
    if said:
        letter = (said.group(1) or said.group(2)).upper()
        if letter in valid:
            return letter
    if texts:
        reply = f" {_norm(text)} "
        hits = [i for i, o in enumerate(texts) if _norm(o) and f" {_norm(o)} " in reply]
        if len(hits) > 1:  # an option inside another matched one loses ("dark red" beats "red")
            norm = {i: f" {_norm(texts[i])} " for i in hits}
            hits = [i for i in hits if not any(j != i and norm[i] in norm[j] for j in hits)]
        if len(hits) == 1:
            return valid[hits[0]]
    return None


def parse_yes_no_llava(response: str) -> str:
    """POPE's official rule (LLaVA ``llava/eval/eval_pope.py``): "no" when the first sentence contains
    the word No/no/not, otherwise "yes" (so an empty or off-topic reply counts as "yes").

    lmms-eval instead requires the exact reply "yes"/"no" (``pope/utils.py:18-21``).
    """
    first = response.split(".")[0].replace(",", "")
    words = first.split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def parse_yes_no_first(response: str) -> str | None:
    """The first whole word "yes" or "no" (any case), or None: the rule-based HallusionBench judge."""
    m = re.search(r"\b(yes|no)\b", response, re.IGNORECASE)
    return m.group(1).lower() if m else None


def parse_naturalbench(response: str, question_type: str) -> int:
    """NaturalBench's official rule (``Baiqi-Li/NaturalBench`` ``example.py``, same as lmms-eval
    ``naturalbench/utils.py:106``): 1 for the first whole-word yes/A, 0 for no/B, whichever comes first;
    -1 when neither appears. The article "a" counts as option A, as in the official code.
    """
    if question_type == "yes_no":
        pos, neg = r"\byes\b", r"\bno\b"
    else:
        pos, neg = r"\bA\b", r"\bB\b"
    a = re.search(pos, response, re.IGNORECASE)
    b = re.search(neg, response, re.IGNORECASE)
    if a is None and b is None:
        return -1
    if a is None:
        return 0
    if b is None:
        return 1
    return 1 if a.start() < b.start() else 0


def parse_scienceqa_llava(response: str, n_options: int) -> str | None:
    """ScienceQA's official rule (LLaVA ``llava/eval/eval_science_qa.py``), edge cases included.

    In order: the reply is exactly one of the letters A-E; or it starts with "X. " (X in A-E); or the
    pattern ``The answer is ([A-Z]).`` matches exactly once. The ``.`` there is any character, so
    "The answer is B" at the very end fails, "The answer is Bob" reads B, and two matches fail.
    A letter beyond the question's choices is wrong (None). The reply is stripped first, as
    LLaVA's ``model_vqa_science.py`` strips what it writes.

    lmms-eval (``scienceqa/utils.py:34-44``) also accepts "a" and "A." and rejects "The answer is A.".
    """
    options = LETTERS[:5]  # the script's --options default, whatever the number of choices
    text = response.strip()
    if text in options and len(text) == 1:
        answer = text
    elif len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        answer = text[0]
    else:
        found = re.findall(r"The answer is ([A-Z]).", text)
        answer = found[0] if len(found) == 1 else ""
    return answer if answer and answer in options[: min(n_options, 5)] else None
