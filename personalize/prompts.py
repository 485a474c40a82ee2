"""DreamBench-style evaluation prompts, phrased in the shapes world's words.

Each template has ``{subject}`` (a noun phrase: the token, or "a square" for the base model) and/or
``{noun}`` (bare: the token, or "square"). Categories follow DreamBench: recontextualization
(backgrounds), property change, companions (accessorization), and the plain subject.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evalkit.errors import UserError
from evalkit.shapes.world import BACKGROUNDS, ObjectSpec

from .config import article


@dataclass(frozen=True)
class SubjectPrompt:
    category: str
    template: str
    background: str | None = None  # what the detector checks, for the embedded subjects
    companion: ObjectSpec | None = None

    def personalized(self, token: str) -> str:
        """The prompt for the personalized model.

        >>> SubjectPrompt("property", "a small {noun}").personalized("<s*>")
        'a small <s*>'
        """
        return self.template.format(subject=token, noun=token)

    def with_class(self, class_word: str) -> str:
        """The same prompt about the class: what the base model gets, and CLIP-T's text for both sides."""
        return self.template.format(subject=article(class_word), noun=class_word)


PLAIN = SubjectPrompt("plain", "a photo of {subject}")
DEFAULT_PROMPTS: tuple[SubjectPrompt, ...] = (
    PLAIN,
    *(SubjectPrompt("recontextualization", f"{{subject}} on {article(bg)} background", background=bg)
      for bg in BACKGROUNDS),
    SubjectPrompt("property", "a small {noun}"),
    SubjectPrompt("property", "a large {noun}"),
    SubjectPrompt("companion", "{subject} next to a red circle", companion=ObjectSpec("circle", "red")),
    SubjectPrompt("companion", "{subject} and a blue triangle", companion=ObjectSpec("triangle", "blue")),
    SubjectPrompt("companion", "{subject} above a green star", companion=ObjectSpec("star", "green")),
)  # fmt: skip


def read_prompts(path: str | Path) -> list[SubjectPrompt]:
    """One template per line (``{subject}``/``{noun}``, or ``{token}`` meaning ``{subject}``); ``#`` comments.
    A line ``category<TAB>template`` sets the category."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"prompt file not found: {p}")
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        category, _, template = line.partition("\t") if "\t" in line else ("custom", "", line)
        template = template.replace("{token}", "{subject}")
        if "{subject}" not in template and "{noun}" not in template:
            raise UserError(f"prompt {template!r} in {p} has no {{subject}} (or {{token}}) placeholder")
        prompt = SubjectPrompt(category.strip(), template)
        try:
            prompt.personalized("S")
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(
                f"prompt {template!r} in {p}: only {{subject}}, {{noun}} and {{token}} may stand "
                f"in braces (write {{{{ and }}}} for a literal brace); got {e}"
            ) from None
        out.append(prompt)
    if not out:
        raise UserError(f"no prompts in {p}")
    return out
